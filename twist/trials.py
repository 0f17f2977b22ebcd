"""Repeated downstream trials: run N seeded trials of one config, read each trial's metrics from the
engine's own output files, and summarise them (mean ± sample std, min, max, per-trial table).

VOC detection and segmentation vary by a few tenths of a point from run to run, so the papers report
the mean of five trials. A trial lives in ``<output_dir>/trial<i>_seed<s>/``. A trial whose
metrics can be read is finished and skipped; one that left a checkpoint is resumed; any other is
started afresh. An engine (detectron2, mmseg) says how to launch a trial and where its metrics are.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

from twist.atomic import atomic_write

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"


class TrialsError(RuntimeError):
    """Trials that could not run, or whose results could not be read or were too few."""


class Engine(Protocol):
    name: str

    def command(self, config: str, weights: str | None, trial_dir: str, seed: int, num_gpus: int, resume: bool,
                overrides: list[str]) -> list[str]: ...

    def can_resume(self, trial_dir: str) -> bool: ...

    def read_metrics(self, trial_dir: str) -> dict[str, float]: ...


# ---- detectron2 ---------------------------------------------------------------------------------------

_COPYPASTE_TASK = re.compile(r"copypaste: Task: (\S+)")
_COPYPASTE_LINE = re.compile(r"copypaste: (.*)$")


def read_detectron2_metrics(trial_dir: str) -> dict[str, float]:
    """``task/metric`` figures (e.g. ``bbox/AP``) of the final evaluation of a detectron2 run.

    From the last record of ``metrics.json`` that holds evaluation keys; failing that, from the last
    ``copypaste`` block of each task in ``log.txt``. Raises :class:`TrialsError` when neither has any.
    """
    metrics_path = os.path.join(trial_dir, "metrics.json")
    if os.path.isfile(metrics_path):
        last: dict[str, float] = {}
        for record in _json_records(metrics_path):
            found = {_task_metric(k): float(v) for k, v in record.items()
                     if _task_metric(k) and isinstance(v, (int, float))}
            if found:
                last = found
        if last:
            return last
    log_path = os.path.join(trial_dir, "log.txt")
    if os.path.isfile(log_path):
        found = _parse_copypaste(open(log_path, encoding="utf-8", errors="replace").read())
        if found:
            return found
    raise TrialsError(f"no evaluation results in '{metrics_path}' or '{log_path}'")


def _json_records(path: str):
    """The JSON objects of a JSON-lines file, skipping a line cut short by a crash."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def _task_metric(key: str) -> str | None:
    """``bbox/AP`` from ``bbox/AP`` or ``voc_2007_test/bbox/AP``; None for training scalars."""
    parts = key.split("/")
    if len(parts) >= 2 and parts[-2] in ("bbox", "segm", "keypoints", "sem_seg") and "-" not in parts[-1]:
        return f"{parts[-2]}/{parts[-1]}"
    return None


def _parse_copypaste(text: str) -> dict[str, float]:
    lines = [m.group(1).strip() for m in map(_COPYPASTE_LINE.search, text.splitlines()) if m]
    found: dict[str, float] = {}
    for i, line in enumerate(lines):
        task = _COPYPASTE_TASK.match("copypaste: " + line)
        if task and i + 2 < len(lines):
            names, values = lines[i + 1].split(","), lines[i + 2].split(",")
            try:
                found.update({f"{task.group(1)}/{n.strip()}": float(v) for n, v in zip(names, values)})
            except ValueError:
                continue
    return found


@dataclass
class Detectron2Engine:
    """Trials through ``detection/train_net.py`` (installed as ``twist_detection.train_net``)."""

    name: str = "detectron2"

    def command(self, config, weights, trial_dir, seed, num_gpus, resume, overrides):
        cmd = [sys.executable, "-m", "twist_detection.train_net", "--config-file", config, "--num-gpus",
               str(num_gpus), "--dist-url", "auto"]
        if resume:
            cmd.append("--resume")
        if weights is None:
            cmd.append("--scratch")
        else:
            cmd += ["MODEL.WEIGHTS", weights]
        return cmd + ["OUTPUT_DIR", trial_dir, "SEED", str(seed), *overrides]

    def can_resume(self, trial_dir):
        return os.path.isfile(os.path.join(trial_dir, "last_checkpoint"))

    def read_metrics(self, trial_dir):
        if not os.path.isfile(os.path.join(trial_dir, "model_final.pth")):
            raise TrialsError(f"'{trial_dir}' has no model_final.pth: the trial did not finish")
        return read_detectron2_metrics(trial_dir)


