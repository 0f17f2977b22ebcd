"""The shipped Detectron2 configs: they parse, chain their bases and carry the protocol's keys.
With detectron2 installed, each also builds its model on CPU."""
import glob
import os

import pytest

from twist_detection.checks import (
    TORCHVISION_MEAN,
    TORCHVISION_STD,
    check_backbone_fits,
    check_weights_fit_config,
    config_problems,
    dataset_problems,
    resnet_shapes,
    resnet_values,
    weights_author,
)
from twist_detection.config_files import CONFIG_DIR, ConfigFileError, load_config_file, lookup

RUN_CONFIGS = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))
                     if not os.path.basename(p).startswith("Base"))
FPN_CONFIGS = [p for p in RUN_CONFIGS if "_FPN_" in p]  # the C4 ones: tests/detection/test_c4_configs.py
R50_CONFIG = os.path.join(CONFIG_DIR, "voc_faster_rcnn_R_50_FPN_24k.yaml")
R50W2_CONFIG = os.path.join(CONFIG_DIR, "voc_faster_rcnn_R_50w2_FPN_24k.yaml")


def converted_names(backbone: str) -> dict:
    """This project's backbone on the meta device under the names twist-convert gives it for detectron2."""
    import torch

    from twist.convert.detectron2 import rename_resnet_key
    from twist.models.backbones import build_backbone

    with torch.device("meta"):
        state = build_backbone(backbone).module.state_dict()
    return {rename_resnet_key(k): v for k, v in state.items()}


def write_pkl_of_shapes(path, tensors: dict, author: str = "twist") -> str:
    """A detectron2 .pkl with the given tensors' names and shapes (one byte a value: only shapes are checked)."""
    import pickle

    import numpy as np

    with open(path, "wb") as f:
        pickle.dump({"model": {k: np.zeros(tuple(v.shape), np.uint8) for k, v in tensors.items()},
                     "__author__": author, "matching_heuristics": True}, f)
    return str(path)


def _getter(path):
    cfg = load_config_file(path)
    return lambda key: lookup(cfg, key)


def test_the_expected_configs_ship():
    names = {os.path.basename(p) for p in RUN_CONFIGS}
    assert names == {"voc_faster_rcnn_R_50_FPN_24k.yaml", "voc_faster_rcnn_R_50w2_FPN_24k.yaml",
                     "coco_mask_rcnn_R_50_FPN_1x.yaml", "coco_mask_rcnn_R_50w2_FPN_1x.yaml",
                     "coco_mask_rcnn_R_50_FPN_2x.yaml", "coco_mask_rcnn_R_50w2_FPN_2x.yaml",
                     "voc_faster_rcnn_R_50_C4_24k.yaml", "voc_faster_rcnn_R_50w2_C4_24k.yaml",
                     "coco_mask_rcnn_R_50_C4_1x.yaml", "coco_mask_rcnn_R_50w2_C4_1x.yaml",
                     "coco_mask_rcnn_R_50_C4_2x.yaml", "coco_mask_rcnn_R_50w2_C4_2x.yaml"}


@pytest.mark.parametrize("path", FPN_CONFIGS, ids=os.path.basename)
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


@pytest.mark.parametrize("path", [p for p in RUN_CONFIGS if "voc" in p], ids=os.path.basename)  # FPN and C4
def test_voc_configs_follow_the_24k_protocol(path):
    cfg = load_config_file(path)
    assert lookup(cfg, "MODEL.MASK_ON") is False and lookup(cfg, "MODEL.ROI_HEADS.NUM_CLASSES") == 20
    assert lookup(cfg, "DATASETS.TRAIN") == ("voc_2007_trainval", "voc_2012_trainval")
    assert lookup(cfg, "DATASETS.TEST") == ("voc_2007_test",)
    assert (lookup(cfg, "SOLVER.MAX_ITER"), lookup(cfg, "SOLVER.STEPS"), lookup(cfg, "SOLVER.WARMUP_ITERS")) == (
        24000, (18000, 22000), 100)
    assert lookup(cfg, "INPUT.MIN_SIZE_TRAIN") == tuple(range(480, 801, 32))
    assert lookup(cfg, "INPUT.MIN_SIZE_TEST") == 800


