import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import twist.engine.checkpoint as checkpoint
from twist.config import load_config
from twist.engine.checkpoint import CheckpointError, atomic_torch_save, load_weights_only
from twist.engine.trainer import train


def _model_state(run_dir):
    return load_weights_only(os.path.join(run_dir, "checkpoint.pth"))


def test_every_checkpoint_stores_the_epochs_completed(tmp_path, tiny_overrides, monkeypatch):
    import twist.engine.trainer as trainer

    saved = []
    monkeypatch.setattr(trainer, "atomic_torch_save", lambda state, path: saved.append(
        (path, state.get("step"), state.get("epoch"))))
    train(load_config(None, tiny_overrides + ["train.checkpoint_every=2"]), str(tmp_path / "run"), max_steps=6)
    checkpoints = [(step, epoch) for path, step, epoch in saved if path.endswith("checkpoint.pth")]
    # Steps 2, 4 (periodic, then at the epoch's end), 6 (periodic, then at the stop); 4 steps an epoch.
    assert checkpoints == [(2, 0), (4, 1), (4, 1), (6, 1), (6, 1)]


@pytest.mark.parametrize("stop_at", [3, 4])  # mid-epoch and on an epoch boundary (4 steps per epoch)
def test_resume_gives_identical_weights(tmp_path, tiny_overrides, stop_at):
    # Dropout in the head makes the model's own RNG stream matter, not only the data order.
    overrides = tiny_overrides + ["model.head.dropout=0.2", "optim.weight_decay=1e-4"]
    cfg = load_config(None, overrides)
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train(cfg, straight)
    first = train(cfg, resumed, max_steps=stop_at)
    assert first["step"] == stop_at and not first["finished"]
    assert _model_state(resumed)["step"] == stop_at
    second = train(load_config(None, overrides), resumed)
    assert second["finished"] and second["step"] == 8

    a, b = _model_state(straight), _model_state(resumed)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for (ka, va), (kb, vb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert torch.equal(va["momentum_buffer"], vb["momentum_buffer"])


def test_interrupted_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pth")
    atomic_torch_save({"weight": torch.arange(4.0)}, path)

    def crash_midway(obj, f):
        f.write(b"PK\x03\x04 partial bytes of a zip archive")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(checkpoint.torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"weight": torch.zeros(4)}, path)
    monkeypatch.undo()
    assert torch.equal(load_weights_only(path)["weight"], torch.arange(4.0))
    assert os.listdir(tmp_path) == ["checkpoint.pth"]  # no temporary file left behind


def test_sigkill_during_writes_never_corrupts_the_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pth"
    writer = textwrap.dedent(f"""
        import torch
        from twist.engine.checkpoint import atomic_torch_save
        i = 0
        while True:
            atomic_torch_save({{"step": i, "weights": torch.full((4_000_000,), float(i))}}, {str(path)!r})
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer])
    try:
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.7)  # several writes in, most likely in the middle of one
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = load_weights_only(str(path))
    assert torch.all(state["weights"] == state["step"])


def test_weights_only_refuses_pickled_objects_and_names_the_file(tmp_path):
    import argparse

    path = str(tmp_path / "authors.pth")
    torch.save({"args": argparse.Namespace(lr=0.5), "model": {}}, path)
    with pytest.raises(CheckpointError, match="authors.pth"):
        load_weights_only(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_truncated_or_garbage_files_give_clear_errors(tmp_path, content):
    path = str(tmp_path / "broken.pth")
    if content is None:  # a real checkpoint cut in half
        torch.save({"w": torch.randn(1000)}, path)
        data = open(path, "rb").read()
        content = data[: len(data) // 2]
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_weights_only(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights_only(str(tmp_path / "missing.pth"))
