"""The one list of a run's training views, which both augmentation pipelines build from.

Views come in the order [global 1, global 2, (more globals), local 1..L]. The two global pipelines
differ in blur and solarisation (``augment.blur``/``augment.solarize`` give each its probability);
a method that compares more than two globals (W-MSE's ``num_samples``) alternates them. Each stage
of the run (``Method.view_stages``: the self-labeling stage takes harder crops) has its own list.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twist.methods import build_method


@dataclass(frozen=True)
class ViewSpec:
    size: int
    scale: tuple[float, float]
    blur: float
    solarize: float


def view_stages(cfg: dict[str, Any]) -> list[tuple[int, list[ViewSpec]]]:
    """(start epoch, the views from then on) for each stage of the run, the first from epoch 0."""
    aug, size = cfg["augment"], cfg["data"]["image_size"]
    method = build_method(cfg)
    stages = []
    for stage in method.view_stages(tuple(aug["crop_scale"]), tuple(aug["local_scale"])):
        pair = [ViewSpec(size, stage.global_scale, aug["blur"][v], aug["solarize"][v]) for v in (0, 1)]
        globals_ = [pair[v % 2] for v in range(method.global_views())]
        local = ViewSpec(aug["local_size"], stage.local_scale, aug["local_blur"], 0.0)
        stages.append((stage.start_epoch, globals_ + [local] * aug["local_crops"]))
    return stages


def train_views(cfg: dict[str, Any], stage: int = 0) -> list[ViewSpec]:
    """The views of the run's stage ``stage`` (0: from the start; 1: the self-labeling stage, if any)."""
    return view_stages(cfg)[stage][1]
