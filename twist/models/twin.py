"""Backbone + head applied to every augmented view of a batch."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from twist.models.backbones import Backbone, build_backbone


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


def build_model(cfg: dict[str, Any]) -> TwinModel:
    """The backbone of ``cfg['model']`` and the head of the config's method (``twist.methods``)."""
    # Imported here: the methods build their heads from twist.models.heads, inside this package.
    from twist.methods import build_method

    model_cfg = cfg["model"]
    backbone = build_backbone(model_cfg["backbone"], model_cfg["small_input"], model_cfg["drop_path_rate"],
                              cfg["data"]["image_size"], model_cfg["zero_init_residual"])
    method = build_method(cfg)
    return TwinModel(backbone, method.build_head(backbone.feature_dim, backbone.family), per_view=method.views_apart)