@pytest.mark.parametrize("path", [p for p in FPN_CONFIGS if "coco" in p], ids=os.path.basename)
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
    defaults = {"INPUT.FORMAT": "BGR", "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675],
                "MODEL.PIXEL_STD": [1.0, 1.0, 1.0], "MODEL.RESNETS.STRIDE_IN_1X1": True}
    problems = config_problems(defaults.get)
    assert len(problems) == 4 and "INPUT.FORMAT is 'BGR', must be 'RGB'" in problems
    write_pkl_of_shapes(tmp_path / "w.pkl", converted_names("resnet50"))
    assert weights_author(str(tmp_path / "w.pkl")) == "twist"
    with pytest.raises(ValueError, match="torchvision-style ResNet weights .* MODEL.RESNETS.STRIDE_IN_1X1 is True"):
        check_weights_fit_config(str(tmp_path / "w.pkl"), defaults.get, "my.yaml")
    shipped = load_config_file(RUN_CONFIGS[0])
    check_weights_fit_config(str(tmp_path / "w.pkl"), lambda k: lookup(shipped, k), "shipped")  # no error


@pytest.mark.parametrize("config, backbone, other", [(R50_CONFIG, "resnet50", "resnet50w2"),
                                                     (R50W2_CONFIG, "resnet50w2", "resnet50")], ids=["r50", "r50w2"])
def test_weights_of_another_width_are_refused_naming_the_first_tensors(config, backbone, other):
    get = _getter(config)
    check_backbone_fits("own.pkl", {"model": converted_names(backbone), "__author__": "twist"}, get, "cfg.yaml")
    with pytest.raises(ValueError) as refused:
        check_backbone_fits("other.pkl", {"model": converted_names(other), "__author__": "twist"}, get, "cfg.yaml")
    message = str(refused.value)
    stems = {"resnet50": "(64, 3, 7, 7)", "resnet50w2": "(128, 3, 7, 7)"}
    assert message.startswith("'other.pkl' does not fit the backbone of cfg.yaml")
    assert "265 of its 318 backbone tensors have other shapes" in message and len(message.splitlines()) == 1
    assert f"stem.conv1.weight {stems[other]} in the file, {stems[backbone]} in the config" in message


def test_missing_and_unknown_backbone_tensors_are_refused():
    get = _getter(R50_CONFIG)
    r50 = converted_names("resnet50")
    without_res5 = {k: v for k, v in r50.items() if not k.startswith("res5.")}
    with pytest.raises(ValueError, match=r"30 that the config's ResNet needs are missing \(res5.0.conv1.weight;"):
        check_backbone_fits("w.pkl", {"model": without_res5, "__author__": "twist"}, get, "cfg.yaml")
    deeper = {**r50, "res4.6.conv1.weight": r50["res4.5.conv1.weight"]}  # a ResNet-101's seventh res4 block
    with pytest.raises(ValueError, match=r"1 are not in the config's ResNet \(res4.6.conv1.weight\)"):
        check_backbone_fits("w.pkl", {"model": deeper, "__author__": "twist"}, get, "cfg.yaml")
    full_model = {f"backbone.bottom_up.{k}": v for k, v in r50.items()}  # a detectron2 run's own checkpoint
    check_backbone_fits("model_final.pth", {"model": full_model, "iteration": 9}, get, "cfg.yaml")
    vit = {"cls_token": r50["stem.conv1.weight"], "blocks.0.attn.qkv.weight": r50["stem.conv1.weight"]}
    with pytest.raises(ValueError, match="that the config's ResNet needs are missing"):  # a ViTDet .pkl
        check_backbone_fits("vit.pkl", {"model": vit, "__author__": "twist"}, get, "cfg.yaml")


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=os.path.basename)
def test_config_shapes_are_the_tables_twist_convert_validates_against(path):
    from twist.convert.layouts import expected_shapes
    from twist.models.pretrained import Architecture

    required, statistics = resnet_shapes(resnet_values(_getter(path)))
    arch = Architecture("resnet50w2" if "R_50w2" in path else "resnet50", "resnet", False, 0)
    assert {**required, **statistics} == expected_shapes(arch, "detectron2")


