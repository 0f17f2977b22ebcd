"""Every shipped pretraining config loads, builds its model and trains one real step at reduced size on CPU.

Only the resolution and the batch are overridden (REDUCED below), plus two settings that belong to
the machine rather than the recipe: the dataset location and the number of loader workers. All the
rest (backbone, head widths, C, optimiser, precision, augmentation, teacher) is as shipped, except
that W-MSE's whitening sub-batch shrinks with the batch, and its embedding with it (it must stay
narrower than the sub-batch).
"""
import glob

import numpy as np
import pytest
from PIL import Image

from twist.config import load_config
from twist.engine.trainer import train
from twist.models.architectures import BACKBONES

CONFIGS = sorted(glob.glob("configs/demo/*.yaml") + glob.glob("configs/pretrain/*.yaml"))
REDUCED = ["data.image_size=32", "augment.local_size=16", "train.batch_size=4"]
# ResNets take local crops of 24 px: at 16 px a ResNet-50's layer4 sees 1x1 maps, and in bf16 on the CPU
# the weight gradient of its strided 3x3 convolution then came out non-finite after an earlier test's run
# (order-dependent: it passed alone), which the finiteness check before the checkpoint rightly refuses.
# ViTs keep 16 px, a multiple of their patch.
RESNET_LOCAL = ["augment.local_size=24"]
MACHINE = ["data.num_workers=0"]


def _tiny_image_folder(root):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def test_configs_are_found():
    # configs/transfer holds the transfer benchmark's own configs (tests/transfer/test_shipped_benchmark.py).
    assert set(glob.glob("configs/*/*.yaml")) == set(CONFIGS) | set(glob.glob("configs/eval/*.yaml")) | set(
        glob.glob("configs/transfer/*.yaml"))
    assert set(CONFIGS) >= {
        "configs/demo/digits.yaml", "configs/demo/digits_multicrop_selflabel.yaml",
        "configs/pretrain/resnet50_2view.yaml", "configs/pretrain/resnet50_multicrop_selflabel.yaml",
        "configs/pretrain/resnet50w2_multicrop_selflabel.yaml", "configs/pretrain/deit_small_teacher.yaml",
        "configs/pretrain/vit_base_teacher.yaml", "configs/pretrain/barlow_twins_resnet50.yaml",
        "configs/pretrain/wmse_resnet50.yaml", "configs/demo/digits_barlow_twins.yaml", "configs/demo/digits_wmse.yaml",
    }


# What a one-step run of a full-size recipe holds on disk at its peak (measured 2026-12-02: 2.5 GB for ViT-B and
# 1.4 to 1.5 GB for the ResNet-50s), beyond the suite's floor (tests/conftest.py).
DISK_GB = {"configs/pretrain/vit_base_teacher.yaml": 2.7, "configs/pretrain/resnet50_2view.yaml": 1.6,
           "configs/pretrain/resnet50_multicrop_selflabel.yaml": 1.6,
           "configs/pretrain/resnet50w2_multicrop_selflabel.yaml": 1.6,
           "configs/pretrain/barlow_twins_resnet50.yaml": 1.6, "configs/pretrain/wmse_resnet50.yaml": 1.6}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.disk_gb(DISK_GB[p])) if p in DISK_GB else p
                                  for p in CONFIGS])
def test_shipped_config_trains_one_step(path, tmp_path):
    shipped = load_config(path)
    overrides = REDUCED + MACHINE + ([] if BACKBONES[shipped["model"]["backbone"]].family == "vit" else RESNET_LOCAL)
    if shipped["method"] == "wmse":
        overrides += ["wmse.w_size=4", "wmse.out_dim=3"]
    if shipped["data"]["dataset"] == "folder":
        _tiny_image_folder(tmp_path / "data")
        overrides.append(f"data.path={tmp_path / 'data'}")
    cfg = load_config(path, overrides)
    result = train(cfg, str(tmp_path / "run"), max_steps=1)
    assert result["step"] == 1


# The authors' launch of each multi-GPU TWIST recipe (spec §10): GPUs, and how many consecutive GPUs
# share the NBS statistics (--bunch-size over the per-GPU batch).
AUTHORS_NBS_BUNCHES = {
    "configs/pretrain/resnet50_2view.yaml": (8, 1),
    "configs/pretrain/resnet50_multicrop_selflabel.yaml": (16, 2),
    "configs/pretrain/resnet50w2_multicrop_selflabel.yaml": (32, 4),
    "configs/pretrain/deit_small_teacher.yaml": (16, 4),
    "configs/pretrain/vit_base_teacher.yaml": (32, 8),
}


@pytest.mark.parametrize("path", sorted(AUTHORS_NBS_BUNCHES))
def test_twist_recipes_normalise_nbs_over_the_authors_bunches(path):
    from twist.methods import build_method

    world, ranks_per_bunch = AUTHORS_NBS_BUNCHES[path]
    cfg = load_config(path)
    assert build_method(cfg).head_norm_ranks(cfg["train"]["batch_size"], world) == ranks_per_bunch


@pytest.mark.parametrize("path", ["configs/pretrain/barlow_twins_resnet50.yaml",
                                  "configs/demo/digits_barlow_twins.yaml"])
def test_barlow_twins_recipes_use_barlow_twins_lars_rule(path):
    cfg = load_config(path)
    assert (cfg["optim"]["name"], cfg["optim"]["lars_rule"]) == ("lars", "barlow_twins")
