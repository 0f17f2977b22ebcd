"""What the trainer asks of a self-supervised objective, without knowing which one runs.

A method owns its config sections (a dataclass each: the keys, their types and defaults), the head
that follows the backbone, how many global views it compares, its loss call and the checks that
only it knows. ``twist.methods`` registers the methods by name.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from twist.config_error import ConfigError


@dataclass(frozen=True)
class ViewStage:
    """From ``start_epoch`` on, the global views are cropped at ``global_scale``, the local ones at
    ``local_scale`` (the self-labeling stage takes harder crops than the stage before it)."""

    start_epoch: int
    global_scale: tuple[float, float]
    local_scale: tuple[float, float]


class Method(ABC):
    """One objective: its head, its views, its loss and its checks."""

    name: ClassVar[str]
    #: The config sections it owns: dotted path → the dataclass declaring that section's keys.
    sections: ClassVar[dict[str, type]] = {}
    #: Bounds, choices and list shapes of those keys (full dotted paths), in the schema's formats.
    ranges: ClassVar[dict[str, tuple[float | None, float | None]]] = {}
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    list_shapes: ClassVar[dict[str, tuple[int, float, float]]] = {}
    #: Its head gives a distribution over classes per view: the end-of-run clustering evaluation, the
    #: EMA teacher, multi-crop and a batch of any size (data.skip_corrupt) apply only then.
    gives_classes: ClassVar[bool] = False
    #: The backbone runs on each view apart, so that every batch norm sees one view's batch.
    views_apart: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: dict[str, Any]) -> Method:
        """The method built from its own sections of a checked config (and the run's seed)."""

    @classmethod
    def check_config(cls, cfg: dict[str, Any], source: str) -> None:
        """Refuse what this method cannot run; ``source`` names the file or overrides in the message."""
        if cls.gives_classes:
            return
        class_only = [key for key, on in (("self_label.enabled", cfg["self_label"]["enabled"]),
                                          ("teacher.enabled", cfg["teacher"]["enabled"]),
                                          ("eval.enabled", cfg["eval"]["enabled"]),
                                          ("augment.local_crops", cfg["augment"]["local_crops"] > 0)) if on]
        if class_only:
            raise ConfigError(f"{source}: {', '.join(class_only)} belong to TWIST (its class head and pairings); "
                              f"method is '{cls.name}'. Evaluate with twist-eval knn or linear instead")
        if cfg["data"]["skip_corrupt"]:
            raise ConfigError(f"{source}: 'data.skip_corrupt' drops unreadable images from a batch; the "
                              f"{cls.name} loss needs the same batch size on every process{cls._batch_rule()}: "
                              f"fix or remove the unreadable files instead")

    @classmethod
    def _batch_rule(cls) -> str:
        return ""

    def global_views(self) -> int:
        """How many global views of each image the loss compares."""
        return 2

    def view_stages(self, crop_scale: tuple[float, float], local_scale: tuple[float, float]) -> list[ViewStage]:
        """The crop scales of each stage of the run, the first from epoch 0 (``augment``'s scales)."""
        return [ViewStage(0, crop_scale, local_scale)]

    @abstractmethod
    def build_head(self, feature_dim: int, backbone_family: str) -> nn.Module:
        """The module after the backbone: a class head, or a projector."""

    def check_batch(self, batch_size: int, world_size: int) -> None:
        """Refuse a per-process batch and a number of processes that the loss cannot split."""

    def head_norm_ranks(self, batch_size: int, world_size: int) -> int | None:
        """How many consecutive ranks share the statistics of the head's last batch norm, when it has
        one of its own (TWIST's NBS); ``None`` when the head's batch norms are only those of its MLP."""
        return None

    def prepare(self, steps_per_epoch: int, schedules: dict[str, np.ndarray]) -> None:
        """Called once the run's length and its precomputed schedules are known."""

    @abstractmethod
    def loss(self, outputs: list[torch.Tensor], step: int, indices: torch.Tensor,
             teacher_outputs: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The terms of the objective at ``step`` (``loss`` is the one to minimise); exact across ranks."""

    def stage(self, step: int) -> str:
        """The name of the objective that ``step`` trains with, for the log."""
        return self.name
