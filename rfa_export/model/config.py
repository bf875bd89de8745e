"""RFAConfig lives in rfa_export.format.config (plain Python, read by export and runtime alike)."""

from ..format.config import LIMITS, POSITIONAL_SCHEMES, ConfigError, RFAConfig

__all__ = ["LIMITS", "POSITIONAL_SCHEMES", "ConfigError", "RFAConfig"]
