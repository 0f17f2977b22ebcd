"""Where a run reports: a JSON-lines log, TensorBoard scalars and a training-curve plot."""
from __future__ import annotations

import json
import os
from typing import Any

from twist.atomic import atomic_write, writing


class RunLog:
    """Appends one JSON object per line to ``log.jsonl`` and mirrors numbers to TensorBoard.

    ``continue_from`` is the step the run's weights are at (0 for a fresh start, the checkpoint's step
    on resume): what an earlier process logged beyond it, before it was killed, no longer describes
    these weights and is dropped, from ``log.jsonl`` (rewritten atomically) and from TensorBoard
    (``purge_step``), so that every step is logged once.
    """

    def __init__(self, output_dir: str, tensorboard: bool = True, continue_from: int | None = None):
        self.path = os.path.join(output_dir, "log.jsonl")
        if continue_from is not None and os.path.isfile(self.path):
            drop_records_after(self.path, continue_from)
        with writing(self.path):
            self._file = open(self.path, "a", encoding="utf-8")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tensorboard_dir = os.path.join(output_dir, "tensorboard")
            purge = None if continue_from is None else continue_from + 1
            with writing(tensorboard_dir):
                self._writer = SummaryWriter(log_dir=tensorboard_dir, purge_step=purge)

    def write(self, record: dict[str, Any]) -> None:
        with writing(self.path):
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._writer is not None and "step" in record:
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "epoch"):
                    self._writer.add_scalar(f"{prefix}/{key}", value, record["step"])
            self._writer.flush()

    def close(self) -> None:
        with writing(self.path):  # closing flushes what a failed write left in the buffer
            self._file.close()
        if self._writer is not None:
            self._writer.close()


def drop_records_after(path: str, step: int) -> int:
    """Rewrite the log without the records of steps after ``step`` (and a last line cut short); returns how
    many were dropped."""
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the last line of a process killed mid-write
                dropped += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
                dropped += 1
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        atomic_write(path, lambda f: f.writelines(kept), binary=False)
    return dropped


def read_log(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training_curves(log_path: str, out_path: str) -> None:
    """Loss and its three terms against the step, from the step records of ``log.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_log(log_path) if r.get("kind") == "train"]
    titles = [("loss", "loss"), ("consistency", "consistency (KL)"), ("sharpness", "sharpness (mean entropy)"),
              ("diversity", "diversity (entropy of mean)"), ("on_diagonal", "on-diagonal (invariance)"),
              ("off_diagonal", "off-diagonal (redundancy)")]
    keys = [(key, title) for key, title in titles if any(key in r for r in records)] or titles[:1]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    axes = axes[0]
    for ax, (key, title) in zip(axes, keys):
        # Self-labeling steps log their own terms, so a curve stops where its term is no longer used.
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(out_path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
