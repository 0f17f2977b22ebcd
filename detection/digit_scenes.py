"""Digit scenes (``twist.transfer.digit_scenes``) as Detectron2 datasets, read by its own loaders.

Registered from ``$DETECTRON2_DATASETS`` (Detectron2's dataset root), where the scenes' writer puts
``VOCdevkit/VOC2012`` and ``coco``:

- ``digit_scenes_voc_{train,val}``: Pascal VOC XML through Detectron2's ``load_voc_instances``,
  scored by its VOC evaluator with the 11-point AP of VOC2007 test (the detection protocol's);
- ``digit_scenes_coco_{train,val}``: COCO JSON with RLE masks through ``load_coco_json``, for
  Mask R-CNN (with ``INPUT.MASK_FORMAT bitmask``).
"""
from __future__ import annotations

import os

from twist.transfer.digit_scenes import VOC_NAMES

PREFIX = "digit_scenes_"


def register_digit_scenes(root: str) -> list[str]:
    """Register every digit-scene dataset under ``root``; returns their names (already registered ones kept)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.data.datasets.pascal_voc import register_pascal_voc

    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    coco = os.path.join(root, "coco")
    names = []
    for split in ("train", "val"):
        name = f"{PREFIX}voc_{split}"
        if name not in DatasetCatalog.list():
            register_pascal_voc(name, voc, split, 2007, VOC_NAMES)
            MetadataCatalog.get(name).evaluator_type = "pascal_voc"  # as detectron2's builtin VOC sets apart
        names.append(name)
        name = f"{PREFIX}coco_{split}"
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, os.path.join(coco, "annotations", f"instances_{split}2017.json"),
                                    os.path.join(coco, f"{split}2017"))
        names.append(name)
    return names
