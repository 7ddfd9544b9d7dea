"""Looking inside models: complexity counts and effective receptive fields."""

from .erf import ERFResult, area_ratio, erf

__all__ = ["ERFResult", "area_ratio", "erf"]
