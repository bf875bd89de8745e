"""rfa-export: Random Feature Attention models from PyTorch to production inference."""

__version__ = "0.1.0"
