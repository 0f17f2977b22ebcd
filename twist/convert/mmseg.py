"""MMSegmentation: ``{"state_dict": ..., "meta": ...}`` for its ``ResNet`` (style pytorch) or ``VisionTransformer``.

mmseg's ``ResNet`` has torchvision's names, so ResNets keep them (its default ``ResNetV1c`` has a
three-convolution stem and would leave the stem random). ViTs are renamed by mmseg's own rules for
timm weights: ``blocks`` → ``layers``, ``norm1/2`` → ``ln1/2``, ``attn.qkv`` →
``attn.attn.in_proj_*``, ``attn.proj`` → ``attn.attn.out_proj``, ``mlp.fc1/fc2`` →
``ffn.layers.0.0/ffn.layers.1``, ``patch_embed.proj`` → ``patch_embed.projection`` and the final
``norm`` → ``ln1``.
"""
from __future__ import annotations

import torch

from twist.convert.conversion import Conversion, ConversionError, apply_first_rule, compare, describe_source
from twist.convert.layouts import expected_shapes
from twist.models.architectures import BACKBONES
from twist.models.pretrained import BackboneWeights

VIT_RULES = (
    (r"^norm\.", "ln1."),
    (r"^patch_embed\.proj\.", "patch_embed.projection."),
    (r"^blocks\.(\d+)\.norm1\.", r"layers.\1.ln1."),
    (r"^blocks\.(\d+)\.norm2\.", r"layers.\1.ln2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", r"layers.\1.attn.attn.in_proj_\2"),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"layers.\1.attn.attn.out_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.ffn.layers.0.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.ffn.layers.1."),
)


def rename_vit_key(key: str) -> str:
    return apply_first_rule(key, VIT_RULES)


def convert(weights: BackboneWeights) -> Conversion:
    arch = weights.architecture
    if arch.family == "vit":
        state = {rename_vit_key(k): v for k, v in weights.state_dict.items()}
        compare(expected_shapes(arch, "mmseg"), state, "mmseg's VisionTransformer names")
        heads = BACKBONES[arch.name].heads
        width = state["cls_token"].shape[-1]
        patch = state["patch_embed.projection.weight"].shape[-1]
        notes = [f"backbone=dict(type='VisionTransformer', img_size={arch.image_size}, patch_size={patch}, "
                 f"embed_dims={width}, num_layers=12, num_heads={heads}, mlp_ratio=4, patch_bias=True, qkv_bias=True, "
                 f"final_norm=True, with_cls_token=True, norm_cfg=dict(type='LN', eps=1e-6), "
                 f"init_cfg=dict(type='Pretrained', checkpoint='<this file>'))"]
        where = "mmseg's VisionTransformer names and shapes"
    else:
        if arch.small_input:
            raise ConversionError(f"'{weights.path}': {arch.name} with the small-input 3x3 stem has no mmseg "
                                  f"ResNet counterpart (its stem is a 7x7 convolution)")
        state = dict(weights.state_dict)
        compare(expected_shapes(arch, "mmseg"), state, "mmseg's ResNet (style pytorch) names")
        spec = BACKBONES[arch.name]
        extra = f", stem_channels={spec.stem_width}, base_channels={spec.stem_width}" if spec.widen > 1 else ""
        notes = [f"backbone=dict(type='ResNet', depth={spec.depth}, style='pytorch'{extra}, "
                 f"init_cfg=dict(type='Pretrained', checkpoint='<this file>'))  # not ResNetV1c"]
        where = "mmseg's ResNet (style pytorch) names and shapes"
    meta = describe_source(weights)
    return Conversion("mmseg", state, where, lambda f: torch.save({"state_dict": state, "meta": meta}, f),
                      (".pth",), notes)
