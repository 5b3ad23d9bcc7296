"""beautyrt's own PyTorch network definitions (export stage only)."""
