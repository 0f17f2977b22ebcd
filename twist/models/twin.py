"""Backbone + head applied to every augmented view of a batch."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from twist.models.backbones import Backbone, build_backbone
from twist.models.heads import TwistHead


class TwinModel(nn.Module):
    """Runs the backbone once per group of consecutive same-resolution views, the head once on all.

    Running the head on all views together means the NBS statistics cover every view of the batch,
    as in the paper; grouping by resolution lets multi-crop batches of 224 and 96 px crops share a
    single backbone call per size.
    """

    def __init__(self, backbone: Backbone, head: TwistHead):
        super().__init__()
        self.backbone = backbone.module
        self.family = backbone.family
        self.head = head

    def features(self, views: list[torch.Tensor]) -> torch.Tensor:
        groups: list[list[torch.Tensor]] = []
        for view in views:
            if groups and groups[-1][0].shape[-2:] == view.shape[-2:]:
                groups[-1].append(view)
            else:
                groups.append([view])
        return torch.cat([self.backbone(torch.cat(group)) for group in groups])

    def forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        logits = self.head(self.features(views))
        return list(logits.chunk(len(views)))


def build_model(cfg: dict[str, Any]) -> TwinModel:
    model_cfg, head_cfg = cfg["model"], cfg["model"]["head"]
    backbone = build_backbone(model_cfg["backbone"], model_cfg["small_input"], model_cfg["drop_path_rate"],
                              cfg["data"]["image_size"])
    init = head_cfg["init"]
    trunc_normal = init == "trunc_normal" or (init == "auto" and backbone.family == "vit")
    head = TwistHead(backbone.feature_dim, head_cfg["hidden_dim"], head_cfg["num_classes"],
                     norm=head_cfg["norm"], activation=head_cfg["activation"], dropout=head_cfg["dropout"],
                     nbs=head_cfg["nbs"], trunc_normal_init=trunc_normal)
    return TwinModel(backbone, head)