def test_a_file_of_another_width_is_refused_from_disk(tmp_path):
    weights = write_pkl_of_shapes(tmp_path / "r50.pkl", converted_names("resnet50"))
    with pytest.raises(ValueError, match="265 of its 318 backbone tensors have other shapes"):
        check_weights_fit_config(weights, _getter(R50W2_CONFIG), "voc_faster_rcnn_R_50w2_FPN_24k.yaml")
    check_weights_fit_config(weights, _getter(R50_CONFIG), "voc_faster_rcnn_R_50_FPN_24k.yaml")


@pytest.mark.parametrize("overrides", [[], ["MODEL.RESNETS.STEM_OUT_CHANNELS", "128", "MODEL.RESNETS.RES2_OUT_CHANNELS",
                                            "512", "MODEL.RESNETS.WIDTH_PER_GROUP", "128"],
                                       ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"],
                                       ["MODEL.RESNETS.DEPTH", "101", "MODEL.RESNETS.NUM_GROUPS", "32",
                                        "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.RESNETS.NORM", "FrozenBN"],
                                       ["MODEL.RESNETS.NORM", "GN"]], ids=["r50", "r50w2", "r18", "x101", "gn"])
def test_config_shapes_are_those_of_detectron2s_own_resnet(overrides):
    pytest.importorskip("detectron2", reason="detectron2 is installed from its own guide, not the package index")
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    from twist_detection.train_net import config_value

    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']", *overrides])
    state = build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict()
    required, statistics = resnet_shapes(resnet_values(lambda key: config_value(cfg, key)))
    assert set(required) <= set(state) <= set(required) | set(statistics)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: ({**required, **statistics})[k] for k in state}


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

    import twist_detection.roi_heads  # noqa: F401  (registers the C4 configs' Res5ROIHeadsExtraNorm)

    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)  # SyncBN in one process without a group is batch norm
    assert sum(p.numel() for p in model.parameters()) > 10_000_000


def test_weights_with_nan_are_refused_naming_the_arrays(tmp_path):
    import pickle

    import numpy as np

    from twist.engine.checkpoint import CheckpointError

    model = {k: np.zeros(tuple(v.shape), np.float32) for k, v in converted_names("resnet50").items()}
    model["res4.0.conv1.weight"][0, 0, 0, 0] = np.nan
    model["stem.conv1.norm.running_var"][:] = np.inf
    with open(tmp_path / "diverged.pkl", "wb") as f:
        pickle.dump({"model": model, "__author__": "twist", "matching_heuristics": True}, f)
    with pytest.raises(CheckpointError, match=r"NaN or inf in 2 tensors \(.*res4.0.conv1.weight"):
        check_weights_fit_config(str(tmp_path / "diverged.pkl"), _getter(R50_CONFIG), "cfg.yaml")
    model["res4.0.conv1.weight"][0, 0, 0, 0] = model["stem.conv1.norm.running_var"][0] = 0.0
    model["stem.conv1.norm.running_var"][:] = 1.0
    with open(tmp_path / "finite.pkl", "wb") as f:
        pickle.dump({"model": model, "__author__": "twist", "matching_heuristics": True}, f)
    check_weights_fit_config(str(tmp_path / "finite.pkl"), _getter(R50_CONFIG), "cfg.yaml")
