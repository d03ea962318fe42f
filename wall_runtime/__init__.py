"""wall-runtime: a real-robot deployment runtime for WALL-OSS vision-language-action models."""

__version__ = "0.1.0"
