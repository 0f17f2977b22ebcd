"""torchvision: a plain state dict for ``torchvision.models.resnet*`` (minus ``fc``) or ``VisionTransformer``.

ResNets already have torchvision's names. ViTs are renamed from timm's: ``cls_token`` →
``class_token``, ``pos_embed`` → ``encoder.pos_embedding``, ``patch_embed.proj`` → ``conv_proj``,
``blocks.i`` → ``encoder.layers.encoder_layer_i`` with ``norm1/2`` → ``ln_1/2``, ``attn.qkv`` →
``self_attention.in_proj_*``, ``attn.proj`` → ``self_attention.out_proj``, ``mlp.fc1/fc2`` →
``mlp.0/mlp.3``, and the final ``norm`` → ``encoder.ln``. Both compute the same function (tested).
"""
from __future__ import annotations

import torch
import torchvision

from twist.convert.conversion import Conversion, apply_first_rule, compare, library_variant, shapes_of
from twist.models.architectures import BACKBONES
from twist.models.pretrained import BackboneWeights

VIT_RULES = (
    (r"^cls_token$", "class_token"),
    (r"^pos_embed$", "encoder.pos_embedding"),
    (r"^patch_embed\.proj\.", "conv_proj."),
    (r"^norm\.", "encoder.ln."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.encoder_layer_\1.ln_1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.encoder_layer_\1.ln_2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", r"encoder.layers.encoder_layer_\1.self_attention.in_proj_\2"),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.encoder_layer_\1.self_attention.out_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"encoder.layers.encoder_layer_\1.mlp.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"encoder.layers.encoder_layer_\1.mlp.3."),
)


def rename_vit_key(key: str) -> str:
    return apply_first_rule(key, VIT_RULES)


def torchvision_vit(name: str, image_size: int, patch: int) -> torch.nn.Module:
    spec = BACKBONES[name]
    return torchvision.models.VisionTransformer(image_size=image_size, patch_size=patch, num_layers=spec.depth,
                                                num_heads=spec.heads, hidden_dim=spec.width, mlp_dim=4 * spec.width)


def _save(state):
    return lambda f: torch.save(state, f)


def convert(weights: BackboneWeights) -> Conversion:
    arch = weights.architecture
    if arch.family == "vit":
        state = {rename_vit_key(k): v for k, v in weights.state_dict.items()}
        patch = state["conv_proj.weight"].shape[-1]
        with torch.device("meta"):
            reference = torchvision_vit(arch.name, arch.image_size, patch)
        what = f"torchvision.models.VisionTransformer (patch {patch}, {arch.image_size} px) without heads"
        compare(shapes_of(reference, lambda k: k.startswith("heads.")), state, what)
        width = state["class_token"].shape[-1]
        heads = BACKBONES[arch.name].heads
        build = ("torchvision.models.vit_b_16()" if arch.name == "vit_base" and patch == 16 and arch.image_size == 224
                 else f"torchvision.models.VisionTransformer(image_size={arch.image_size}, patch_size={patch}, "
                      f"num_layers=12, num_heads={heads}, hidden_dim={width}, mlp_dim={4 * width})")
        notes = [f"model = {build}; model.heads = torch.nn.Identity(); model.load_state_dict(sd, strict=True)"]
        return Conversion("torchvision", state, what, _save(state), (".pth", ".pt"), notes)

    state = dict(weights.state_dict)
    if arch.name in ("resnet18", "resnet34", "resnet50") and not arch.small_input:
        with torch.device("meta"):
            reference = getattr(torchvision.models, arch.name)()
        what = f"torchvision.models.{arch.name}() without fc"
        compare(shapes_of(reference, lambda k: k.startswith("fc.")), state, what)
        notes = [f"model = torchvision.models.{arch.name}(); model.fc = torch.nn.Identity(); "
                 f"model.load_state_dict(sd, strict=True)"]
    else:
        library_variant(arch, state, "torchvision")
        what = f"torchvision names of {arch.name} (built from torchvision's blocks)"
        if arch.small_input:
            notes = [f"model = torchvision.models.{arch.name}(); model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, "
                     f"bias=False); model.maxpool = torch.nn.Identity(); model.fc = torch.nn.Identity(); "
                     f"model.load_state_dict(sd, strict=True)"]
        else:
            notes = [f"torchvision has no SwAV-style {arch.name} (every width doubled, the stem's too; not "
                     f"wide_resnet50_2): build it with twist.models.backbones.build_backbone('{arch.name}').module, "
                     f"torchvision Bottleneck blocks under torchvision's names, then load_state_dict(sd, strict=True)"]
    return Conversion("torchvision", state, what, _save(state), (".pth", ".pt"), notes)
