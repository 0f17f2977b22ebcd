"""twist_segmentation.train on a CPU: 2 iterations and validation on synthetic VOC and Cityscapes,
resuming from mmengine's own checkpoint under weights-only loading, the refusals, and 2 trials."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from tests.segmentation.conftest import CONFIG_DIR, small_run_options
from twist.engine.checkpoint import atomic_torch_save
from twist.models.backbones import build_backbone

VOC = os.path.join(CONFIG_DIR, "fpn_r50_twist_4xb4-20k_voc12aug-512x512.py")
CITYSCAPES = os.path.join(CONFIG_DIR, "fpn_r50_twist_4xb2-40k_cityscapes-512x1024.py")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from twist.cli.convert import main as convert_main
    from twist_segmentation.synthetic_data import write_all

    root = tmp_path_factory.mktemp("seg")
    write_all(str(root / "data"), images=3)
    atomic_torch_save({"backbone": build_backbone("resnet50").module.state_dict()}, str(root / "ckpt.pth"))
    assert convert_main(["--to", "mmseg", str(root / "ckpt.pth"), str(root / "r50.pth")]) == 0
    atomic_torch_save(build_backbone("resnet18").module.state_dict(), str(root / "r18.pth"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _train(config, work_dir, *args, iters=2):
    cmd = [sys.executable, "-m", "twist_segmentation.train", config, "--work-dir", str(work_dir), *args,
           "--cfg-options", *small_run_options(config, iters)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "2"})


def _data(env, config):
    return str(env / "data" / ("VOCdevkit/VOC2012" if "voc" in config else "cityscapes"))


@pytest.mark.parametrize("config", [VOC, CITYSCAPES], ids=["voc", "cityscapes"])
def test_two_iterations_and_validation_give_an_miou(env, tmp_path, config):
    proc = _train(config, tmp_path / "run", "--weights", str(env / "r50.pth"), "--data-root", _data(env, config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "meta parameter" not in proc.stdout + proc.stderr  # the weights check loads nothing onto meta
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert final["iteration"] == 2 and set(final["metrics"]) == {"aAcc", "mIoU", "mAcc"}
    assert 0 <= final["metrics"]["mIoU"] <= 100
    from twist.trials import read_mmseg_metrics

    assert read_mmseg_metrics(str(tmp_path / "run")) == final["metrics"]
    _assert_started_from(tmp_path / "run", env / "ckpt.pth")


def _assert_started_from(work_dir, pretraining_checkpoint) -> None:
    """The backbone after mmseg's own initialisation held the pretraining checkpoint's tensors, every one."""
    from twist.engine.checkpoint import load_weights_only
    from twist_segmentation.train import tensor_digest

    recorded = json.loads((work_dir / "initial_backbone.json").read_text())
    original = load_weights_only(str(pretraining_checkpoint))["backbone"]
    assert recorded["tensors"] == len(original) > 100
    assert recorded["digests"] == {k: tensor_digest(v) for k, v in sorted(original.items())}


def test_a_backbone_that_did_not_receive_the_weights_stops_the_run(env, tmp_path):
    from types import SimpleNamespace

    import torch

    from twist_segmentation.train import backbone_start_check

    weights = env / "r18.pth"
    net = build_backbone("resnet18").module  # other random weights than the file's
    runner = SimpleNamespace(iter=0, rank=0, work_dir=str(tmp_path), model=SimpleNamespace(backbone=net))
    with pytest.raises(SystemExit, match=r"tensors of .*r18.pth' are not in the backbone"):
        backbone_start_check(str(weights)).before_train(runner)
    assert not (tmp_path / "initial_backbone.json").exists()
    net.load_state_dict(torch.load(weights, weights_only=True))
    backbone_start_check(str(weights)).before_train(runner)
    assert json.loads((tmp_path / "initial_backbone.json").read_text())["tensors"] == len(net.state_dict())


def test_resumes_from_its_own_checkpoint_with_weights_only_loading_elsewhere(env, tmp_path):
    args = ["--weights", str(env / "r50.pth"), "--data-root", _data(env, VOC)]
    assert _train(VOC, tmp_path / "run", *args, iters=2).returncode == 0
    proc = _train(VOC, tmp_path / "run", *args, "--resume", iters=3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed epoch: 0, iter: 2" in proc.stdout + proc.stderr
    assert json.loads((tmp_path / "run" / "final_metrics.json").read_text())["iteration"] == 3
    import torch

    with pytest.raises(Exception, match="Weights only load failed"):  # the default stays on
        torch.load(tmp_path / "run" / "iter_2.pth")


def test_refusals_name_what_is_wrong(env, tmp_path):
    from twist_segmentation.train import build_config, parse_args

    def refused(*args):
        with pytest.raises(SystemExit) as stop:
            build_config(parse_args([VOC, "--work-dir", str(tmp_path), *args]))
        return str(stop.value)

    data = ["--data-root", _data(env, VOC)]
    assert "no backbone weights: pass --weights" in refused(*data)
    assert f"weights file '{tmp_path / 'gone.pth'}' does not exist" in refused("--weights", str(tmp_path / "gone.pth"),
                                                                               *data)
    message = refused("--weights", str(env / "r18.pth"), *data)
    assert f"weights '{env / 'r18.pth'}': the converted weights do not match the ResNet backbone of" in message
    assert "missing (" in message and "layer1.0.conv3.weight" in message and len(message.splitlines()) == 1
    assert "JPEGImages' does not exist" in refused("--weights", str(env / "r50.pth"), "--data-root", str(env / "data"))
    assert "config 'nowhere.py' does not exist" in str(pytest.raises(SystemExit, build_config, parse_args(
        ["nowhere.py", "--work-dir", str(tmp_path), "--scratch"])).value)
    wide = os.path.join(CONFIG_DIR, "fpn_r50w2_twist_4xb4-20k_voc12aug-512x512.py")
    with pytest.raises(SystemExit) as stop:
        build_config(parse_args([wide, "--work-dir", str(tmp_path), "--weights", str(env / "r50.pth"), *data]))
    assert "misshapen (" in str(stop.value) and "'conv1.weight: (64, 3, 7, 7), expected (128, 3, 7, 7)'" in str(
        stop.value)


def test_the_weights_check_says_nothing_when_the_weights_fit(env, tmp_path, capfd, caplog):
    import logging
    import warnings

    from twist.mmseg_compat import ensure_mmseg_importable
    from twist_segmentation.train import build_config, check_weights_fit, parse_args

    ensure_mmseg_importable()
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)  # as main() does first; on mmcv-lite its imports warn
    cfg = build_config(parse_args([VOC, "--work-dir", str(tmp_path), "--scratch", "--data-root", _data(env, VOC)]))
    capfd.readouterr()
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_weights_fit(cfg, str(env / "r50.pth"))
    out, err = capfd.readouterr()
    assert [str(w.message)[:120] for w in caught] == [] and (out, err) == ("", "")
    assert [r.getMessage()[:120] for r in caplog.records] == []


def test_weights_with_nan_are_refused_naming_the_tensors(env, tmp_path):
    import torch

    from twist.mmseg_compat import ensure_mmseg_importable
    from twist_segmentation.train import build_config, check_weights_fit, parse_args

    ensure_mmseg_importable()
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    checkpoint = torch.load(env / "r50.pth", weights_only=True)
    checkpoint["state_dict"]["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    atomic_torch_save(checkpoint, str(tmp_path / "diverged.pth"))
    cfg = build_config(parse_args([VOC, "--work-dir", str(tmp_path), "--scratch", "--data-root", _data(env, VOC)]))
    with pytest.raises(SystemExit, match=r"NaN or inf in 1 tensor \(layer2.0.conv1.weight\)"):
        check_weights_fit(cfg, str(tmp_path / "diverged.pth"))


def test_a_label_value_outside_the_classes_names_the_file(env, tmp_path):
    import numpy as np

    data = tmp_path / "VOC2012"
    shutil.copytree(_data(env, VOC), data)
    name = (data / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]  # every val image is read
    bad = data / "SegmentationClass" / f"{name}.png"
    label = np.array(Image.open(bad))
    label[0, 0] = 37
    Image.fromarray(label, mode="L").save(bad)
    proc = _train(VOC, tmp_path / "run", "--weights", str(env / "r50.pth"), "--data-root", str(data))
    assert proc.returncode != 0
    assert f"label map '{bad}' has values 37, outside the 21 classes" in proc.stderr


def test_from_a_pretraining_checkpoint_to_a_two_trial_summary(env, tmp_path):
    from twist.cli.trials import main as trials_main

    code = trials_main(["run", "--engine", "mmseg", "--config", VOC, "--pretrained", str(env / "ckpt.pth"), "--trials",
                        "2", "--output-dir", str(tmp_path / "trials"), "--", "--data-root", _data(env, VOC),
                        *small_run_options(VOC)])
    assert code == 0
    assert (tmp_path / "trials" / "weights.pth").is_file()  # converted first, then every trial used it
    summary = json.loads((tmp_path / "trials" / "summary.json").read_text())
    assert summary["num_succeeded"] == 2 and summary["metrics"]["mIoU"]["n"] == 2
    assert "mIoU" in (tmp_path / "trials" / "summary.md").read_text()
    assert trials_main(["summarize", str(tmp_path / "trials")]) == 0


def test_two_processes_under_torchrun(env, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m",
           "twist_segmentation.train", VOC, "--work-dir", str(tmp_path / "run"), "--launcher", "pytorch",
           "--weights", str(env / "r50.pth"), "--data-root", _data(env, VOC), "--cfg-options",
           *small_run_options(VOC)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final validation:") == 1  # rank 0 alone reports and writes
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert final["iteration"] == 2 and "mIoU" in final["metrics"]
