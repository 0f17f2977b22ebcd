"""What a detection run needs before it starts, checked without detectron2.

Weights converted from a torchvision-style ResNet (TWIST, MoCo and most SSL codebases) only give
their accuracy with RGB input, torchvision's pixel statistics and the stride on the 3x3 convolution;
with detectron2's defaults (BGR, unit std, stride in the 1x1) they still load, because the shapes
agree, and silently lose AP. So a run with such weights and a config lacking these keys is refused.

Weights of another width or depth load too: detectron2 leaves every misshapen tensor random and only
warns. So the shapes of the backbone tensors are compared with those the config's ``MODEL.RESNETS``
values give. And the file is read without running code from it (detectron2 itself unpickles ``.pkl``
files in full): a ``.pkl`` through an unpickler that admits only arrays, numbers, strings and
containers, anything else weights-only.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable

from twist.convert.detectron2 import read_detectron2_pkl
from twist.engine.checkpoint import CheckpointError, describe_tensors, load_weights_only, nonfinite_tensors

TORCHVISION_MEAN = (123.675, 116.280, 103.530)
TORCHVISION_STD = (58.395, 57.120, 57.375)
# ``__author__`` of the .pkl files written by converters of torchvision-style ResNets.
TORCHVISION_STYLE_AUTHORS = {"twist", "TWIST", "MOCO", "OpenSelfSup", "MMSelfSup", "Yonglong"}

# detectron2's defaults (detectron2/config/defaults.py) of the MODEL.RESNETS keys that set tensor shapes.
RESNETS_DEFAULTS = {"DEPTH": 50, "NUM_GROUPS": 1, "WIDTH_PER_GROUP": 64, "STEM_OUT_CHANNELS": 64,
                    "RES2_OUT_CHANNELS": 256, "NORM": "FrozenBN"}
RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
BACKBONE_KEY = re.compile(r"^(?:backbone\.bottom_up\.)?((?:stem|res[2-5])\..+)$")

REQUIRED = {  # key: (check, what it must be)
    "INPUT.FORMAT": (lambda v: v == "RGB", "RGB"),
    "MODEL.PIXEL_MEAN": (lambda v: _close(v, TORCHVISION_MEAN), list(TORCHVISION_MEAN)),
    "MODEL.PIXEL_STD": (lambda v: _close(v, TORCHVISION_STD), list(TORCHVISION_STD)),
    "MODEL.RESNETS.STRIDE_IN_1X1": (lambda v: v is False, False),
}


def _close(value: Any, expected: tuple[float, ...]) -> bool:
    try:
        return len(value) == len(expected) and all(abs(float(a) - b) < 1e-3 for a, b in zip(value, expected))
    except TypeError:
        return False


def read_weights(path: str) -> Any:
    """A weights file read without running code from it: a ``.pkl`` arrays-only, anything else weights-only.

    Raises :class:`CheckpointError` naming the file (and the global, for a pickle that names one)."""
    return read_detectron2_pkl(path) if path.endswith(".pkl") else load_weights_only(path)


def _author(data: Any) -> str | None:
    return data.get("__author__") if isinstance(data, dict) else None


def weights_author(path: str) -> str | None:
    """The ``__author__`` of a detectron2-format ``.pkl`` (read arrays-only), or None for other files."""
    if not path.endswith(".pkl") or not os.path.isfile(path):
        return None
    return _author(read_detectron2_pkl(path))


def config_problems(get: Callable[[str], Any]) -> list[str]:
    """The required keys whose value in a config (read through ``get(dotted_key)``) is wrong."""
    problems = []
    for key, (ok, expected) in REQUIRED.items():
        value = get(key)
        if not ok(value):
            problems.append(f"{key} is {value!r}, must be {expected!r}")
    return problems


def resnet_values(get: Callable[[str], Any]) -> dict[str, Any]:
    """The config's ``MODEL.RESNETS`` values that set the tensors' shapes, detectron2's defaults for unset ones."""
    values = {key: get(f"MODEL.RESNETS.{key}") for key in RESNETS_DEFAULTS}
    return {key: default if values[key] is None else values[key] for key, default in RESNETS_DEFAULTS.items()}


