"""A run killed after its last checkpoint logged steps that its weights no longer hold; the run that
resumes drops them, so that log.jsonl and TensorBoard hold every step once."""
import json

from tests.conftest import TINY
from twist.config import load_config
from twist.engine.logging import drop_records_after, read_log
from twist.engine.trainer import train


def test_a_resumed_run_logs_each_step_once(tmp_path):
    cfg = load_config(None, TINY)  # 4 steps per epoch, 2 epochs
    train(cfg, str(tmp_path), max_steps=4)
    with open(tmp_path / "log.jsonl", "a", encoding="utf-8") as f:  # what the killed process logged past it
        for step in (5, 6):
            f.write(json.dumps({"kind": "train", "stage": "twist", "step": step, "loss": 99.0}) + "\n")
        f.write('{"kind": "train", "step": 7, "lo')  # cut short by the kill
    train(cfg, str(tmp_path))
    steps = [r["step"] for r in read_log(str(tmp_path / "log.jsonl")) if r["kind"] == "train"]
    assert steps == list(range(1, 9))
    assert 99.0 not in [r.get("loss") for r in read_log(str(tmp_path / "log.jsonl"))]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    loss_steps = [e.step for e in events.Scalars("train/loss")]
    assert loss_steps == list(range(1, 9))


def test_records_without_a_step_are_kept(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"kind": "resume", "step": 2}\n{"kind": "note"}\n{"kind": "train", "step": 3}\n')
    assert drop_records_after(str(path), 2) == 1
    assert [r["kind"] for r in read_log(str(path))] == ["resume", "note"]
