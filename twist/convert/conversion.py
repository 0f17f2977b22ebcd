"""What every target's converter returns, and the checks every output passes before it is written."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from twist.engine.checkpoint import CheckpointError
from twist.models.pretrained import BackboneWeights


class ConversionError(CheckpointError):
    """A checkpoint that cannot be converted to the asked-for target, or an output that failed validation."""


@dataclass
class Conversion:
    target: str
    state_dict: dict[str, torch.Tensor]      # the converted tensors, under the target's names
    validated_against: str                   # what the names and shapes were checked against
    serialize: Callable[[Any], None]         # writes the target's file format to an open binary file
    suffixes: tuple[str, ...]                # accepted output file endings
    notes: list[str] = field(default_factory=list)  # what the user must set in the target's config


def compare(expected: dict[str, tuple[int, ...]], actual: dict[str, torch.Tensor], what: str) -> None:
    """Raise naming every missing, unexpected and misshapen tensor of ``actual`` against ``expected``."""
    missing = sorted(k for k in expected if k not in actual)
    unexpected = sorted(k for k in actual if k not in expected)
    misshapen = sorted(f"{k}: {tuple(actual[k].shape)}, expected {tuple(expected[k])}"
                       for k in expected if k in actual and tuple(actual[k].shape) != tuple(expected[k]))
    if missing or unexpected or misshapen:
        parts = [f"{name} ({len(keys)}): {keys[:8]}{' ...' if len(keys) > 8 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
                 if keys]
        raise ConversionError(f"the converted weights do not match {what}: " + "; ".join(parts))


def apply_first_rule(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    """``key`` rewritten by the first ``(pattern, replacement)`` regex rule that matches it, else as it is."""
    for pattern, replacement in rules:
        new = re.sub(pattern, replacement, key)
        if new != key:
            return new
    return key


def library_variant(arch, state: dict[str, torch.Tensor], scheme: str) -> None:
    """Check an architecture the target library has no constructor for (SwAV widening, small-input
    stems) against the layout table and against this project's module, built from the library's blocks."""
    from twist.convert.layouts import expected_shapes
    from twist.models.backbones import build_backbone

    with torch.device("meta"):
        reference = build_backbone(arch.name, arch.small_input).module
    compare(expected_shapes(arch, scheme), state, f"{scheme} names of {arch.name}")
    compare(shapes_of(reference), state, f"twist's {arch.name}")


def shapes_of(module: torch.nn.Module, drop: Callable[[str], bool] = lambda key: False) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if not drop(k)}


def check_output_path(output: str, source: str, suffixes: tuple[str, ...], target: str) -> None:
    if not output.endswith(suffixes):
        raise ConversionError(f"output '{output}': a {target} file must end in {' or '.join(suffixes)}")
    if os.path.abspath(output) == os.path.abspath(source) or (
            os.path.exists(output) and os.path.samefile(output, source)):
        raise ConversionError(f"output '{output}' is the input file; choose another path (the input is never "
                              f"overwritten)")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise ConversionError(f"output '{output}': the folder '{parent}' does not exist")


def describe_source(weights: BackboneWeights) -> dict[str, Any]:
    """Plain-data provenance stored in outputs that have room for it (strings and numbers only)."""
    return {"source": os.path.abspath(weights.path), "entry": weights.where,
            "architecture": weights.architecture.name, "small_input": weights.architecture.small_input,
            "converted_by": "twist-convert"}
