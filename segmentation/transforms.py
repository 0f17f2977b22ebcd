"""A pipeline step that refuses label maps with values outside the classes, naming the file.

Registered in mmseg's transform registry on import (the shipped configs import it through
``custom_imports``). A wrong label value otherwise either crashes deep inside the loss on GPU
("device-side assert") or is silently counted as a class that does not exist.
"""
from __future__ import annotations

import numpy as np

from twist.mmseg_compat import ensure_mmseg_importable

ensure_mmseg_importable()

from mmcv.transforms import BaseTransform  # noqa: E402
from mmseg.registry import TRANSFORMS  # noqa: E402

IGNORE_INDEX = 255


class LabelRangeError(ValueError):
    """A segmentation label map with a value that is neither a class index nor the ignore index."""


def check_label_values(label: np.ndarray, num_classes: int, path: str) -> None:
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size or (values < 0).any():
        shown = ", ".join(str(int(v)) for v in np.concatenate([values[values < 0], bad])[:8])
        raise LabelRangeError(f"label map '{path}' has values {shown}, outside the {num_classes} classes "
                              f"(0-{num_classes - 1}) and the ignore index {IGNORE_INDEX}")


@TRANSFORMS.register_module()
class CheckLabelRange(BaseTransform):
    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def transform(self, results: dict) -> dict:
        check_label_values(results["gt_seg_map"], self.num_classes, results.get("seg_map_path", "<unknown>"))
        return results
