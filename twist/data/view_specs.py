"""The augment section and the one list of a run's training views, which both pipelines build from.

Views come in the order [global 1, global 2, (more globals), local 1..L]. The two global pipelines
differ in blur and solarisation (``augment.blur``/``augment.solarize`` give each its probability);
a method that compares more than two globals (W-MSE's ``num_samples``) alternates them. Each stage
of the run (``Method.view_stages``: the self-labeling stage takes harder crops) has its own list.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twist.sections import read_section

if TYPE_CHECKING:
    from twist.methods import Method


@dataclass(frozen=True)
class AugmentConfig:
    """``augment``: the pipeline, the probability or range of each of its operations, the local crops,
    and whether the pixels are made on the training device."""

    pipeline: str
    crop_scale: tuple[float, float]
    hflip: float
    color_jitter: float
    grayscale: float
    blur: tuple[float, float]
    solarize: tuple[float, float]
    rotation: float
    translate: float
    shear: float
    stroke_width: float
    backdrop: float
    local_crops: int
    local_size: int
    local_scale: tuple[float, float]
    local_blur: float
    on_device: bool
    on_device_max_side: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> AugmentConfig:
        return read_section(cls, cfg["augment"])


@dataclass(frozen=True)
class ViewSpec:
    size: int
    scale: tuple[float, float]
    blur: float
    solarize: float


def view_stages(augment: AugmentConfig, image_size: int, method: Method) -> list[tuple[int, list[ViewSpec]]]:
    """(start epoch, the views from then on) for each stage of ``method``'s run, the first from epoch 0;
    the global views are ``image_size`` pixels square."""
    stages = []
    for stage in method.view_stages(augment.crop_scale, augment.local_scale):
        pair = [ViewSpec(image_size, stage.global_scale, augment.blur[v], augment.solarize[v]) for v in (0, 1)]
        globals_ = [pair[v % 2] for v in range(method.global_views())]
        local = ViewSpec(augment.local_size, stage.local_scale, augment.local_blur, 0.0)
        stages.append((stage.start_epoch, globals_ + [local] * augment.local_crops))
    return stages
