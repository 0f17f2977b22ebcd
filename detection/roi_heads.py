"""The C4 ROI head of MoCo's detection benchmark, registered in detectron2's ``ROI_HEADS_REGISTRY``.

Importing this module registers ``Res5ROIHeadsExtraNorm`` (``MODEL.ROI_HEADS.NAME`` of the shipped
``*_C4_*`` configs); ``train_net.py`` imports it.
"""
from __future__ import annotations

from detectron2.layers import get_norm
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from torch import nn


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """detectron2's C4 head with one more norm (``MODEL.RESNETS.NORM``) on the res5 output.

    A converted ResNet has no tensors for it (``roi_heads.res5.norm.*`` start at weight 1, bias 0), and
    the box and mask predictors then see batch-normalised region features, as in MoCo's fine-tuning."""

    @classmethod
    def _build_res5_block(cls, cfg) -> tuple[nn.Sequential, int]:
        res5, out_channels = super()._build_res5_block(cfg)
        norm = get_norm(cfg.MODEL.RESNETS.NORM, out_channels)
        if norm is not None:  # MODEL.RESNETS.NORM "" is no norm at all
            res5.add_module("norm", norm)
        return res5, out_channels
