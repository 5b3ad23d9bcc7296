"""Torch-free runtime: numpy + pillow + cma over engines from beautyrt.engines."""
