"""The tensors a backbone must have, derived from its architecture alone, and their names in each
library's scheme.

These tables are written from the architectures' definitions (stages, blocks, widths), not from the
renaming rules of the converters, so validating a converted file against them catches a renaming
mistake instead of repeating it. Each record is library-neutral; a namer gives its name in one
scheme (torchvision, detectron2, timm, mmseg).
"""
from __future__ import annotations

from dataclasses import dataclass

from twist.models.architectures import BACKBONES
from twist.models.pretrained import Architecture

BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class ResNetTensor:
    stage: int        # 0: the stem; 1..4: the four residual stages
    block: int
    layer: str        # "conv1".."conv3" or "shortcut" (stem: "conv1")
    norm: bool        # the batch norm after ``layer`` (else the conv's weight)
    field: str        # weight, bias, running_mean, running_var, num_batches_tracked
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ViTTensor:
    block: int        # -1: outside the blocks
    part: str         # cls_token, pos_embed, patch, norm1, qkv, proj, norm2, fc1, fc2, norm
    field: str        # weight, bias, or "" for the two token parameters
    shape: tuple[int, ...]


def _norm(stage: int, block: int, layer: str, channels: int) -> list[ResNetTensor]:
    return [ResNetTensor(stage, block, layer, True, f, () if f == "num_batches_tracked" else (channels,))
            for f in BN_FIELDS]


def resnet_tensors(arch: Architecture) -> list[ResNetTensor]:
    spec = BACKBONES[arch.name]
    bottleneck, blocks, widen = spec.bottleneck, spec.blocks, spec.widen
    stem = spec.stem_width
    kernel = 3 if arch.small_input else 7
    out = [ResNetTensor(0, 0, "conv1", False, "weight", (stem, 3, kernel, kernel)), *_norm(0, 0, "conv1", stem)]
    channels = stem
    for stage, count in enumerate(blocks, start=1):
        planes = 64 * widen * 2 ** (stage - 1)
        width_out = planes * 4 if bottleneck else planes
        for block in range(count):
            inputs = channels if block == 0 else width_out
            if bottleneck:
                convs = [("conv1", (planes, inputs, 1, 1)), ("conv2", (planes, planes, 3, 3)),
                         ("conv3", (width_out, planes, 1, 1))]
            else:
                convs = [("conv1", (planes, inputs, 3, 3)), ("conv2", (planes, planes, 3, 3))]
            for layer, shape in convs:
                out += [ResNetTensor(stage, block, layer, False, "weight", shape),
                        *_norm(stage, block, layer, shape[0])]
            if block == 0 and (stage > 1 or inputs != width_out):  # a stride or a change of width
                out += [ResNetTensor(stage, block, "shortcut", False, "weight", (width_out, inputs, 1, 1)),
                        *_norm(stage, block, "shortcut", width_out)]
        channels = width_out
    return out


def vit_tensors(arch: Architecture) -> list[ViTTensor]:
    width, depth = BACKBONES[arch.name].width, BACKBONES[arch.name].depth
    patch = 4 if arch.small_input else 16
    tokens = (arch.image_size // patch) ** 2 + 1
    out = [ViTTensor(-1, "cls_token", "", (1, 1, width)), ViTTensor(-1, "pos_embed", "", (1, tokens, width)),
           ViTTensor(-1, "patch", "weight", (width, 3, patch, patch)), ViTTensor(-1, "patch", "bias", (width,))]
    linear = {"qkv": (3 * width, width), "proj": (width, width), "fc1": (4 * width, width), "fc2": (width, 4 * width)}
    for block in range(depth):
        for part in ("norm1", "qkv", "proj", "norm2", "fc1", "fc2"):
            shape = linear.get(part, (width,))
            out += [ViTTensor(block, part, "weight", shape), ViTTensor(block, part, "bias", (shape[0],))]
    out += [ViTTensor(-1, "norm", "weight", (width,)), ViTTensor(-1, "norm", "bias", (width,))]
    return out


# ---- names ----------------------------------------------------------------------------------------

def torchvision_resnet_name(t: ResNetTensor) -> str:
    """torchvision's (and timm's, and mmseg's ``ResNet``) names."""
    if t.stage == 0:
        return f"bn1.{t.field}" if t.norm else f"conv1.{t.field}"
    block = f"layer{t.stage}.{t.block}"
    if t.layer == "shortcut":
        return f"{block}.downsample.{1 if t.norm else 0}.{t.field}"
    return f"{block}.bn{t.layer[-1]}.{t.field}" if t.norm else f"{block}.{t.layer}.{t.field}"


def detectron2_resnet_name(t: ResNetTensor) -> str:
    block = "stem" if t.stage == 0 else f"res{t.stage + 1}.{t.block}"
    return f"{block}.{t.layer}{'.norm' if t.norm else ''}.{t.field}"


_TIMM_VIT = {"patch": "patch_embed.proj", "norm": "norm"}


def timm_vit_name(t: ViTTensor) -> str:
    if t.block < 0:
        return t.part if not t.field else f"{_TIMM_VIT[t.part]}.{t.field}"
    inner = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}.get(t.part, t.part)
    return f"blocks.{t.block}.{inner}.{t.field}"


def torchvision_vit_name(t: ViTTensor) -> str:
    if t.block < 0:
        return {"cls_token": "class_token", "pos_embed": "encoder.pos_embedding", "patch": f"conv_proj.{t.field}",
                "norm": f"encoder.ln.{t.field}"}[t.part]
    layer = f"encoder.layers.encoder_layer_{t.block}"
    attention = {"weight": "in_proj_weight", "bias": "in_proj_bias"}
    inner = {"norm1": f"ln_1.{t.field}", "qkv": f"self_attention.{attention[t.field]}",
             "proj": f"self_attention.out_proj.{t.field}", "norm2": f"ln_2.{t.field}", "fc1": f"mlp.0.{t.field}",
             "fc2": f"mlp.3.{t.field}"}[t.part]
    return f"{layer}.{inner}"


def mmseg_vit_name(t: ViTTensor) -> str:
    if t.block < 0:
        return {"cls_token": "cls_token", "pos_embed": "pos_embed", "patch": f"patch_embed.projection.{t.field}",
                "norm": f"ln1.{t.field}"}[t.part]
    attention = {"weight": "in_proj_weight", "bias": "in_proj_bias"}
    inner = {"norm1": f"ln1.{t.field}", "qkv": f"attn.attn.{attention[t.field]}",
             "proj": f"attn.attn.out_proj.{t.field}", "norm2": f"ln2.{t.field}",
             "fc1": f"ffn.layers.0.0.{t.field}", "fc2": f"ffn.layers.1.{t.field}"}[t.part]
    return f"layers.{t.block}.{inner}"


def expected_shapes(arch: Architecture, scheme: str) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of ``arch`` in ``scheme`` (torchvision, detectron2, timm, mmseg)."""
    if arch.family == "resnet":
        namer = detectron2_resnet_name if scheme == "detectron2" else torchvision_resnet_name
        return {namer(t): t.shape for t in resnet_tensors(arch)}
    namer = {"torchvision": torchvision_vit_name, "mmseg": mmseg_vit_name}.get(scheme, timm_vit_name)
    return {namer(t): t.shape for t in vit_tensors(arch)}
