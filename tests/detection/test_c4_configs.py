"""The shipped R50-C4 configs (the MoCo lineage's protocol): they parse, chain their bases, carry the
protocol's keys and accept converted ResNet-50 / 50w2 weights. With detectron2 installed, each builds,
has the norm after res5 and loads the converted weights into every backbone tensor."""
import glob
import os

import pytest

from tests.detection.test_configs import converted_names, write_pkl_of_shapes
from twist_detection.checks import (
    TORCHVISION_MEAN,
    TORCHVISION_STD,
    check_backbone_fits,
    check_weights_fit_config,
    config_problems,
    resnet_shapes,
    resnet_values,
)
from twist_detection.config_files import CONFIG_DIR, load_config_file, lookup

C4_CONFIGS = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*_C4_*.yaml")))
VOC_R50 = os.path.join(CONFIG_DIR, "voc_faster_rcnn_R_50_C4_24k.yaml")
VOC_R50W2 = os.path.join(CONFIG_DIR, "voc_faster_rcnn_R_50w2_C4_24k.yaml")
COCO_R50 = os.path.join(CONFIG_DIR, "coco_mask_rcnn_R_50_C4_1x.yaml")


def _getter(path):
    cfg = load_config_file(path)
    return lambda key: lookup(cfg, key)


def _backbone(path: str) -> str:
    return "resnet50w2" if "R_50w2" in path else "resnet50"


def test_the_c4_configs_ship_for_voc_and_coco_in_both_widths():
    assert {os.path.basename(p) for p in C4_CONFIGS} == {
        "voc_faster_rcnn_R_50_C4_24k.yaml", "voc_faster_rcnn_R_50w2_C4_24k.yaml",
        "coco_mask_rcnn_R_50_C4_1x.yaml", "coco_mask_rcnn_R_50w2_C4_1x.yaml",
        "coco_mask_rcnn_R_50_C4_2x.yaml", "coco_mask_rcnn_R_50w2_C4_2x.yaml"}


def test_the_c4_base_chains_the_torchvision_keys_over_the_moco_style_base():
    base = load_config_file(os.path.join(CONFIG_DIR, "Base-RCNN-C4-BN.yaml"))
    assert config_problems(lambda key: lookup(base, key))  # the architecture base alone sets no pixel keys
    twist_base = load_config_file(os.path.join(CONFIG_DIR, "Base-TWIST-R50-C4.yaml"))
    assert config_problems(lambda key: lookup(twist_base, key)) == []
    assert lookup(twist_base, "MODEL.ROI_HEADS.NAME") == "Res5ROIHeadsExtraNorm"  # from the base below


@pytest.mark.parametrize("path", C4_CONFIGS, ids=os.path.basename)
def test_every_c4_config_is_the_moco_c4_protocol_with_torchvision_keys(path):
    cfg = load_config_file(path)
    assert config_problems(lambda key: lookup(cfg, key)) == []
    assert tuple(lookup(cfg, "MODEL.PIXEL_MEAN")) == TORCHVISION_MEAN
    assert tuple(lookup(cfg, "MODEL.PIXEL_STD")) == TORCHVISION_STD
    assert lookup(cfg, "INPUT.FORMAT") == "RGB" and lookup(cfg, "MODEL.RESNETS.STRIDE_IN_1X1") is False
    assert lookup(cfg, "MODEL.WEIGHTS") == "" and lookup(cfg, "MODEL.BACKBONE.FREEZE_AT") == 0
    assert lookup(cfg, "MODEL.BACKBONE.NAME") == "build_resnet_backbone"
    assert lookup(cfg, "MODEL.RESNETS.OUT_FEATURES") == ["res4"]
    assert lookup(cfg, "MODEL.ROI_HEADS.IN_FEATURES") == ["res4"]
    assert lookup(cfg, "MODEL.RPN.IN_FEATURES") == ["res4"]
    assert lookup(cfg, "MODEL.ROI_HEADS.NAME") == "Res5ROIHeadsExtraNorm"
    assert lookup(cfg, "MODEL.RESNETS.NORM") == "SyncBN" and lookup(cfg, "MODEL.FPN") is None
    assert (lookup(cfg, "MODEL.RPN.PRE_NMS_TOPK_TEST"), lookup(cfg, "MODEL.RPN.POST_NMS_TOPK_TEST")) == (6000, 1000)
    assert lookup(cfg, "TEST.PRECISE_BN.ENABLED") is True
    assert (lookup(cfg, "SOLVER.IMS_PER_BATCH"), lookup(cfg, "SOLVER.BASE_LR")) == (16, 0.02)
    wide = _backbone(path) == "resnet50w2"
    assert lookup(cfg, "MODEL.RESNETS.STEM_OUT_CHANNELS", 64) == (128 if wide else 64)
    assert lookup(cfg, "MODEL.RESNETS.RES2_OUT_CHANNELS", 256) == (512 if wide else 256)
    assert lookup(cfg, "MODEL.RESNETS.WIDTH_PER_GROUP", 64) == (128 if wide else 64)


