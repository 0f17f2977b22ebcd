"""Multi-crop, self-labeling and the EMA teacher inside the real training loop."""
import json
import os

import pytest
import torch

from tests.parts import train_transform
from twist.config import load_config
from twist.data import SourceConfig, ViewsDataset, build_source
from twist.engine.checkpoint import load_weights_only
from twist.engine.optim import ScheduleConfig, build_schedules
from twist.engine.trainer import train

MULTICROP = ["augment.local_crops=3", "augment.local_size=8", "self_label.enabled=true",
             "self_label.start_epoch=1", "self_label.warmup_epochs=0"]


def test_multicrop_views_and_the_self_labeling_switch_are_functions_of_the_epoch(tiny_overrides):
    cfg = load_config(None, tiny_overrides + MULTICROP + ["augment.pipeline=barlow"])
    dataset = ViewsDataset(build_source(SourceConfig.from_config(cfg)), train_transform(cfg), seed=0,
                           later_stages=[(1, train_transform(cfg, stage=1))])
    views, _, _ = dataset[(0, 5)]
    assert [tuple(v.shape) for v in views] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 3
    assert dataset.transform_for_epoch(0) is dataset.transform
    assert dataset.transform_for_epoch(1) is dataset.later_stages[0][1]
    assert dataset.transform_for_epoch(7) is dataset.later_stages[0][1]
    # The harder crops: the self-labeling transform uses the self_label scales.
    crop = dataset.transform_for_epoch(1).pipelines[0].transforms[0]
    assert crop.scale == tuple(cfg["self_label"]["global_scale"])
    assert dataset.transform.pipelines[2].transforms[0].scale == tuple(cfg["augment"]["local_scale"])


@pytest.mark.parametrize("stop_at", [4, 5])  # at the TWIST → self-labeling boundary, and one step past it
def test_resume_across_the_self_labeling_boundary_is_exact(tmp_path, tiny_overrides, stop_at):
    overrides = tiny_overrides + MULTICROP
    cfg = load_config(None, overrides)
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train(cfg, straight)
    train(cfg, resumed, max_steps=stop_at)
    train(load_config(None, overrides), resumed)
    a, b = load_weights_only(os.path.join(straight, "checkpoint.pth")), \
        load_weights_only(os.path.join(resumed, "checkpoint.pth"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    stages = [json.loads(line).get("stage") for line in open(os.path.join(straight, "log.jsonl"))]
    assert stages.count("twist") == 4 and stages.count("self_label") == 4
    records = [json.loads(line) for line in open(os.path.join(straight, "log.jsonl"))]
    sl = [r for r in records if r.get("stage") == "self_label"]
    # The kept fraction follows the quantile schedule: floor(q * B) of the B = 8 samples pass.
    quantile = build_schedules(ScheduleConfig.from_config(cfg), steps_per_epoch=4, global_batch=8)["quantile"]
    assert [r["kept_fraction"] for r in sl] == [int(quantile[r["step"] - 1] * 8) / 8 for r in sl]


def test_teacher_run_exports_both_backbones_and_resumes_exactly(tmp_path, tiny_overrides):
    overrides = tiny_overrides + ["teacher.enabled=true", "teacher.momentum_start=0.9", "augment.local_crops=2",
                                  "augment.local_size=8", "loss.lam1=-0.6"]
    cfg = load_config(None, overrides)
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train(cfg, straight)
    train(cfg, resumed, max_steps=3)
    train(load_config(None, overrides), resumed)
    a, b = load_weights_only(os.path.join(straight, "checkpoint.pth")), \
        load_weights_only(os.path.join(resumed, "checkpoint.pth"))
    for key in a["teacher"]:
        assert torch.equal(a["teacher"][key], b["teacher"][key]), key
    teacher = torch.load(os.path.join(straight, "teacher_backbone.pth"), weights_only=True)
    student = torch.load(os.path.join(straight, "backbone.pth"), weights_only=True)
    assert teacher.keys() == student.keys()
    assert not torch.equal(teacher["conv1.weight"], student["conv1.weight"])  # the EMA lags the student