# ---- mmseg ------------------------------------------------------------------------------------------

SEGMENTATION_METRICS = ("mIoU", "aAcc", "mAcc")


def read_mmseg_metrics(work_dir: str) -> dict[str, float]:
    """mIoU, aAcc and mAcc of the final validation of an mmseg run.

    From ``final_metrics.json`` (written by ``twist_segmentation.train`` when training completes);
    for runs of mmseg's own tools, from the last validation record of the newest
    ``<timestamp>/vis_data/scalars.json``.
    """
    final = os.path.join(work_dir, "final_metrics.json")
    if os.path.isfile(final):
        with open(final, encoding="utf-8") as f:
            metrics = json.load(f).get("metrics", {})
        found = {k: float(metrics[k]) for k in SEGMENTATION_METRICS if k in metrics}
        if found:
            return found
    for scalars in sorted(glob.glob(os.path.join(work_dir, "*", "vis_data", "scalars.json")), reverse=True):
        last: dict[str, float] = {}
        for record in _json_records(scalars):
            if "mIoU" in record:
                last = {k: float(record[k]) for k in SEGMENTATION_METRICS if k in record}
        if last:
            return last
    raise TrialsError(f"no final validation in '{final}' or '{work_dir}/*/vis_data/scalars.json'")


@dataclass
class MMSegEngine:
    """Trials through ``segmentation/train.py`` (installed as ``twist_segmentation.train``); ``key=value``
    overrides go to ``--cfg-options``, other arguments (e.g. ``--data-root DIR``) to the script."""

    name: str = "mmseg"

    def command(self, config, weights, trial_dir, seed, num_gpus, resume, overrides):
        launch = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={num_gpus}"] if num_gpus > 1
                  else [sys.executable])
        cmd = [*launch, "-m", "twist_segmentation.train", config, "--work-dir", trial_dir]
        if num_gpus > 1:
            cmd += ["--launcher", "pytorch"]
        cmd += ["--scratch"] if weights is None else ["--weights", weights]
        if resume:
            cmd.append("--resume")
        options = [o for o in overrides if "=" in o and not o.startswith("-")]
        cmd += [o for o in overrides if o not in options]
        return cmd + ["--cfg-options", f"randomness.seed={seed}", *options]

    def can_resume(self, trial_dir):
        return os.path.isfile(os.path.join(trial_dir, "last_checkpoint"))

    def read_metrics(self, trial_dir):
        return read_mmseg_metrics(trial_dir)


ENGINES: dict[str, type] = {"detectron2": Detectron2Engine, "mmseg": MMSegEngine}


def engine_named(name: str) -> Engine:
    if name not in ENGINES:
        raise TrialsError(f"unknown engine '{name}'; expected one of {', '.join(sorted(ENGINES))}")
    return ENGINES[name]()


# ---- running ------------------------------------------------------------------------------------------

@dataclass
class Trial:
    index: int
    seed: int
    directory: str
    status: str = "pending"        # finished (skipped), ran, failed
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


def trial_dirs(output_dir: str, seeds: list[int]) -> list[Trial]:
    return [Trial(i, s, os.path.join(output_dir, f"trial{i}_seed{s}")) for i, s in enumerate(seeds)]


