"""The evaluation config: the same strict YAML-plus-overrides system as pretraining, its own keys.

The defaults are the paper's ImageNet protocols for a ResNet-50 (spec section 9). A run's data
settings (dataset, path, image size, augmentation pipeline, seed) are taken from the pretraining
config stored with the checkpoint, or from ``config.yaml`` beside it, so an evaluation of a run needs
no config of its own; a ``--config`` file and overrides then change any key.
"""
from __future__ import annotations

import os
from typing import Any

from twist.config import SHARED_CHOICES, SHARED_DATA, SHARED_RANGES, ConfigError, Schema, check_data_section, read_yaml
from twist.engine.checkpoint import stored_config

PROTOCOLS = ("linear", "knn", "semisup", "cluster")

EVAL_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "auto",
    "precision": "fp32",
    "progress_bar": True,
    # Used only without weights (--random-init); with weights the architecture is read from them.
    "model": {
        "backbone": "resnet50",
        "small_input": False,
    },
    "data": {
        **SHARED_DATA,
        # The labelled split the classifiers train on, and the held-out split they are scored on.
        "train_split": "train",
        "val_split": "val",
    },
    # The supervised protocols' training views (linear in 'augmented' mode, semisup).
    "augment": {
        "pipeline": "barlow",
        "crop_scale": [0.08, 1.0],
        "hflip": 0.5,
        "interpolation": "bilinear",
        # small_gray: as the pretraining key (supervised training views on random backdrops).
        "backdrop": 0.0,
    },
    "features": {
        "batch_size": 256,
        # ViT: the feature is the concatenated CLS tokens of the last n blocks (each through the final norm),
        # plus the mean of the last block's patch tokens with avgpool.
        "vit_last_blocks": 4,
        "vit_avgpool": False,
    },
    "linear": {
        # auto: 'cached' when the train split has at most cache_max_images images, else 'augmented'.
        "mode": "auto",
        "cache_max_images": 200000,
        "epochs": 100,
        "batch_size": 1024,
        "lr": 0.2,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "eval_every": 1,
    },
    "knn": {
        "k": 20,
        "temperature": 0.07,
        "query_batch_size": 1024,
        "pixel_baseline": False,
    },
    "semisup": {
        # A file of image names (SimCLR's 1percent.txt / 10percent.txt); else a class-balanced fraction.
        "subset_file": "",
        "fraction": 0.1,
        "epochs": 20,
        "batch_size": 256,
        "lr_backbone": 0.02,
        "lr_head": 0.2,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "eval_every": 1,
    },
    "cluster": {
        # The split whose images are clustered; from a run's checkpoint, the split its own evaluation used.
        "split": "val",
        "grid_images": 32,
        "grid_columns": 8,
        "kmeans_baseline": False,
    },
}

EVAL_CHOICES: dict[str, tuple[str, ...]] = {
    **SHARED_CHOICES,
    "precision": ("fp32", "bf16", "fp16"),
    "augment.interpolation": ("bilinear", "bicubic"),
    "linear.mode": ("auto", "cached", "augmented", "uncached"),
}

EVAL_RANGES: dict[str, tuple[float | None, float | None]] = {
    **SHARED_RANGES,
    "features.batch_size": (1, None),
    "features.vit_last_blocks": (1, 12),
    "linear.cache_max_images": (0, None),
    "linear.epochs": (1, None),
    "linear.batch_size": (1, None),
    "linear.lr": (0.0, None),
    "linear.momentum": (0.0, 1.0),
    "linear.weight_decay": (0.0, None),
    "linear.eval_every": (1, None),
    "knn.k": (1, None),
    "knn.temperature": (1e-6, None),
    "knn.query_batch_size": (1, None),
    "semisup.fraction": (0.0, 1.0),
    "semisup.epochs": (1, None),
    "semisup.batch_size": (1, None),
    "semisup.lr_backbone": (0.0, None),
    "semisup.lr_head": (0.0, None),
    "semisup.momentum": (0.0, 1.0),
    "semisup.weight_decay": (0.0, None),
    "semisup.eval_every": (1, None),
    "cluster.grid_images": (0, None),
    "cluster.grid_columns": (1, None),
}

EVAL_LIST_SHAPES = {"augment.crop_scale": (2, 0.0, 1.0)}


def _check_eval_consistency(cfg: dict[str, Any], source: str) -> None:
    low, high = cfg["augment"]["crop_scale"]
    if low > high:
        raise ConfigError(f"{source}: 'augment.crop_scale' must be [low, high] with low <= high, got {[low, high]}")
    check_data_section(cfg["data"], source)
    if cfg["semisup"]["fraction"] <= 0 and not cfg["semisup"]["subset_file"]:
        raise ConfigError(f"{source}: 'semisup.fraction' must be above 0 (or give semisup.subset_file)")


EVAL = Schema(EVAL_DEFAULTS, EVAL_CHOICES, EVAL_RANGES, EVAL_LIST_SHAPES, _check_eval_consistency)

# Pretraining keys that describe the data and carry over to its evaluation.
_INHERITED_DATA = ("dataset", "path", "image_size", "num_samples", "num_classes", "list_file", "val_list_file",
                   "num_workers", "pin_memory")


def inherited_from_pretraining(pretrain_cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a pretraining config that an evaluation of its checkpoint starts from.

    Keys the pretraining config lacks (an older or foreign file) keep the evaluation defaults.
    """
    data = pretrain_cfg.get("data", {}) if isinstance(pretrain_cfg, dict) else {}
    tree: dict[str, Any] = {"data": {k: data[k] for k in _INHERITED_DATA if k in data}}
    split = pretrain_cfg.get("eval", {}).get("split")
    if split is not None:
        tree["cluster"] = {"split": split}
    if "seed" in pretrain_cfg:
        tree["seed"] = pretrain_cfg["seed"]
    if "device" in pretrain_cfg:
        tree["device"] = pretrain_cfg["device"]
    pipeline = pretrain_cfg.get("augment", {}).get("pipeline")
    if pipeline is not None:
        tree["augment"] = {"pipeline": pipeline}
        if pipeline == "small_gray":  # small digits-like images: mild crops and no flips, as in pretraining
            aug = pretrain_cfg["augment"]
            tree["augment"].update({"crop_scale": aug.get("crop_scale", [0.5, 1.0]), "hflip": aug.get("hflip", 0.0)})
    return tree


def pretraining_config_of(weights_path: str, checkpoint: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The pretraining config of a checkpoint: stored inside it, or ``config.yaml`` in its folder."""
    stored = stored_config(checkpoint)
    if stored is not None:
        return stored, f"{weights_path} (stored config)"
    beside = os.path.join(os.path.dirname(os.path.abspath(weights_path)), "config.yaml")
    if os.path.isfile(beside):
        with open(beside, encoding="utf-8") as f:
            data = read_yaml(f)
        if isinstance(data, dict) and "data" in data:
            return data, beside
    return None, None
