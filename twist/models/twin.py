"""Backbone + head applied to every augmented view of a batch."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from twist.models.backbones import Backbone, build_backbone
from twist.models.heads import BarlowTwinsProjector, TwistHead, WMSEHead


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
        # Barlow Twins runs the backbone on each view on its own and gives the projector the list of
        # views, so that every batch norm sees one view's batch; TWIST and W-MSE run both on all views at once.
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
    """Backbone and the head of ``cfg['method']``: TWIST's class head, Barlow Twins' projector or W-MSE's head."""
    model_cfg, head_cfg = cfg["model"], cfg["model"]["head"]
    backbone = build_backbone(model_cfg["backbone"], model_cfg["small_input"], model_cfg["drop_path_rate"],
                              cfg["data"]["image_size"], model_cfg["zero_init_residual"])
    method = cfg["method"]
    if method == "barlow_twins":
        bt = cfg["barlow_twins"]
        return TwinModel(backbone, BarlowTwinsProjector(backbone.feature_dim, bt["hidden_dim"], bt["out_dim"]),
                         per_view=True)
    if method == "wmse":
        wm = cfg["wmse"]
        return TwinModel(backbone, WMSEHead(backbone.feature_dim, wm["hidden_dim"], wm["out_dim"]))
    init = head_cfg["init"]
    trunc_normal = init == "trunc_normal" or (init == "auto" and backbone.family == "vit")
    head = TwistHead(backbone.feature_dim, head_cfg["hidden_dim"], head_cfg["num_classes"],
                     norm=head_cfg["norm"], activation=head_cfg["activation"], dropout=head_cfg["dropout"],
                     nbs=head_cfg["nbs"], trunc_normal_init=trunc_normal)
    return TwinModel(backbone, head)
