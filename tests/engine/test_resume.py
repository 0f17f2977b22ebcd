"""Taking up a run folder again: the stored config against the new one, starting over, leftovers of a
killed write."""
import json
import os

import pytest
import torch

from twist.cli.train import build_parser, main
from twist.config import ConfigError, load_config
from twist.distributed import DistEnv
from twist.engine.checkpoint import CheckpointError, load_weights_only
from twist.engine.trainer import train


def _records(out, kind):
    return [r for r in (json.loads(line) for line in open(os.path.join(out, "log.jsonl"))) if r["kind"] == kind]


def _first_run(tmp_path, overrides, max_steps=2):
    out = str(tmp_path / "run")
    train(load_config(None, overrides), out, max_steps=max_steps)
    return out


def test_a_resume_with_another_lr_is_refused_naming_both_values(tmp_path, tiny_overrides):
    out = _first_run(tmp_path, tiny_overrides)
    config_before = open(os.path.join(out, "config.yaml"), "rb").read()
    with pytest.raises(ConfigError) as refused:
        train(load_config(None, tiny_overrides + ["optim.lr=0.3", "seed=5"]), out)
    message = str(refused.value)
    assert len(message.splitlines()) == 1
    assert "optim.lr (0.5 stored, 0.3 now)" in message and "seed (0 stored, 5 now)" in message
    assert "--restart" in message
    assert open(os.path.join(out, "config.yaml"), "rb").read() == config_before
    assert load_weights_only(os.path.join(out, "checkpoint.pth"))["step"] == 2


def test_more_epochs_are_allowed_and_recorded(tmp_path, tiny_overrides, capsys):
    out = _first_run(tmp_path, tiny_overrides, max_steps=None)  # 2 epochs of 4 steps
    result = train(load_config(None, tiny_overrides + ["train.epochs=3", "train.log_every=2"]), out)
    assert result["step"] == 12 and result["finished"]
    (resume,) = _records(out, "resume")
    assert resume["step"] == 8
    assert resume["changed"] == {"train.epochs": [2, 3], "train.log_every": [1, 2]}
    assert "train.epochs (2 stored, 3 now)" in capsys.readouterr().out
    assert load_weights_only(os.path.join(out, "checkpoint.pth"))["config"]["train"]["epochs"] == 3


def test_fewer_epochs_are_refused(tmp_path, tiny_overrides):
    out = _first_run(tmp_path, tiny_overrides)
    with pytest.raises(ConfigError, match=r"train\.epochs \(2 stored, 1 now\)"):
        train(load_config(None, tiny_overrides + ["train.epochs=1"]), out)


def test_another_backbone_is_one_line_naming_the_key(tmp_path, tiny_overrides):
    out = _first_run(tmp_path, tiny_overrides)
    with pytest.raises(ConfigError, match=r"model\.backbone \(resnet18 stored, resnet34 now\)"):
        train(load_config(None, tiny_overrides + ["model.backbone=resnet34"]), out)


def test_a_checkpoint_without_config_that_does_not_fit_names_the_tensors(tmp_path, tiny_overrides):
    out = _first_run(tmp_path, tiny_overrides)
    path = os.path.join(out, "checkpoint.pth")
    state = load_weights_only(path)
    del state["config"]  # as written by other tools
    torch.save(state, path)
    with pytest.raises(CheckpointError) as refused:
        train(load_config(None, tiny_overrides + ["model.head.num_classes=16"]), out)
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and path in message
    assert "head.last_linear.weight" in message
    assert "[8, 32]" in message and "[16, 32]" in message


def test_a_checkpoint_of_another_number_of_ranks_is_refused_before_anything_is_loaded(tmp_path, tiny_overrides):
    from twist.engine.resume import restore_run
    from twist.engine.trainer import build_run

    out = _first_run(tmp_path, tiny_overrides)
    path = os.path.join(out, "checkpoint.pth")
    state = load_weights_only(path)
    state["rng"] = state["rng"] * 2  # as two ranks write it
    state["model"] = {name: tensor + 1 for name, tensor in state["model"].items()}
    torch.save(state, path)
    cfg = load_config(None, tiny_overrides)
    run = build_run(cfg, out, torch.device("cpu"), DistEnv())
    before = {name: tensor.clone() for name, tensor in run.model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"written by 2 ranks; .* \(1 now\)"):
        restore_run(path, cfg, run.model, run.teacher, run.optimizer, run.scaler, rank=0, world_size=1)
    assert all(torch.equal(before[name], tensor) for name, tensor in run.model.state_dict().items())


def test_restart_moves_the_old_run_aside_and_starts_over(tmp_path, tiny_overrides, capsys):
    out = _first_run(tmp_path, tiny_overrides)
    old_log = open(os.path.join(out, "log.jsonl")).read()
    config = tmp_path / "run.yaml"
    config.write_text("eval:\n  enabled: false\n")
    args = ["--config", str(config), "--output-dir", out, *tiny_overrides, "optim.lr=0.3"]
    assert main(args) == 2  # refused without the flag
    assert main(["--restart", *args]) == 0
    (kept,) = os.listdir(os.path.join(out, "previous"))
    kept = os.path.join(out, "previous", kept)
    assert open(os.path.join(kept, "log.jsonl")).read() == old_log
    assert load_weights_only(os.path.join(kept, "checkpoint.pth"))["step"] == 2
    state = load_weights_only(os.path.join(out, "checkpoint.pth"))
    assert state["step"] == 8 and state["config"]["optim"]["lr"] == 0.3
    assert not _records(out, "resume") and [r["step"] for r in _records(out, "train")] == list(range(1, 9))
    assert kept in capsys.readouterr().out


def test_help_says_what_restart_does():
    text = " ".join(build_parser().format_help().split())
    assert "--restart" in text and "previous/" in text


def test_stale_temporaries_of_a_killed_write_are_removed_at_start(tmp_path, tiny_overrides, capsys):
    out = _first_run(tmp_path, tiny_overrides)
    stale = [".checkpoint.pth.k2j3h4.tmp", ".backbone.pth.x9y8.tmp", ".config.yaml.abcd.tmp"]
    for name in stale:
        with open(os.path.join(out, name), "wb") as f:
            f.write(b"PK\x03\x04 half a checkpoint")
    keep = os.path.join(out, ".notes.txt.tmp")  # not a file this run writes
    open(keep, "w").close()
    train(load_config(None, tiny_overrides), out, max_steps=3)
    assert not any(os.path.exists(os.path.join(out, name)) for name in stale)
    assert os.path.exists(keep)
    lines = [line for line in capsys.readouterr().err.splitlines() if "temporar" in line]
    assert len(lines) == 1 and "3 stale temporary files" in lines[0]
