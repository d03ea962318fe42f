"""Training a small WALL-OSS-architecture model (``wall-runtime train``) and its data format."""
