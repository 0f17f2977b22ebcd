"""Barlow Twins: a bias-free three-layer projector per view, and the cross-correlation loss."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from twist.distributed import all_gather_cat, all_reduce_mean
from twist.losses import BarlowTwinsLoss
from twist.methods.base import Method
from twist.models.heads import BarlowTwinsProjector
from twist.sections import read_section


@dataclass(frozen=True)
class BarlowTwinsConfig:
    """``barlow_twins``: the projector (three bias-free linear layers) and the off-diagonal weight."""

    hidden_dim: int = 8192
    out_dim: int = 8192
    lam: float = 0.0051


class BarlowTwins(Method):
    name = "barlow_twins"
    sections = {"barlow_twins": BarlowTwinsConfig}
    ranges = {"barlow_twins.hidden_dim": (1, None), "barlow_twins.out_dim": (1, None), "barlow_twins.lam": (0.0, None)}
    views_apart = True

    def __init__(self, section: BarlowTwinsConfig):
        self.section = section
        self.criterion = BarlowTwinsLoss(section.lam, batch_mean=all_reduce_mean, gather=all_gather_cat)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> BarlowTwins:
        return cls(read_section(BarlowTwinsConfig, cfg["barlow_twins"]))

    def build_head(self, feature_dim: int, backbone_family: str) -> nn.Module:
        return BarlowTwinsProjector(feature_dim, self.section.hidden_dim, self.section.out_dim)

    def loss(self, outputs: list[torch.Tensor], step: int, indices: torch.Tensor,
             teacher_outputs: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        return self.criterion(outputs)
