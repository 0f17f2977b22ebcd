"""The miniature detection config on digit scenes, through the real train_net (Detectron2 installed):
the digit-scene datasets register from DETECTRON2_DATASETS, every ResNet-18 backbone tensor of the
converted weights loads, and the VOC evaluator scores the val scenes."""
import os
import subprocess
import sys

import pytest

from twist.engine.checkpoint import atomic_torch_save
from twist.models.backbones import build_backbone
from twist.transfer.digit_scenes import write_digit_scenes

pytest.importorskip("detectron2", reason="detectron2 is installed from its own guide, not the package index")

CONFIG = "detection/configs/miniature/voc_faster_rcnn_R_18_FPN_digit_scenes.yaml"
SHORT = ["MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
         "SOLVER.STEPS", "(1,)", "TEST.PRECISE_BN.ENABLED", "False", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]


def test_two_iterations_on_digit_scenes_with_every_backbone_tensor_loaded(tmp_path):
    write_digit_scenes(str(tmp_path / "datasets"), train=4, val=3)
    atomic_torch_save({"backbone": build_backbone("resnet18").module.state_dict()}, str(tmp_path / "ckpt.pth"))
    subprocess.run([sys.executable, "-m", "twist.cli.convert", "--to", "detectron2", str(tmp_path / "ckpt.pth"),
                    str(tmp_path / "r18.pkl")], check=True, capture_output=True)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "twist_detection.train_net", "--config-file", CONFIG,
                           "MODEL.WEIGHTS", str(tmp_path / "r18.pkl"), "OUTPUT_DIR", str(out), "SEED", "0", *SHORT],
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets"), "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "Following weights matched with submodule backbone.bottom_up - Total num: 20" in log  # 20 conv+norm
    missing = log.split("Some model parameters or buffers are not found in the checkpoint:")[-1].split("\n[")[0]
    assert "backbone.bottom_up" not in missing
    assert "Evaluating digit_scenes_voc_val using 2007 metric" in log
    from twist.trials import read_detectron2_metrics

    assert {"bbox/AP", "bbox/AP50", "bbox/AP75"} <= set(read_detectron2_metrics(str(out)))
