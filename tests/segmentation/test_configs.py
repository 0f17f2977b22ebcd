"""The shipped MMSegmentation configs: self-contained, the protocol's model and data, and converted
weights that fill every backbone, checked through mmengine's own load report."""
import glob
import logging
import os
import shutil

import pytest
import torch

from tests.segmentation.conftest import CONFIG_DIR
from twist.engine.checkpoint import atomic_torch_save
from twist.mmseg_compat import ensure_mmseg_importable
from twist.models.backbones import build_backbone

ensure_mmseg_importable()
from mmengine.config import Config  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

register_all_modules()
CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.py")))


def test_the_expected_configs_ship():
    names = {os.path.basename(p)[:-3] for p in CONFIGS}
    assert names == {f"fpn_r50{w}_twist_{rest}" for w in ("", "w2") for rest in (
        "4xb4-20k_voc12aug-512x512", "4xb4-40k_voc12aug-512x512", "4xb2-40k_cityscapes-512x1024",
        "4xb2-80k_cityscapes-512x1024")}


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_is_semantic_fpn_on_a_pytorch_style_resnet_with_syncbn(path):
    text = open(path).read()
    assert "mmseg::" not in text  # chained only to files shipped here (mmseg:: needs pkg_resources)
    cfg = Config.fromfile(path)
    backbone, model = cfg.model.backbone, cfg.model
    assert backbone.type == "ResNet" and backbone.style == "pytorch" and backbone.depth == 50
    assert backbone.init_cfg.type == "Pretrained" and backbone.norm_cfg.type == "SyncBN"
    assert model.neck.type == "FPN" and model.decode_head.type == "FPNHead"
    assert model.decode_head.norm_cfg.type == "SyncBN" and model.pretrained is None
    voc = "voc12aug" in path
    assert model.decode_head.num_classes == (21 if voc else 19)
    assert tuple(model.data_preprocessor.size) == ((512, 512) if voc else (512, 1024))
    iters = int(os.path.basename(path).split("-")[1].split("k")[0]) * 1000
    assert cfg.train_cfg.max_iters == iters and cfg.param_scheduler[0].end == iters
    assert cfg.optim_wrapper.optimizer.lr == 0.01 and cfg.param_scheduler[0].type == "PolyLR"
    loader = cfg.train_dataloader
    assert loader.batch_size == (4 if voc else 2)
    if voc:
        assert [d.ann_file for d in loader.dataset.datasets] == ["ImageSets/Segmentation/train.txt",
                                                                   "ImageSets/Segmentation/aug.txt"]
    wide = "r50w2" in path
    assert backbone.get("stem_channels", 64) == (128 if wide else 64)
    assert list(model.neck.in_channels) == ([512, 1024, 2048, 4096] if wide else [256, 512, 1024, 2048])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from twist.cli.convert import main as convert_main

    out = tmp_path_factory.mktemp("weights")
    files = {}
    for name in ("resnet50", "resnet50w2"):
        atomic_torch_save({"backbone": build_backbone(name).module.state_dict()}, str(out / f"{name}_ckpt.pth"))
        assert convert_main(["--to", "mmseg", str(out / f"{name}_ckpt.pth"), str(out / f"{name}.pth")]) == 0
        files[name] = str(out / f"{name}.pth")
    yield files
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_converted_weights_fill_the_backbone_by_mmengines_own_report(path, converted):
    cfg = Config.fromfile(path)
    weights = converted["resnet50w2" if "r50w2" in path else "resnet50"]
    cfg.model.backbone.init_cfg.checkpoint = weights
    cfg.model.backbone.norm_cfg = dict(type="BN", requires_grad=True)  # one process: what the Runner does
    backbone = MODELS.build(cfg.model.backbone)
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        backbone.init_weights()
    finally:
        logger.removeHandler(handler)
    report = "\n".join(records)
    assert f"load model from: {weights}" in report  # mmengine did load our file
    assert "do not match exactly" not in report and "missing keys" not in report and "unexpected key" not in report
    expected = torch.load(weights, weights_only=True)["state_dict"]
    assert torch.equal(backbone.state_dict()["layer4.2.conv3.weight"], expected["layer4.2.conv3.weight"])


def test_the_report_check_catches_weights_that_do_not_fit(converted):
    cfg = Config.fromfile(os.path.join(CONFIG_DIR, "fpn_r50w2_twist_4xb4-20k_voc12aug-512x512.py"))
    cfg.model.backbone.init_cfg.checkpoint = converted["resnet50"]  # R50 weights into the 50w2 backbone
    cfg.model.backbone.norm_cfg = dict(type="BN", requires_grad=True)
    backbone = MODELS.build(cfg.model.backbone)
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    MMLogger.get_current_instance().addHandler(handler)
    try:
        backbone.init_weights()
    finally:
        MMLogger.get_current_instance().removeHandler(handler)
    assert "do not match exactly" in "\n".join(records)
