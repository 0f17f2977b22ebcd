"""Detectron2: a ``.pkl`` in the model-zoo layout that its checkpointer reads with name matching.

ResNets are renamed with the rules every SSL codebase uses (spec 1.3), applied in order to the
torchvision names: a key outside ``layerN`` gets ``stem.``; ``layer1..4`` become ``res2..5``;
``bn1/2/3`` become ``conv1/2/3.norm``; ``downsample.0`` becomes ``shortcut`` and ``downsample.1``
``shortcut.norm``. ViTs keep timm's names, which detectron2's ViTDet shares. The file is
``{"model": {name: numpy array}, "__author__": "twist", "matching_heuristics": True}``.
"""
from __future__ import annotations

import pickle
import re

from twist.convert.conversion import Conversion, ConversionError, compare
from twist.convert.layouts import expected_shapes
from twist.models.pretrained import BackboneWeights

TORCHVISION_PIXELS = ("MODEL.PIXEL_MEAN [123.675, 116.280, 103.530]", "MODEL.PIXEL_STD [58.395, 57.120, 57.375]",
                      "INPUT.FORMAT RGB", "MODEL.RESNETS.STRIDE_IN_1X1 False")
WIDE_KEYS = {2: ("MODEL.RESNETS.STEM_OUT_CHANNELS 128", "MODEL.RESNETS.RES2_OUT_CHANNELS 512",
                 "MODEL.RESNETS.WIDTH_PER_GROUP 128"),
             4: ("MODEL.RESNETS.STEM_OUT_CHANNELS 256", "MODEL.RESNETS.RES2_OUT_CHANNELS 1024",
                 "MODEL.RESNETS.WIDTH_PER_GROUP 256")}
DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet50w2": 50, "resnet50w4": 50}


def rename_resnet_key(key: str) -> str:
    if "layer" not in key:
        key = "stem." + key
    key = re.sub(r"layer([1-4])", lambda m: f"res{int(m.group(1)) + 1}", key)
    key = re.sub(r"bn([1-3])", r"conv\1.norm", key)
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def _serialize(state):
    def write(f):
        model = {k: v.detach().cpu().numpy() for k, v in state.items()}
        pickle.dump({"model": model, "__author__": "twist", "matching_heuristics": True}, f)
    return write


def convert(weights: BackboneWeights) -> Conversion:
    arch = weights.architecture
    if arch.family == "vit":
        state = dict(weights.state_dict)
        compare(expected_shapes(arch, "timm"), state, f"the timm/ViTDet names of {arch.name}")
        notes = ["ViTDet (projects/ViTDet, LazyConfig): train.init_checkpoint = '<this file>' (it is read with name "
                 "matching); the cls token is unused and the position embedding is interpolated",
                 f"model.backbone.net: embed_dim={state['cls_token'].shape[-1]}, depth=12, "
                 f"num_heads={ {384: 6, 768: 12}[state['cls_token'].shape[-1]] }"]
        return Conversion("detectron2", state, f"the timm/ViTDet names of {arch.name}", _serialize(state), (".pkl",),
                          notes)
    if arch.small_input:
        raise ConversionError(f"'{weights.path}': {arch.name} with the small-input 3x3 stem has no detectron2 "
                              f"counterpart (detectron2's stem is a 7x7 convolution)")
    state = {rename_resnet_key(k): v for k, v in weights.state_dict.items()}
    compare(expected_shapes(arch, "detectron2"), state, f"detectron2's ResNet-{DEPTHS[arch.name]} names")
    notes = [f"MODEL.RESNETS.DEPTH {DEPTHS[arch.name]}", *TORCHVISION_PIXELS]
    if arch.name in ("resnet18", "resnet34"):
        notes.append("MODEL.RESNETS.RES2_OUT_CHANNELS 64")
    widen = {"resnet50w2": 2, "resnet50w4": 4}.get(arch.name)
    if widen:
        notes += WIDE_KEYS[widen]
    return Conversion("detectron2", state, f"detectron2's ResNet-{DEPTHS[arch.name]} names and shapes",
                      _serialize(state), (".pkl",), notes)
