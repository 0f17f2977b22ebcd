"""Backbone + head applied to every augmented view of a batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from twist.models.backbones import Backbone, build_backbone

if TYPE_CHECKING:
    from twist.methods import Method


@dataclass(frozen=True)
class BackboneConfig:
    """``model`` of a pretraining config but its head (the method's section), and ``data.image_size``,
    which a ViT's position embeddings are made for."""

    backbone: str
    small_input: bool
    drop_path_rate: float
    zero_init_residual: bool
    image_size: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> BackboneConfig:
        model = cfg["model"]
        return cls(model["backbone"], model["small_input"], model["drop_path_rate"], model["zero_init_residual"],
                   cfg["data"]["image_size"])


class TwinModel(nn.Module):
    """Runs the backbone once per group of consecutive same-resolution views, the head once on all.

    Running the head on all views together means the NBS statistics cover every view of the batch,
    as in the paper; grouping by resolution lets multi-crop batches of 224 and 96 px crops share a
    single backbone call per size.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, per_view: bool = False):
        super().__init__()
        self.backbone = backbone.module
        self.family = backbone.family
        self.head = head
        # With per_view (Barlow Twins) the backbone runs on each view on its own and the projector gets the
        # list of views, so that every batch norm sees one view's batch; otherwise both run on all views at once.
        self.per_view = per_view

    def features(self, views: list[torch.Tensor]) -> torch.Tensor:
        groups: list[list[torch.Tensor]] = []
        for view in views:
            if groups and groups[-1][0].shape[-2:] == view.shape[-2:]:
                groups[-1].append(view)
            else:
                groups.append([view])
        return torch.cat([self.backbone(torch.cat(group)) for group in groups])

    def forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.per_view:
            return self.head([self.backbone(view) for view in views])
        logits = self.head(self.features(views))
        return list(logits.chunk(len(views)))


def build_model(backbone: BackboneConfig, method: Method) -> TwinModel:
    """The backbone of ``backbone`` and the head of ``method``."""
    built = build_backbone(backbone.backbone, backbone.small_input, backbone.drop_path_rate, backbone.image_size,
                           backbone.zero_init_residual)
    return TwinModel(built, method.build_head(built.feature_dim, built.family), per_view=method.views_apart)