def run_trials(engine: Engine, config: str, weights: str | None, output_dir: str, seeds: list[int], num_gpus: int = 1,
               overrides: list[str] = (), dry_run: bool = False, echo=print) -> list[Trial]:
    """Run the trials one after another (each may use several GPUs); see the module doc."""
    trials = trial_dirs(output_dir, seeds)
    for trial in trials:
        try:
            trial.metrics = engine.read_metrics(trial.directory)
            trial.status = "finished"
            echo(f"trial {trial.index} (seed {trial.seed}): already finished, skipped")
            continue
        except TrialsError:
            pass
        resume = engine.can_resume(trial.directory)
        cmd = engine.command(config, weights, trial.directory, trial.seed, num_gpus, resume, list(overrides))
        echo(("[dry run] " if dry_run else "") + " ".join(_quote(c) for c in cmd))
        if dry_run:
            continue
        os.makedirs(trial.directory, exist_ok=True)
        with open(os.path.join(trial.directory, "stdout.log"), "ab") as log:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
        try:
            if code != 0:
                raise TrialsError(f"exited with code {code}; see {trial.directory}/stdout.log")
            trial.metrics = engine.read_metrics(trial.directory)
            trial.status = "ran"
            echo(f"trial {trial.index} (seed {trial.seed}): " + ", ".join(f"{k} {v:.2f}" for k, v in trial.metrics.items()))
        except TrialsError as err:
            trial.status, trial.error = "failed", str(err)
            echo(f"trial {trial.index} (seed {trial.seed}) failed: {err}")
    return trials


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


# ---- summarising --------------------------------------------------------------------------------------

def summarise(trials: list[Trial]) -> dict[str, Any]:
    """Per metric over the trials that have it: mean, sample std (n-1), min, max, n and the values."""
    ok = [t for t in trials if t.metrics]
    names = sorted({name for t in ok for name in t.metrics}, key=_metric_order)
    metrics = {}
    for name in names:
        values = [t.metrics[name] for t in ok if name in t.metrics]
        metrics[name] = {"mean": statistics.fmean(values),
                         "std": statistics.stdev(values) if len(values) > 1 else float("nan"),
                         "min": min(values), "max": max(values), "n": len(values), "values": values}
    return {"num_trials": len(trials), "num_succeeded": len(ok), "metrics": metrics,
            "trials": [{"trial": t.index, "seed": t.seed, "directory": t.directory, "status": t.status,
                        "metrics": t.metrics, **({"error": t.error} if t.error else {})} for t in trials]}


def _metric_order(name: str) -> tuple:
    task, _, metric = name.rpartition("/")
    order = ["AP", "AP50", "AP75", "APs", "APm", "APl", "mIoU", "aAcc", "mAcc"]
    return (task, order.index(metric) if metric in order else len(order), metric)


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def summary_markdown(summary: dict[str, Any], title: str) -> str:
    metrics = summary["metrics"]
    lines = [f"# {title}", "", f"{summary['num_succeeded']} of {summary['num_trials']} trials succeeded; "
             f"mean ± sample standard deviation over them.", "",
             "| metric | mean ± std | min | max | n |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {_fmt(m['mean'])} ± {_fmt(m['std'])} | {_fmt(m['min'])} | {_fmt(m['max'])} | {m['n']} |"
              for name, m in metrics.items()]
    names = list(metrics)
    lines += ["", "| trial | seed | status | " + " | ".join(names) + " |",
              "|---:|---:|---|" + "---:|" * len(names)]
    for t in summary["trials"]:
        cells = [_fmt(t["metrics"].get(n)) if n in t["metrics"] else "—" for n in names]
        lines.append(f"| {t['trial']} | {t['seed']} | {t['status']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(output_dir: str, trials: list[Trial], title: str) -> dict[str, Any]:
    summary = summarise(trials)
    atomic_write(os.path.join(output_dir, SUMMARY_JSON), lambda f: json.dump(summary, f, indent=2), binary=False)
    atomic_write(os.path.join(output_dir, SUMMARY_MD), lambda f: f.write(summary_markdown(summary, title)),
                 binary=False)
    return summary


def collect_trials(engine: Engine, output_dir: str) -> list[Trial]:
    """The trials found in ``output_dir`` (folders ``trial<i>_seed<s>``), with whatever metrics they have."""
    found = []
    for path in glob.glob(os.path.join(output_dir, "trial*_seed*")):
        match = re.fullmatch(r"trial(\d+)_seed(-?\d+)", os.path.basename(path))
        if match and os.path.isdir(path):
            found.append(Trial(int(match.group(1)), int(match.group(2)), path))
    if not found:
        raise TrialsError(f"'{output_dir}' holds no trial folders (trial<i>_seed<s>)")
    for trial in sorted(found, key=lambda t: t.index):
        try:
            trial.metrics, trial.status = engine.read_metrics(trial.directory), "finished"
        except TrialsError as err:
            trial.status, trial.error = "failed", str(err)
    return sorted(found, key=lambda t: t.index)
