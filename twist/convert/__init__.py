"""Weight conversion: a TWIST (or other SSL) checkpoint into detectron2, mmseg, torchvision or timm.

Each target's converter takes the backbone found by :mod:`twist.models.pretrained` and returns the
renamed tensors, already validated against the target's names and shapes; :func:`write` checks the
output path and writes it atomically.
"""
from __future__ import annotations

from typing import Callable

from twist.atomic import atomic_write
from twist.convert.conversion import Conversion, ConversionError, check_output_path
from twist.models.pretrained import BackboneWeights

TARGETS = ("detectron2", "mmseg", "torchvision", "timm")


def converter(target: str) -> Callable[[BackboneWeights], Conversion]:
    if target == "detectron2":
        from twist.convert.detectron2 import convert
    elif target == "mmseg":
        from twist.convert.mmseg import convert
    elif target == "torchvision":
        from twist.convert.torchvision import convert
    elif target == "timm":
        from twist.convert.timm import convert
    else:
        raise ConversionError(f"unknown target '{target}'; expected one of {', '.join(TARGETS)}")
    return convert


def convert(weights: BackboneWeights, target: str) -> Conversion:
    return converter(target)(weights)


def write(conversion: Conversion, output: str, source: str) -> None:
    """Write ``conversion`` to ``output`` atomically; never over ``source``, always with the target's ending."""
    check_output_path(output, source, conversion.suffixes, conversion.target)
    atomic_write(output, conversion.serialize)


__all__ = ["TARGETS", "Conversion", "ConversionError", "convert", "write"]
