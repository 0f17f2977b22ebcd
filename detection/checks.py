"""What a detection run needs before it starts, checked without detectron2.

Weights converted from a torchvision-style ResNet (TWIST, MoCo and most SSL codebases) only give
their accuracy with RGB input, torchvision's pixel statistics and the stride on the 3x3 convolution;
with detectron2's defaults (BGR, unit std, stride in the 1x1) they still load, because the shapes
agree, and silently lose AP. So a run with such weights and a config lacking these keys is refused.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Callable

TORCHVISION_MEAN = (123.675, 116.280, 103.530)
TORCHVISION_STD = (58.395, 57.120, 57.375)
# ``__author__`` of the .pkl files written by converters of torchvision-style ResNets.
TORCHVISION_STYLE_AUTHORS = {"twist", "TWIST", "MOCO", "OpenSelfSup", "MMSelfSup", "Yonglong"}

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


def weights_author(path: str) -> str | None:
    """The ``__author__`` of a detectron2-format ``.pkl``, or None for other files."""
    if not path.endswith(".pkl") or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        try:
            data = pickle.load(f, encoding="latin1")
        except Exception:  # noqa: BLE001 - a file detectron2 itself will then report
            return None
    return data.get("__author__") if isinstance(data, dict) else None


def config_problems(get: Callable[[str], Any]) -> list[str]:
    """The required keys whose value in a config (read through ``get(dotted_key)``) is wrong."""
    problems = []
    for key, (ok, expected) in REQUIRED.items():
        value = get(key)
        if not ok(value):
            problems.append(f"{key} is {value!r}, must be {expected!r}")
    return problems


def check_weights_fit_config(weights: str, get: Callable[[str], Any], config_name: str) -> None:
    """Raise if ``weights`` are torchvision-style and the config lacks the keys they need."""
    author = weights_author(weights)
    if author not in TORCHVISION_STYLE_AUTHORS:
        return
    problems = config_problems(get)
    if problems:
        raise ValueError(f"'{weights}' holds torchvision-style ResNet weights (written by '{author}'), but "
                         f"{config_name} does not set what they need: " + "; ".join(problems) +
                         ". Chain the config to detection/configs/Base-TWIST-R50-FPN.yaml")


def dataset_problems(dataset_names: list[str], root: str) -> list[str]:
    """Missing folders and files of detectron2's built-in VOC and COCO datasets under ``root``."""
    problems = []
    for name in dataset_names:
        if name.startswith("voc_"):
            _, year, split = name.split("_", 2)
            base = os.path.join(root, f"VOC{year}")
            needed = [os.path.join(base, "Annotations"), os.path.join(base, "JPEGImages"),
                      os.path.join(base, "ImageSets", "Main", f"{split}.txt")]
        elif name.startswith("coco_2017_"):
            split = name.rsplit("_", 1)[1]
            needed = [os.path.join(root, "coco", f"{split}2017"),
                      os.path.join(root, "coco", "annotations", f"instances_{split}2017.json")]
        else:
            continue
        problems += [f"{name}: '{p}' is missing" for p in needed if not os.path.exists(p)]
    return problems
