"""TWIST: a class head ending in NBS, the twin-class-distribution loss, and the self-labeling stage.

From ``self_label.start_epoch`` on (when enabled), confident pseudo-labels of one global view
supervise the other views, with harder crops; the learning-rate restart of that stage is part of
the run's schedules (``twist.engine.optim.build_schedules``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from twist.config_error import ConfigError
from twist.distributed import all_reduce_mean
from twist.losses import SelfLabelLoss, TwistLoss
from twist.methods.base import Method, ViewStage
from twist.models.heads import TwistHead
from twist.sections import read_section


@dataclass(frozen=True)
class TwistHeadConfig:
    """``model.head``: Linear → norm → act → dropout → Linear → norm → act → Linear(C) → NBS."""

    hidden_dim: int = 4096
    num_classes: int = 4096
    norm: str = "bn"
    activation: str = "relu"
    dropout: float = 0.0
    # Non-affine batch norm on the logits before the softmax ("NBS").
    nbs: bool = True
    # Images over which the NBS statistics are taken, summed over consecutive ranks (the
    # reference's bunch_size); 0 means all ranks.
    nbs_bunch_size: int = 0
    # "auto" is trunc-normal(0.02) for ViT backbones and PyTorch's default otherwise.
    init: str = "auto"


@dataclass(frozen=True)
class TwistLossConfig:
    """``loss``: symmetric KL + (1 + lam1) x mean entropy - lam2 x entropy of the mean, at temperature tau."""

    lam1: float = 0.0
    lam2: float = 1.0
    tau: float = 1.0
    eps: float = 1.0e-5


@dataclass(frozen=True)
class SelfLabelConfig:
    """``self_label``: from start_epoch on, confident pseudo-labels of one global view supervise the
    other views, with harder crops and a learning-rate restart."""

    enabled: bool = False
    start_epoch: int = 800
    global_scale: tuple[float, float] = (0.14, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.14)
    quantile: float = 0.5
    quantile_end: float = 0.6
    lr: float = 0.05
    warmup_epochs: int = 5


class Twist(Method):
    name = "twist"
    sections = {"model.head": TwistHeadConfig, "loss": TwistLossConfig, "self_label": SelfLabelConfig}
    ranges = {
        "model.head.hidden_dim": (1, None),
        "model.head.num_classes": (2, None),
        "model.head.dropout": (0.0, 1.0),
        "model.head.nbs_bunch_size": (0, None),
        "loss.tau": (1e-6, None),
        "loss.eps": (0.0, 1.0),
        "self_label.start_epoch": (0, None),
        "self_label.quantile": (0.0, 1.0),
        "self_label.quantile_end": (0.0, 1.0),
        "self_label.lr": (0.0, None),
        "self_label.warmup_epochs": (0, None),
    }
    choices = {
        "model.head.norm": ("bn", "ln", "none"),
        "model.head.activation": ("relu", "gelu"),
        "model.head.init": ("auto", "default", "trunc_normal"),
    }
    list_shapes = {"self_label.global_scale": (2, 0.0, 1.0), "self_label.local_scale": (2, 0.0, 1.0)}
    gives_classes = True

    def __init__(self, head: TwistHeadConfig, loss: TwistLossConfig, self_label: SelfLabelConfig):
        self.head, self.self_label = head, self_label
        self.twist_loss = TwistLoss(**vars(loss), batch_mean=all_reduce_mean)
        self.self_label_loss = SelfLabelLoss(loss.tau)
        self.self_label_from: int | None = None  # the first step of the self-labeling stage
        self.quantile: np.ndarray | None = None

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Twist:
        return cls(read_section(TwistHeadConfig, cfg["model"]["head"]), read_section(TwistLossConfig, cfg["loss"]),
                   read_section(SelfLabelConfig, cfg["self_label"]))

    @classmethod
    def check_config(cls, cfg: dict[str, Any], source: str) -> None:
        sl = cfg["self_label"]
        for key in ("global_scale", "local_scale"):
            low, high = sl[key]
            if low > high:
                raise ConfigError(f"{source}: 'self_label.{key}' must be [low, high] with low <= high, "
                                  f"got {[low, high]}")
        if sl["enabled"] and sl["start_epoch"] >= cfg["train"]["epochs"]:
            raise ConfigError(f"{source}: 'self_label.start_epoch' ({sl['start_epoch']}) must be below train.epochs "
                              f"({cfg['train']['epochs']}) when self-labeling is enabled")
        if sl["enabled"] and sl["quantile"] <= 0:
            raise ConfigError(f"{source}: 'self_label.quantile' is the fraction of the batch that keeps its "
                              f"pseudo-label and must be above 0, got {sl['quantile']}")

    def view_stages(self, crop_scale: tuple[float, float], local_scale: tuple[float, float]) -> list[ViewStage]:
        stages = super().view_stages(crop_scale, local_scale)
        sl = self.self_label
        if sl.enabled:
            stages.append(ViewStage(sl.start_epoch, sl.global_scale, sl.local_scale))
        return stages

    def build_head(self, feature_dim: int, backbone_family: str) -> nn.Module:
        h = self.head
        trunc_normal = h.init == "trunc_normal" or (h.init == "auto" and backbone_family == "vit")
        return TwistHead(feature_dim, h.hidden_dim, h.num_classes, norm=h.norm, activation=h.activation,
                         dropout=h.dropout, nbs=h.nbs, trunc_normal_init=trunc_normal)

    def head_norm_ranks(self, batch_size: int, world_size: int) -> int | None:
        bunch = self.head.nbs_bunch_size
        if bunch == 0:
            return world_size
        if bunch % batch_size or world_size % (bunch // batch_size):
            raise ConfigError(f"model.head.nbs_bunch_size={bunch} must be a multiple of train.batch_size="
                              f"{batch_size}, and the world size ({world_size}) a multiple of bunch/batch "
                              f"({bunch / batch_size:g}) ranks")
        return bunch // batch_size

    def prepare(self, steps_per_epoch: int, schedules: dict[str, np.ndarray]) -> None:
        total = len(schedules["quantile"])
        self.self_label_from = self.self_label.start_epoch * steps_per_epoch if self.self_label.enabled else total
        self.quantile = schedules["quantile"]

    def loss(self, outputs: list[torch.Tensor], step: int, indices: torch.Tensor,
             teacher_outputs: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        if self.self_label_from is not None and step >= self.self_label_from:
            return self.self_label_loss(outputs, float(self.quantile[step]), teacher_outputs)
        return self.twist_loss(outputs, teacher_outputs)

    def stage(self, step: int) -> str:
        # The log names the stage of the step just taken, counted from 1.
        in_stage = self.self_label_from is not None and step > self.self_label_from
        return "self_label" if in_stage else self.name
