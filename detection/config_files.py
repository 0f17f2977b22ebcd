"""Detectron2 YAML configs read without detectron2: ``_BASE_`` chains resolved, values typed as YACS does.

Used to check the shipped configs and a user's config before a run starts, and in tests where
detectron2 is absent.
"""
from __future__ import annotations

import ast
import os
from typing import Any

import yaml

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


class ConfigFileError(ValueError):
    """A detectron2 config file that is missing, not YAML, or chains to a missing base."""


def _typed(value: Any) -> Any:
    """YACS reads strings such as ``(18000, 22000)`` as Python literals; so does this."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config_file(path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config at ``path`` merged over its ``_BASE_`` chain (bases resolved relative to the file)."""
    path = os.path.abspath(path)
    if path in _seen:
        raise ConfigFileError(f"'{path}' chains to itself through _BASE_")
    if not os.path.isfile(path):
        raise ConfigFileError(f"detectron2 config '{path}' does not exist" +
                              (f" (a _BASE_ of '{_seen[-1]}')" if _seen else ""))
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ConfigFileError(f"'{path}' is not valid YAML: {err}") from None
    base = data.pop("_BASE_", None)
    data = _typed(data)
    if base is None:
        return data
    return _merge(load_config_file(os.path.join(os.path.dirname(path), base), (*_seen, path)), data)


def lookup(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node
