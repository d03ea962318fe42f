"""Simulated robots (MuJoCo): the embedded default, with rendered cameras."""
