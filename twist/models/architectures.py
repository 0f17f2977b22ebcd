"""The one table of the backbones this project builds, recognises, converts and accepts in configs.

Plain facts about each architecture (its family, stage layout and widths), with no torch import, so
that the config schemas can read the names cheaply. The model builder (``twist.models.backbones``),
the recognition of a checkpoint's backbone (``twist.models.pretrained``), the expected tensors of a
converted file (``twist.convert.layouts``) and the converters all consult it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    name: str                                    # the model.backbone choice
    family: str                                  # "resnet" or "vit"
    depth: int                                   # ResNet: 18/34/50 (the detectron2/mmseg depth); ViT: blocks
    blocks: tuple[int, ...] = ()                 # ResNet: residual blocks per stage
    bottleneck: bool = False                     # ResNet: bottleneck (1x1-3x3-1x1) blocks, else basic
    widen: int = 1                               # ResNet-50 wN: every width, the stem's included, times N
    width: int = 0                               # ViT: the embedding width
    heads: int = 0                               # ViT: attention heads
    timm_name: str = ""                          # ViT: the timm model it is built as

    @property
    def stem_width(self) -> int:
        return 64 * self.widen


BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in (
    BackboneSpec("resnet18", "resnet", 18, (2, 2, 2, 2)),
    BackboneSpec("resnet34", "resnet", 34, (3, 4, 6, 3)),
    BackboneSpec("resnet50", "resnet", 50, (3, 4, 6, 3), bottleneck=True),
    BackboneSpec("resnet50w2", "resnet", 50, (3, 4, 6, 3), bottleneck=True, widen=2),
    BackboneSpec("resnet50w4", "resnet", 50, (3, 4, 6, 3), bottleneck=True, widen=4),
    BackboneSpec("deit_small", "vit", 12, width=384, heads=6, timm_name="vit_small_patch16_224"),
    BackboneSpec("vit_base", "vit", 12, width=768, heads=12, timm_name="vit_base_patch16_224"),
)}


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; expected one of {', '.join(BACKBONES)}")
    return BACKBONES[name]