@pytest.mark.parametrize("path", [p for p in C4_CONFIGS if "coco" in p], ids=os.path.basename)
def test_coco_c4_configs_are_mask_rcnn_1x_or_2x(path):
    cfg = load_config_file(path)
    assert lookup(cfg, "MODEL.MASK_ON") is True
    assert lookup(cfg, "DATASETS.TRAIN") == ("coco_2017_train",) and lookup(cfg, "DATASETS.TEST") == ("coco_2017_val",)
    assert lookup(cfg, "INPUT.MIN_SIZE_TRAIN") == tuple(range(640, 801, 32))
    assert lookup(cfg, "INPUT.MIN_SIZE_TEST") == 800
    two_x = "_2x" in path
    assert lookup(cfg, "SOLVER.MAX_ITER") == (180000 if two_x else 90000)
    assert lookup(cfg, "SOLVER.STEPS") == ((120000, 160000) if two_x else (60000, 80000))


@pytest.mark.parametrize("path", C4_CONFIGS, ids=os.path.basename)
def test_converted_weights_of_the_configs_width_are_accepted_and_the_other_refused(path, tmp_path):
    own = write_pkl_of_shapes(tmp_path / "own.pkl", converted_names(_backbone(path)))
    check_weights_fit_config(own, _getter(path), os.path.basename(path))  # no error
    other = "resnet50" if _backbone(path) == "resnet50w2" else "resnet50w2"
    with pytest.raises(ValueError, match="265 of its 318 backbone tensors have other shapes"):
        check_backbone_fits("other.pkl", {"model": converted_names(other), "__author__": "twist"}, _getter(path),
                            os.path.basename(path))


def test_detectron2_defaults_under_a_c4_config_are_refused_for_torchvision_style_weights(tmp_path):
    weights = write_pkl_of_shapes(tmp_path / "w.pkl", converted_names("resnet50"))
    cfg = load_config_file(VOC_R50)
    cfg["INPUT"]["FORMAT"] = "BGR"
    with pytest.raises(ValueError, match="torchvision-style ResNet weights .* INPUT.FORMAT is 'BGR', must be 'RGB'"):
        check_weights_fit_config(weights, lambda key: lookup(cfg, key), "c4.yaml")


def _d2_c4_model(path: str, *overrides: str):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import twist_detection.roi_heads  # noqa: F401  (registers Res5ROIHeadsExtraNorm)

    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *overrides])
    return cfg, build_model(cfg)


@pytest.mark.parametrize("path", [VOC_R50, VOC_R50W2, COCO_R50], ids=os.path.basename)
def test_the_c4_model_holds_the_configs_resnet_with_a_norm_after_res5(path):
    pytest.importorskip("detectron2", reason="detectron2 is installed from its own guide, not the package index")
    import torch

    cfg, model = _d2_c4_model(path)
    res5 = model.roi_heads.res5
    assert [name for name, _ in res5.named_children()] == ["0", "1", "2", "norm"]
    assert isinstance(res5.norm, torch.nn.SyncBatchNorm) and res5.norm.num_features == res5[2].out_channels
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    backbone = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(("backbone.", "roi_heads.res5."))
                and not k.startswith("roi_heads.res5.norm.")}
    required, statistics = resnet_shapes(resnet_values(_getter(path)))
    assert backbone == {**required, **statistics}  # stem-res4 in the backbone, res5 in the ROI head, nothing else


def test_the_norm_after_res5_normalises_the_res5_output():
    pytest.importorskip("detectron2", reason="detectron2 is installed from its own guide, not the package index")
    import torch

    _, model = _d2_c4_model(VOC_R50)
    res5 = model.roi_heads.res5.train()
    with torch.no_grad():
        out = res5(torch.randn(4, 1024, 14, 14))
    per_channel = out.transpose(0, 1).flatten(1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(2048), atol=1e-4)  # batch statistics, weight 1, bias 0
    assert torch.allclose(per_channel.var(1, unbiased=False), torch.ones(2048), atol=1e-2)


@pytest.mark.parametrize("path", [VOC_R50, VOC_R50W2], ids=os.path.basename)
def test_converted_weights_load_into_every_backbone_tensor_of_the_c4_model(path, tmp_path):
    pytest.importorskip("detectron2", reason="detectron2 is installed from its own guide, not the package index")
    import torch
    from detectron2.checkpoint import DetectionCheckpointer

    from twist.convert.detectron2 import convert, rename_resnet_key
    from twist.models.backbones import build_backbone
    from twist.models.pretrained import Architecture, BackboneWeights

    torch.manual_seed(0)
    name = _backbone(path)
    state = build_backbone(name).module.state_dict()
    conversion = convert(BackboneWeights(state, Architecture(name, "resnet", False, 0), "random.pth", "backbone"))
    with open(tmp_path / "w.pkl", "wb") as f:
        conversion.serialize(f)
    _, model = _d2_c4_model(path)
    DetectionCheckpointer(model).load(str(tmp_path / "w.pkl"))
    loaded = model.state_dict()
    for key, value in state.items():  # all 318 tensors: with the shape test above, no backbone tensor is left random
        target = rename_resnet_key(key)
        target = ("roi_heads." if target.startswith("res5.") else "backbone.") + target
        assert torch.equal(loaded[target], value), target
