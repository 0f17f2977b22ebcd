"""The dataset layout a segmentation run reads, checked before it starts, without mmseg."""
from __future__ import annotations

import os
from typing import Any


class DatasetLayoutError(ValueError):
    """A dataset folder whose layout is not the one the config describes."""


def _datasets(loader_cfg: dict[str, Any]) -> list[dict[str, Any]]:
    dataset = loader_cfg["dataset"]
    return list(dataset["datasets"]) if dataset.get("type") == "ConcatDataset" else [dataset]


def check_dataset(dataset: dict[str, Any]) -> None:
    """Raise naming the first missing folder, list or file of one dataset config."""
    root = dataset.get("data_root", "")
    prefix = dataset.get("data_prefix", {})
    images = os.path.join(root, prefix.get("img_path", ""))
    labels = os.path.join(root, prefix.get("seg_map_path", ""))
    for folder, what in ((images, "image"), (labels, "label")):
        if not os.path.isdir(folder):
            raise DatasetLayoutError(f"{dataset['type']}: the {what} folder '{folder}' does not exist "
                                     f"(data_root '{root}')")
    ann_file = dataset.get("ann_file")
    if ann_file:  # VOC: one name per line, image <name>.jpg and label <name>.png
        path = os.path.join(root, ann_file)
        if not os.path.isfile(path):
            raise DatasetLayoutError(f"{dataset['type']}: the split file '{path}' does not exist")
        with open(path, encoding="utf-8") as f:
            names = [n.strip() for n in f if n.strip()]
        if not names:
            raise DatasetLayoutError(f"{dataset['type']}: the split file '{path}' lists no images")
        img_suffix, seg_suffix = dataset.get("img_suffix", ".jpg"), dataset.get("seg_map_suffix", ".png")
        for name in names:
            for folder, suffix in ((images, img_suffix), (labels, seg_suffix)):
                file = os.path.join(folder, name + suffix)
                if not os.path.isfile(file):
                    raise DatasetLayoutError(f"{dataset['type']}: '{file}', listed in '{path}', does not exist")
        return
    seg_suffix = dataset.get("seg_map_suffix", "_gtFine_labelTrainIds.png")
    found = [f for _, _, files in os.walk(labels) for f in files if f.endswith(seg_suffix)]
    if not found:
        raise DatasetLayoutError(f"{dataset['type']}: no '*{seg_suffix}' label files under '{labels}' (Cityscapes: "
                                 f"make them with mmseg's tools/dataset_converters/cityscapes.py)")


def check_datasets(cfg: dict[str, Any], loaders: tuple[str, ...] = ("train_dataloader", "val_dataloader")) -> None:
    for name in loaders:
        if cfg.get(name):
            for dataset in _datasets(cfg[name]):
                check_dataset(dataset)
