"""Control methods: the registry, the built-ins, and YAML config resolution."""

from . import baselines, circuit, steering  # noqa: F401  (registers the built-in methods)
from .base import METHODS, ControlMethod, Param
from .config import MethodConfig, available_configs, resolve_method

__all__ = ["METHODS", "ControlMethod", "MethodConfig", "Param", "available_configs", "resolve_method"]
