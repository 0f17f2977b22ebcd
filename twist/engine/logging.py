"""Where a run reports: a JSON-lines log, TensorBoard scalars and a training-curve plot."""
from __future__ import annotations

import json
import os
from typing import Any

from twist.atomic import atomic_write, writing


class RunLog:
    """Appends one JSON object per line to ``log.jsonl`` and mirrors numbers to TensorBoard."""

    def __init__(self, output_dir: str, tensorboard: bool = True):
        self.path = os.path.join(output_dir, "log.jsonl")
        with writing(self.path):
            self._file = open(self.path, "a", encoding="utf-8")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tensorboard_dir = os.path.join(output_dir, "tensorboard")
            with writing(tensorboard_dir):
                self._writer = SummaryWriter(log_dir=tensorboard_dir)

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
