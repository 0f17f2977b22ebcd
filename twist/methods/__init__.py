"""The registry of self-supervised methods: adding one is one module here and one line below."""
from __future__ import annotations

from typing import Any

from twist.methods.barlow_twins import BarlowTwins
from twist.methods.base import Method, ViewStage
from twist.methods.twist import Twist
from twist.methods.wmse import WMSE

METHODS: dict[str, type[Method]] = {method.name: method for method in (Twist, BarlowTwins, WMSE)}


def method_class(cfg: dict[str, Any]) -> type[Method]:
    """The class of the method a checked config names."""
    return METHODS[cfg["method"]]


def build_method(cfg: dict[str, Any]) -> Method:
    """The method a checked config names, built from its own sections."""
    return method_class(cfg).from_config(cfg)


__all__ = ["METHODS", "Method", "ViewStage", "build_method", "method_class"]