def resnet_shapes(resnets: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """detectron2's ResNet tensors for ``MODEL.RESNETS`` values, as its ``build_resnet_backbone`` makes them:
    those every norm has (convolutions, norm weight and bias), and the statistics only batch norms have."""
    depth, groups = resnets["DEPTH"], resnets["NUM_GROUPS"]
    if depth not in RESNET_BLOCKS:
        raise ValueError(f"MODEL.RESNETS.DEPTH is {depth!r}, must be one of {sorted(RESNET_BLOCKS)}")
    required: dict[str, tuple[int, ...]] = {}
    statistics: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out_channels: int, in_channels: int, kernel: int) -> None:
        required[f"{name}.weight"] = (out_channels, in_channels, kernel, kernel)
        if resnets["NORM"]:  # "" is no norm
            required[f"{name}.norm.weight"] = required[f"{name}.norm.bias"] = (out_channels,)
            statistics[f"{name}.norm.running_mean"] = statistics[f"{name}.norm.running_var"] = (out_channels,)
            statistics[f"{name}.norm.num_batches_tracked"] = ()

    channels, out, inner = resnets["STEM_OUT_CHANNELS"], resnets["RES2_OUT_CHANNELS"], groups * resnets[
        "WIDTH_PER_GROUP"]
    conv("stem.conv1", channels, 3, 7)
    for stage, blocks in enumerate(RESNET_BLOCKS[depth], start=2):
        for block in range(blocks):
            name, inputs = f"res{stage}.{block}", channels if block == 0 else out
            if depth in (18, 34):
                conv(f"{name}.conv1", out, inputs, 3)
                conv(f"{name}.conv2", out, out, 3)
            else:
                conv(f"{name}.conv1", inner, inputs, 1)
                conv(f"{name}.conv2", inner, inner // groups, 3)
                conv(f"{name}.conv3", out, inner, 1)
            if inputs != out:
                conv(f"{name}.shortcut", out, inputs, 1)
        channels, out, inner = out, out * 2, inner * 2
    return required, statistics


def backbone_tensors(data: Any) -> dict[str, tuple[int, ...]]:
    """The ResNet tensors of a loaded weights file under detectron2's names, with their shapes (the
    ``backbone.bottom_up.`` prefix of a whole detectron2 model dropped; a plain state dict is the model)."""
    model = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(model, dict):
        return {}
    return {m.group(1): tuple(getattr(v, "shape", ())) for k, v in model.items()
            for m in [BACKBONE_KEY.match(str(k))] if m}


def _listed(items: list[str]) -> str:
    return "; ".join(items[:3]) + ("; ..." if len(items) > 3 else "")


def check_backbone_fits(weights: str, data: Any, get: Callable[[str], Any], config_name: str) -> None:
    """Raise naming the first tensors of ``weights`` whose shapes differ from the config's ResNet, and
    those it lacks or the ResNet lacks: detectron2 would start with them random, saying only a warning."""
    if "resnet" not in str(get("MODEL.BACKBONE.NAME") or "build_resnet_backbone"):
        return
    found = backbone_tensors(data)
    if not found and _author(data) not in TORCHVISION_STYLE_AUTHORS:
        return  # other names (the Caffe2 model zoo's): detectron2 translates and matches those itself
    resnets = resnet_values(get)
    required, statistics = resnet_shapes(resnets)
    expected = {**required, **statistics}
    misshapen = [f"{k} {found[k]} in the file, {expected[k]} in the config" for k in found
                 if k in expected and found[k] != tuple(expected[k])]
    missing = [k for k in required if k not in found]
    unknown = [k for k in found if k not in expected]
    if not (misshapen or missing or unknown):
        return
    problems = [f"{len(keys)} {what} ({_listed(keys)})" for what, keys in (
        (f"of its {len(found)} backbone tensors have other shapes", misshapen),
        ("that the config's ResNet needs are missing", missing), ("are not in the config's ResNet", unknown)) if keys]
    values = ", ".join(f"{k} {v}" for k, v in resnets.items() if k != "NORM")
    raise ValueError(f"'{weights}' does not fit the backbone of {config_name} (MODEL.RESNETS {values}): "
                     + ", and ".join(problems) + "; detectron2 would leave those random. Use the config that "
                     "twist-convert printed for these weights (an R_50w2 config for ResNet-50w2)")


def check_finite(weights: str, data: Any) -> None:
    """Raise naming the arrays of the file's ``model`` that hold NaN or inf: a diverged run's weights."""
    import numpy as np
    import torch

    model = data.get("model", data) if isinstance(data, dict) else {}
    arrays = {k: torch.as_tensor(v) for k, v in model.items()
              if isinstance(v, torch.Tensor) or (isinstance(v, np.ndarray) and v.dtype.kind == "f")}
    bad = nonfinite_tensors(arrays)
    if bad:
        raise CheckpointError(f"'{weights}' has NaN or inf in {describe_tensors(bad)}: convert a checkpoint saved "
                              f"before the run diverged")


def check_weights_fit_config(weights: str, get: Callable[[str], Any], config_name: str) -> None:
    """Raise if ``weights`` cannot be read without running code from them (:class:`CheckpointError`), do
    not fit the config's backbone, or are torchvision-style and the config lacks the keys they need."""
    if not os.path.isfile(weights):
        return  # a URL: train_net checks the file detectron2 fetched before reading it
    data = read_weights(weights)
    check_finite(weights, data)
    check_backbone_fits(weights, data, get, config_name)
    author = _author(data)
    if author not in TORCHVISION_STYLE_AUTHORS:
        return
    problems = config_problems(get)
    if problems:
        raise ValueError(f"'{weights}' holds torchvision-style ResNet weights (written by '{author}'), but "
                         f"{config_name} does not set what they need: " + "; ".join(problems) +
                         ". Chain the config to detection/configs/Base-TWIST-R50-FPN.yaml (or Base-TWIST-R50-C4.yaml)")


def dataset_problems(dataset_names: list[str], root: str) -> list[str]:
    """Missing folders and files of detectron2's VOC and COCO datasets and of the digit scenes under ``root``."""
    problems = []
    for name in dataset_names:
        if name.startswith("voc_"):
            _, year, split = name.split("_", 2)
            base = os.path.join(root, f"VOC{year}")
            needed = [os.path.join(base, "Annotations"), os.path.join(base, "JPEGImages"),
                      os.path.join(base, "ImageSets", "Main", f"{split}.txt")]
        elif name.startswith(("coco_2017_", "digit_scenes_coco_")):  # the latter: twist.transfer.digit_scenes
            split = name.rsplit("_", 1)[1]
            needed = [os.path.join(root, "coco", f"{split}2017"),
                      os.path.join(root, "coco", "annotations", f"instances_{split}2017.json")]
        elif name.startswith("digit_scenes_voc_"):
            base = os.path.join(root, "VOCdevkit", "VOC2012")
            needed = [os.path.join(base, "Annotations"), os.path.join(base, "JPEGImages"),
                      os.path.join(base, "ImageSets", "Main", f"{name.rsplit('_', 1)[1]}.txt")]
        else:
            continue
        problems += [f"{name}: '{p}' is missing" for p in needed if not os.path.exists(p)]
    return problems
