"""The configs that ship with the package, reachable from an installed twist as from a source checkout.

A source checkout (or an editable install) has them in ``configs/`` beside ``twist/``; a wheel installs
that folder as ``twist/configs`` (pyproject.toml). ``twist-train --config demo/digits.yaml`` (or
``configs/demo/digits.yaml``) finds the shipped file from any working directory when no such file is
there.
"""
from __future__ import annotations

import os
import sys

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_PLACES = (os.path.join(_PACKAGE, "configs"), os.path.join(os.path.dirname(_PACKAGE), "configs"))


def shipped_config_dir() -> str | None:
    """The folder holding the shipped configs (``demo/``, ``pretrain/``, ``eval/``, ``transfer/``), if any."""
    for place in _PLACES:
        if os.path.isdir(os.path.join(place, "demo")):
            return place
    return None


def resolve_config_path(path: str) -> str:
    """``path`` when it names a file or folder; else the shipped config it names, with or without the
    leading ``configs/``; else ``path`` unchanged (its reader then says it does not exist)."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    root = shipped_config_dir()
    if root is None:
        return path
    parts = [part for part in path.replace(os.sep, "/").split("/") if part not in ("", ".")]
    if ".." in parts:  # a shipped name never climbs: 'x/../y' is the user's path, not ours
        return path
    parts = parts[1:] if parts[:1] == ["configs"] else parts
    shipped = os.path.join(root, *parts)
    if not os.path.isfile(shipped):
        return path
    print(f"twist: '{path}' is not here; using the shipped config {shipped}", file=sys.stderr)
    return shipped


def shipped_config_names() -> list[str]:
    """Every shipped YAML config, relative to the shipped folder (e.g. 'demo/digits.yaml')."""
    root = shipped_config_dir()
    if root is None:
        return []
    names = []
    for folder, _, files in os.walk(root):
        names += [os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/") for f in files
                  if f.endswith((".yaml", ".yml"))]
    return sorted(names)
