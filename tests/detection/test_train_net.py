"""The Detectron2 path end to end on a CPU: converted TWIST weights, 2 iterations, evaluation, trials.

These need detectron2, which is installed from its own guide (not the package index), so they skip
without it."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import TINY

pytest.importorskip("detectron2", reason="detectron2 is installed from its own guide, not the package index")

SHORT = ["MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
         "SOLVER.STEPS", "(1,)", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160",
         "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160", "TEST.PRECISE_BN.ENABLED", "False",
         "DATALOADER.NUM_WORKERS", "0", "DATASETS.TRAIN", "('voc_2007_trainval',)"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from twist.config import load_config
    from twist.engine.trainer import train
    from twist_detection.synthetic_data import write_all

    root = tmp_path_factory.mktemp("d2")
    write_all(str(root / "datasets"), images=4, size=128)
    train(load_config(None, TINY + ["model.backbone=resnet50", "train.epochs=1", "data.num_samples=8"]),
          str(root / "run"))
    subprocess.run([sys.executable, "-m", "twist.cli.convert", "--to", "detectron2",
                    str(root / "run" / "checkpoint.pth"), str(root / "r50.pkl")], check=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _env(root):
    return {**os.environ, "DETECTRON2_DATASETS": str(root / "datasets"), "OMP_NUM_THREADS": "2"}


def test_two_iterations_and_voc_evaluation_with_every_backbone_weight_loaded(setup):
    out = setup / "voc"
    proc = subprocess.run([sys.executable, "-m", "twist_detection.train_net", "--config-file",
                           "detection/configs/voc_faster_rcnn_R_50_FPN_24k.yaml", "MODEL.WEIGHTS",
                           str(setup / "r50.pkl"), "OUTPUT_DIR", str(out), "SEED", "0", *SHORT],
                          capture_output=True, text=True, env=_env(setup), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "Following weights matched with submodule backbone.bottom_up - Total num: 53" in log  # 53 conv+norm layers
    missing = log.split("Some model parameters or buffers are not found in the checkpoint:")[-1].split("\n[")[0]
    assert "backbone.bottom_up" not in missing
    assert "The checkpoint state_dict contains keys that are not used by the model" not in log
    from twist.trials import read_detectron2_metrics

    metrics = read_detectron2_metrics(str(out))
    assert {"bbox/AP", "bbox/AP50", "bbox/AP75"} <= set(metrics)


def test_coco_mask_rcnn_trains_and_evaluates_boxes_and_masks(setup):
    out = setup / "coco"
    short = [v for v in SHORT if v != "('voc_2007_trainval',)" and v != "DATASETS.TRAIN"]
    short += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]  # a 2-iteration model's scores are all low
    proc = subprocess.run([sys.executable, "-m", "twist_detection.train_net", "--config-file",
                           "detection/configs/coco_mask_rcnn_R_50_FPN_1x.yaml", "MODEL.WEIGHTS",
                           str(setup / "r50.pkl"), "OUTPUT_DIR", str(out), "SEED", "0", *short],
                          capture_output=True, text=True, env=_env(setup), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from twist.trials import read_detectron2_metrics

    metrics = read_detectron2_metrics(str(out))
    assert {"bbox/AP", "bbox/AP50", "bbox/AP75", "segm/AP", "segm/AP50", "segm/AP75"} <= set(metrics)
    main = [metrics[f"{task}/{m}"] for task in ("bbox", "segm") for m in ("AP", "AP50", "AP75")]
    assert all(0 <= v <= 100 for v in main)  # real figures, not the NaN of an empty evaluation (APl: no large objects)


def test_refuses_to_start_without_weights_or_with_detectron2_defaults(setup):
    base = [sys.executable, "-m", "twist_detection.train_net", "--config-file",
            "detection/configs/voc_faster_rcnn_R_50_FPN_24k.yaml", "OUTPUT_DIR", str(setup / "refused"), *SHORT]
    proc = subprocess.run(base, capture_output=True, text=True, env=_env(setup))
    assert proc.returncode != 0 and "MODEL.WEIGHTS is empty" in proc.stderr
    proc = subprocess.run(base + ["MODEL.WEIGHTS", str(setup / "r50.pkl"), "INPUT.FORMAT", "BGR"], capture_output=True,
                          text=True, env=_env(setup))
    assert proc.returncode != 0 and "INPUT.FORMAT is 'BGR', must be 'RGB'" in proc.stderr


def test_two_short_trials_are_summarised(setup):
    from twist.cli.trials import main as trials_main

    os.environ["DETECTRON2_DATASETS"] = str(setup / "datasets")
    code = trials_main(["run", "--engine", "detectron2",
                        "--config", "detection/configs/voc_faster_rcnn_R_50_FPN_24k.yaml",
                        "--weights", str(setup / "r50.pkl"), "--trials", "2", "--output-dir", str(setup / "trials"),
                        *SHORT])
    assert code == 0
    summary = json.loads((setup / "trials" / "summary.json").read_text())
    assert summary["num_succeeded"] == 2 and summary["metrics"]["bbox/AP"]["n"] == 2


def test_build_config_refuses_resnet50_weights_under_the_resnet50w2_config(tmp_path):
    from tests.detection.test_configs import R50W2_CONFIG, converted_names, write_pkl_of_shapes
    from twist_detection.train_net import build_config, parse_args

    weights = write_pkl_of_shapes(tmp_path / "r50.pkl", converted_names("resnet50"))
    with pytest.raises(SystemExit) as stop:
        build_config(parse_args(["--config-file", R50W2_CONFIG, "MODEL.WEIGHTS", weights]))
    message = str(stop.value)
    assert message.startswith(f"train_net: '{weights}' does not fit the backbone of {R50W2_CONFIG}")
    assert "265 of its 318 backbone tensors have other shapes" in message
    assert "stem.conv1.weight (64, 3, 7, 7) in the file, (128, 3, 7, 7) in the config" in message


def test_the_checkpoint_to_resume_from_is_read_weights_only_first(tmp_path):
    import torch
    from detectron2.checkpoint import DetectionCheckpointer

    from twist_detection.train_net import check_file_to_load

    class RunsShell:
        def __reduce__(self):
            return os.system, (f"touch '{tmp_path / 'MARKER'}'",)

    torch.save({"model": {"w": torch.zeros(1)}, "iteration": RunsShell()}, tmp_path / "model_0000009.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    checkpointer = DetectionCheckpointer(torch.nn.Linear(1, 1), save_dir=str(tmp_path))
    check_file_to_load(checkpointer, "", resume=False)  # nothing to load
    with pytest.raises(SystemExit, match="model_0000009.pth' holds a Python object"):
        check_file_to_load(checkpointer, "", resume=True)
    assert not (tmp_path / "MARKER").exists()


# R50-C4 runs res5 on every region: few proposals keep two iterations and the evaluation quick on a CPU.
C4_SHORT = ["MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "16",
            "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"]


@pytest.mark.parametrize("config, tasks", [("voc_faster_rcnn_R_50_C4_24k.yaml", ("bbox",)),
                                           ("coco_mask_rcnn_R_50_C4_1x.yaml", ("bbox", "segm"))], ids=["voc", "coco"])
def test_c4_configs_train_two_iterations_and_evaluate_with_every_backbone_weight_loaded(setup, config, tasks):
    out = setup / config.split("_", 1)[0] / "c4"
    short = SHORT if "voc" in config else [v for v in SHORT if v not in ("DATASETS.TRAIN", "('voc_2007_trainval',)")]
    proc = subprocess.run([sys.executable, "-m", "twist_detection.train_net", "--config-file",
                           f"detection/configs/{config}", "MODEL.WEIGHTS", str(setup / "r50.pkl"), "OUTPUT_DIR",
                           str(out), "SEED", "0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", *short, *C4_SHORT],
                          capture_output=True, text=True, env=_env(setup), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    # stem to res4 in the backbone, res5 in the ROI head: 53 conv+norm layers under no common submodule
    assert "Following weights matched with submodule model - Total num: 53" in log
    missing = log.split("Some model parameters or buffers are not found in the checkpoint:")[-1].split("\n[")[0]
    new_layers = ("proposal_generator.", "roi_heads.box_predictor.", "roi_heads.mask_head.", "roi_heads.res5.norm.")
    assert [line for line in missing.strip().splitlines() if not line.startswith(new_layers)] == []
    assert "roi_heads.res5.norm.{bias, running_mean, running_var, weight}" in missing  # the extra norm starts fresh
    assert "The checkpoint state_dict contains keys that are not used by the model" not in log
    from twist.trials import read_detectron2_metrics

    metrics = read_detectron2_metrics(str(out))
    assert all(0 <= metrics[f"{task}/{m}"] <= 100 for task in tasks for m in ("AP", "AP50", "AP75"))
