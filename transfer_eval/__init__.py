"""transfer-eval: how well does a ViT checkpoint transfer, and at what cost."""

__version__ = "0.1.0"
