"""The shipped Detectron2 configs: they parse, chain their bases and carry the protocol's keys.
With detectron2 installed, each also builds its model on CPU."""
import glob
import os

import pytest

from detection.checks import (TORCHVISION_MEAN, TORCHVISION_STD, check_weights_fit_config, config_problems,
                              dataset_problems, weights_author)
from detection.config_files import CONFIG_DIR, ConfigFileError, load_config_file, lookup

RUN_CONFIGS = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml")) if not os.path.basename(p).startswith("Base"))


def test_the_expected_configs_ship():
    names = {os.path.basename(p) for p in RUN_CONFIGS}
    assert names == {"voc_faster_rcnn_R_50_FPN_24k.yaml", "voc_faster_rcnn_R_50w2_FPN_24k.yaml",
                     "coco_mask_rcnn_R_50_FPN_1x.yaml", "coco_mask_rcnn_R_50w2_FPN_1x.yaml",
                     "coco_mask_rcnn_R_50_FPN_2x.yaml", "coco_mask_rcnn_R_50w2_FPN_2x.yaml"}


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=os.path.basename)
def test_every_config_carries_the_keys_torchvision_style_weights_need(path):
    cfg = load_config_file(path)
    assert config_problems(lambda key: lookup(cfg, key)) == []
    assert lookup(cfg, "INPUT.FORMAT") == "RGB" and lookup(cfg, "MODEL.RESNETS.STRIDE_IN_1X1") is False
    assert tuple(lookup(cfg, "MODEL.PIXEL_MEAN")) == TORCHVISION_MEAN
    assert tuple(lookup(cfg, "MODEL.PIXEL_STD")) == TORCHVISION_STD
    assert lookup(cfg, "MODEL.BACKBONE.FREEZE_AT") == 0 and lookup(cfg, "MODEL.WEIGHTS") == ""
    for key in ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM"):
        assert lookup(cfg, key) == "SyncBN", key
    assert (lookup(cfg, "MODEL.ROI_BOX_HEAD.NUM_CONV"), lookup(cfg, "MODEL.ROI_BOX_HEAD.NUM_FC")) == (4, 1)
    assert lookup(cfg, "TEST.PRECISE_BN.ENABLED") is True
    assert lookup(cfg, "MODEL.META_ARCHITECTURE") == "GeneralizedRCNN"  # from the base, two levels up
    assert (lookup(cfg, "SOLVER.IMS_PER_BATCH"), lookup(cfg, "SOLVER.BASE_LR")) == (16, 0.02)
    wide = "R_50w2" in path
    assert lookup(cfg, "MODEL.RESNETS.STEM_OUT_CHANNELS", 64) == (128 if wide else 64)
    assert lookup(cfg, "MODEL.RESNETS.RES2_OUT_CHANNELS", 256) == (512 if wide else 256)
    assert lookup(cfg, "MODEL.RESNETS.WIDTH_PER_GROUP", 64) == (128 if wide else 64)


@pytest.mark.parametrize("path", [p for p in RUN_CONFIGS if "voc" in p], ids=os.path.basename)
def test_voc_configs_follow_the_24k_protocol(path):
    cfg = load_config_file(path)
    assert lookup(cfg, "MODEL.MASK_ON") is False and lookup(cfg, "MODEL.ROI_HEADS.NUM_CLASSES") == 20
    assert lookup(cfg, "DATASETS.TRAIN") == ("voc_2007_trainval", "voc_2012_trainval")
    assert lookup(cfg, "DATASETS.TEST") == ("voc_2007_test",)
    assert (lookup(cfg, "SOLVER.MAX_ITER"), lookup(cfg, "SOLVER.STEPS"), lookup(cfg, "SOLVER.WARMUP_ITERS")) == (
        24000, (18000, 22000), 100)
    assert lookup(cfg, "INPUT.MIN_SIZE_TRAIN") == tuple(range(480, 801, 32)) and lookup(cfg, "INPUT.MIN_SIZE_TEST") == 800


@pytest.mark.parametrize("path", [p for p in RUN_CONFIGS if "coco" in p], ids=os.path.basename)
def test_coco_configs_are_mask_rcnn_with_syncbn_everywhere(path):
    cfg = load_config_file(path)
    assert lookup(cfg, "MODEL.MASK_ON") is True and lookup(cfg, "MODEL.ROI_MASK_HEAD.NORM") == "SyncBN"
    assert lookup(cfg, "DATASETS.TRAIN") == ("coco_2017_train",) and lookup(cfg, "DATASETS.TEST") == ("coco_2017_val",)
    two_x = "_2x" in path
    assert lookup(cfg, "SOLVER.MAX_ITER") == (180000 if two_x else 90000)
    assert lookup(cfg, "SOLVER.STEPS") == ((120000, 160000) if two_x else (60000, 80000))


def test_a_missing_base_is_named(tmp_path):
    (tmp_path / "child.yaml").write_text('_BASE_: "nowhere.yaml"\nSOLVER:\n  MAX_ITER: 2\n')
    with pytest.raises(ConfigFileError, match=r"nowhere.yaml' does not exist \(a _BASE_ of '.*child.yaml'\)"):
        load_config_file(str(tmp_path / "child.yaml"))


def test_detectron2_defaults_are_refused_for_torchvision_style_weights(tmp_path):
    import pickle

    import numpy as np

    defaults = {"INPUT.FORMAT": "BGR", "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675], "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
                "MODEL.RESNETS.STRIDE_IN_1X1": True}
    problems = config_problems(defaults.get)
    assert len(problems) == 4 and "INPUT.FORMAT is 'BGR', must be 'RGB'" in problems
    with open(tmp_path / "w.pkl", "wb") as f:
        pickle.dump({"model": {"stem.conv1.weight": np.zeros(1)}, "__author__": "twist", "matching_heuristics": True}, f)
    assert weights_author(str(tmp_path / "w.pkl")) == "twist"
    with pytest.raises(ValueError, match="torchvision-style ResNet weights .* MODEL.RESNETS.STRIDE_IN_1X1 is True"):
        check_weights_fit_config(str(tmp_path / "w.pkl"), defaults.get, "my.yaml")
    shipped = load_config_file(RUN_CONFIGS[0])
    check_weights_fit_config(str(tmp_path / "w.pkl"), lambda k: lookup(shipped, k), "shipped")  # no error


def test_missing_dataset_folders_are_named(tmp_path):
    problems = dataset_problems(["voc_2007_trainval", "coco_2017_val", "my_own_set"], str(tmp_path))
    assert any("VOC2007/Annotations' is missing" in p for p in problems)
    assert any("instances_val2017.json' is missing" in p for p in problems)
    assert not any("my_own_set" in p for p in problems)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=os.path.basename)
def test_every_config_builds_its_model_on_cpu(path):
    pytest.importorskip("detectron2", reason="detectron2 is installed from its own guide, not the package index")
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)  # SyncBN in one process without a group is batch norm
    assert sum(p.numel() for p in model.parameters()) > 10_000_000
