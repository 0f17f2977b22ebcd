"""timm: a plain state dict for ``timm.create_model(..., num_classes=0)``.

timm's ViTs and ResNets use the names this project's backbones already have, so the tensors are
kept as they are and checked against the timm model built locally.
"""
from __future__ import annotations

import torch

from twist.convert.conversion import Conversion, compare, library_variant, shapes_of
from twist.models.architectures import BACKBONES
from twist.models.pretrained import BackboneWeights


def convert(weights: BackboneWeights) -> Conversion:
    import timm

    arch = weights.architecture
    state = dict(weights.state_dict)
    if arch.family == "vit":
        patch = state["patch_embed.proj.weight"].shape[-1]
        kwargs = {} if (patch, arch.image_size) == (16, 224) else {"img_size": arch.image_size, "patch_size": patch}
        with torch.device("meta"):
            reference = timm.create_model(BACKBONES[arch.name].timm_name, pretrained=False, num_classes=0, **kwargs)
        args = "".join(f", {k}={v}" for k, v in kwargs.items())
        what = f"timm.create_model('{BACKBONES[arch.name].timm_name}', num_classes=0{args})"
        compare(shapes_of(reference), state, what)
        notes = [f"model = {what}; model.load_state_dict(sd, strict=True)"]
    elif arch.name in ("resnet18", "resnet34", "resnet50") and not arch.small_input:
        with torch.device("meta"):
            reference = timm.create_model(arch.name, pretrained=False, num_classes=0)
        what = f"timm.create_model('{arch.name}', num_classes=0)"
        compare(shapes_of(reference), state, what)
        notes = [f"model = {what}; model.load_state_dict(sd, strict=True)"]
    else:
        library_variant(arch, state, "timm")
        what = f"timm/torchvision names of {arch.name}"
        kind = "small-input stem" if arch.small_input else "SwAV-style widening (the stem's too)"
        notes = [f"timm has no constructor for this {kind}; the names are timm's and torchvision's: build it with "
                 f"twist.models.backbones.build_backbone('{arch.name}', small_input={arch.small_input}).module and "
                 f"load_state_dict(sd, strict=True)"]
    return Conversion("timm", state, what, lambda f: torch.save(state, f), (".pth", ".pt"), notes)
