"""Where a run reports: a JSON-lines log, TensorBoard scalars, optionally Weights & Biases, and a
training-curve plot."""
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

    def __init__(self, output_dir: str, tensorboard: bool = True, continue_from: int | None = None,
                 wandb: "WandbRun | None" = None):
        self.path = os.path.join(output_dir, "log.jsonl")
        self._wandb = wandb
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
        if self._wandb is not None:
            self._wandb.log(record)

    def close(self) -> None:
        """Idempotent: a run closes its log before plotting it, and its exit stack closes it again."""
        if self._file.closed:
            return
        with writing(self.path):  # closing flushes what a failed write left in the buffer
            self._file.close()
        if self._writer is not None:
            self._writer.close()
        if self._wandb is not None:
            self._wandb.finish()


class WandbRun:
    """A Weights & Biases run mirroring a run's numeric records, with its resolved config and folder name.

    ``wandb`` is imported here only (the ``wandb`` extra). Offline mode writes the run under
    ``<run folder>/wandb/`` (or ``$WANDB_DIR``) and needs no network; ``wandb sync`` uploads it later.
    Every record's numbers go under ``<kind>/<key>`` against its own ``step`` axis, so a resumed run,
    which logs some steps again, is not refused for steps that go back.
    """

    def __init__(self, settings: dict[str, Any], config: dict[str, Any], run_folder: str, job_type: str):
        try:
            import wandb
        except ImportError:
            from twist.config import ConfigError

            raise ConfigError("logging.wandb needs the wandb package: pip install 'twist[wandb]'") from None
        folder = os.path.abspath(run_folder)
        directory = os.environ.get("WANDB_DIR") or folder
        with writing(directory):
            os.makedirs(directory, exist_ok=True)
            self._run = wandb.init(project=settings["wandb_project"], entity=settings["wandb_entity"] or None,
                                   mode=settings["wandb_mode"], dir=directory, name=os.path.basename(folder),
                                   job_type=job_type, config={**config, "run_folder": folder})
        self._run.define_metric("step")
        self._run.define_metric("*", step_metric="step")

    def log(self, record: dict[str, Any]) -> None:
        prefix = record.get("kind", "train")
        values = {f"{prefix}/{key}": value for key, value in record.items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"}
        if values:
            self._run.log({**values, **({"step": record["step"]} if "step" in record else {})})

    def finish(self) -> None:
        self._run.finish()


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


MONITOR_PANELS = {"knn_top1": "kNN monitor top-1", "probe_top1": "online linear probe top-1"}


def curve_panels(monitor_records: list[dict[str, Any]]) -> dict[str, str]:
    """The monitor figures the training-curves plot shows beside the loss: those the run logged."""
    return {key: title for key, title in MONITOR_PANELS.items() if any(key in r for r in monitor_records)}


def plot_training_curves(log_path: str, out_path: str) -> None:
    """Loss and its terms against the step, and the monitors' accuracies, from the records of ``log.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = read_log(log_path)
    records = [r for r in log if r.get("kind") == "train"]
    titles = [("loss", "loss"), ("consistency", "consistency (KL)"), ("sharpness", "sharpness (mean entropy)"),
              ("diversity", "diversity (entropy of mean)"), ("on_diagonal", "on-diagonal (invariance)"),
              ("off_diagonal", "off-diagonal (redundancy)")]
    keys = [(key, title) for key, title in titles if any(key in r for r in records)] or titles[:1]
    monitors = [r for r in log if r.get("kind") == "monitor"]
    panels = [(records, key, title) for key, title in keys] + [(monitors, key, title) for key, title in
                                                               curve_panels(monitors).items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    axes = axes[0]
    for ax, (source, key, title) in zip(axes, panels):
        # Self-labeling steps log their own terms, so a curve stops where its term is no longer used.
        points = [(r["step"], r[key]) for r in source if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(out_path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
