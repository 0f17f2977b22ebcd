"""Typed config sections: a frozen dataclass per owner of a section, built once from the checked config.

The schema (``twist.config``) checks every key's type and range; a section then hands each part of
the run only the keys it reads, with lists as tuples so that the section stays immutable.
"""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

Section = TypeVar("Section")


def section_defaults(section: type) -> dict[str, Any]:
    """A config section's keys and defaults, in declaration order, as the YAML schema holds them."""
    return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
            for f in dataclasses.fields(section)}


def read_section(section: type[Section], values: dict[str, Any]) -> Section:
    """The typed section from a checked config's dict (lists become the tuples the dataclass holds); a key
    the dataclass lacks, or one of its fields the dict lacks, is a TypeError."""
    return section(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
