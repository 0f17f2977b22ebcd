"""Repeated downstream trials: run N seeded trials of one config, read each trial's metrics from the
engine's own output files, and summarise them (mean ± sample std, min, max, per-trial table).

VOC detection and segmentation vary by a few tenths of a point from run to run, so the papers report
the mean of five trials. A trial lives in ``<output_dir>/trial<i>_seed<s>/``; a run records the
trials it set up, and its setup, in ``<output_dir>/trials.json``, and a summary reads those trials
(or a list the user gives) and no other folder. A trial counts only when its final evaluation is
complete: the last one of a finished run, with every expected metric a number. One that does is
finished and skipped; one that left a checkpoint is resumed; any other is started afresh. An engine
(detectron2, mmseg) says how to launch a trial and where, and how, its final metrics are recorded.
"""
from __future__ import annotations

import ast
import functools
import glob
import hashlib
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
    """Trials that could not run, or a trial whose final metrics are missing or incomplete (the reason)."""


class Engine(Protocol):
    name: str

    def command(self, config: str, weights: str | None, trial_dir: str, seed: int, num_gpus: int, resume: bool,
                overrides: list[str]) -> list[str]: ...

    def can_resume(self, trial_dir: str) -> bool: ...

    def read_metrics(self, trial_dir: str) -> dict[str, float]: ...

    def check_overrides(self, overrides: list[str]) -> None: ...


# ---- reading the engines' files ---------------------------------------------------------------------

@dataclass
class JsonLines:
    """The records of a JSON-lines file, in order, and where lines were cut short: each cut is the number of
    records read before it."""

    records: list[dict[str, Any]]
    cuts: list[int]

    def cut_after(self, index: int) -> bool:
        return any(cut > index for cut in self.cuts)


def read_json_lines(path: str) -> JsonLines:
    """The records of a JSON-lines file and its cut lines. A crash cuts a line short, and a run resumed
    afterwards appends its next record to that very line: that record is recovered from the line's end."""
    records: list[dict[str, Any]] = []
    cuts: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            record = _json_object(line)
            if record is None:
                cuts.append(len(records))
                record = _appended_record(line)
            if record is not None:
                records.append(record)
    return JsonLines(records, cuts)


def _appended_record(line: str) -> dict[str, Any] | None:
    """The whole record at the end of a line that starts with one cut short (the engines' records are flat)."""
    starts = [i for i, char in enumerate(line) if char == "{" and i > 0]
    return next((record for record in map(_json_object, (line[i:] for i in starts)) if record is not None), None)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def check_complete(found: dict[str, float], expected: list[str], where: str) -> None:
    """Every expected metric is there and is a number: a trial missing one, or with a NaN one, does not count."""
    missing = [name for name in expected if name not in found]
    if missing:
        raise TrialsError(f"the final evaluation in '{where}' lacks {', '.join(missing)}")
    not_finite = [f"{name} is {'NaN' if math.isnan(found[name]) else found[name]}" for name in expected
                  if not math.isfinite(found[name])]
    if not_finite:
        raise TrialsError(f"{'; '.join(not_finite)} in the final evaluation in '{where}'")


# ---- detectron2 ---------------------------------------------------------------------------------------

DETECTION_METRICS = ("AP", "AP50", "AP75")
_COPYPASTE_TASK = re.compile(r"copypaste: Task: (\S+)")
_COPYPASTE_LINE = re.compile(r"copypaste: (.*)$")
# IterationTimer, detectron2's first hook, logs this in after_train; EvalHook's final evaluation follows it.
_TRAINING_ENDED = "Total training time:"


def read_detectron2_metrics(trial_dir: str) -> dict[str, float]:
    """``task/metric`` figures (e.g. ``bbox/AP``) of the final evaluation of a detectron2 run, every one there.

    From the last record of ``metrics.json`` that holds evaluation keys, when it is the run's last evaluation: at
    the end of training (SOLVER.MAX_ITER of the ``config.yaml`` detectron2 writes beside it; without that file, at or
    past every iteration on record) and with no line cut short after it. Without evaluation records, from the
    ``copypaste`` blocks of ``log.txt`` logged after training ended. AP, AP50 and AP75 of the boxes (and of the
    masks, for Mask R-CNN) must all be numbers. Raises :class:`TrialsError` saying why the trial does not count.
    """
    max_iter, mask_on = _detectron2_schedule(trial_dir)
    metrics_path, log_path = os.path.join(trial_dir, "metrics.json"), os.path.join(trial_dir, "log.txt")
    found, where = None, metrics_path
    if os.path.isfile(metrics_path):
        found = _final_evaluation_record(read_json_lines(metrics_path), max_iter, metrics_path)
    if found is None and os.path.isfile(log_path):
        found, where = _final_copypaste(log_path), log_path
    if found is None:
        raise TrialsError(f"no evaluation results in '{metrics_path}' or '{log_path}'")
    masks = mask_on if mask_on is not None else any(name.startswith("segm/") for name in found)
    tasks = ("bbox", "segm") if masks else ("bbox",)
    check_complete(found, [f"{task}/{metric}" for task in tasks for metric in DETECTION_METRICS], where)
    return found


def _detectron2_schedule(trial_dir: str) -> tuple[int | None, bool | None]:
    """SOLVER.MAX_ITER and MODEL.MASK_ON of the run's own ``config.yaml``; None for what it does not say."""
    import yaml

    try:
        with open(os.path.join(trial_dir, "config.yaml"), encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None, None
    cfg = cfg if isinstance(cfg, dict) else {}
    max_iter = (cfg.get("SOLVER") or {}).get("MAX_ITER")
    mask_on = (cfg.get("MODEL") or {}).get("MASK_ON")
    return (max_iter if isinstance(max_iter, int) else None), (mask_on if isinstance(mask_on, bool) else None)


def _evaluation_figures(record: dict[str, Any]) -> dict[str, float]:
    return {_task_metric(k): float(v) for k, v in record.items()
            if _task_metric(k) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _final_evaluation_record(lines: JsonLines, max_iter: int | None, path: str) -> dict[str, float] | None:
    evaluations = [i for i, record in enumerate(lines.records) if _evaluation_figures(record)]
    if not evaluations:
        return None
    last = evaluations[-1]
    iteration = lines.records[last].get("iteration")
    if lines.cut_after(last):
        raise TrialsError(f"'{path}': a line after the evaluation at iteration {iteration} is cut short, so the "
                          f"final evaluation may be lost; resume the trial")
    if not isinstance(iteration, int):
        raise TrialsError(f"'{path}': the last evaluation names no iteration, so it cannot be told from an "
                          f"intermediate one")
    # detectron2 files the final evaluation under MAX_ITER - 1 (older versions) or MAX_ITER, intermediate ones below
    if max_iter is not None:
        final, end = max_iter - 1, f"SOLVER.MAX_ITER {max_iter} in config.yaml"
    else:
        final = max((r["iteration"] for r in lines.records if isinstance(r.get("iteration"), int)), default=0)
        end = f"iteration {final}, the last on record"
    if iteration < final:
        raise TrialsError(f"'{path}': the last evaluation is at iteration {iteration}, before the end of training "
                          f"({end}): the final evaluation is missing")
    return _evaluation_figures(lines.records[last])


def _task_metric(key: str) -> str | None:
    """``bbox/AP`` from ``bbox/AP`` or ``voc_2007_test/bbox/AP``; None for training scalars."""
    parts = key.split("/")
    if len(parts) >= 2 and parts[-2] in ("bbox", "segm", "keypoints", "sem_seg") and "-" not in parts[-1]:
        return f"{parts[-2]}/{parts[-1]}"
    return None


def _final_copypaste(log_path: str) -> dict[str, float] | None:
    """The ``copypaste`` blocks logged after training ended; None when the log has none at all."""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")[:-1]  # what follows the last newline is empty, or a line cut short
    if not any(_COPYPASTE_LINE.search(line) for line in lines):
        return None
    ended = max((i for i, line in enumerate(lines) if _TRAINING_ENDED in line), default=len(lines))
    if not any(_COPYPASTE_LINE.search(line) for line in lines[ended:]):
        raise TrialsError(f"'{log_path}' has no evaluation after the end of training ('{_TRAINING_ENDED}'): "
                          f"the final evaluation is missing")
    return _parse_copypaste(lines[ended:])


def _parse_copypaste(log_lines: list[str]) -> dict[str, float]:
    lines = [m.group(1).strip() for m in map(_COPYPASTE_LINE.search, log_lines) if m]
    found: dict[str, float] = {}
    for i, line in enumerate(lines):
        task = _COPYPASTE_TASK.match("copypaste: " + line)
        if task and i + 2 < len(lines):
            names, values = lines[i + 1].split(","), lines[i + 2].split(",")
            try:
                if len(names) == len(values):
                    found.update({f"{task.group(1)}/{n.strip()}": float(v) for n, v in zip(names, values)})
            except ValueError:
                continue
    return found


# What twist-trials sets in each trial's command, and the option of twist-trials that sets it.
_WEIGHTS_OPTIONS = "--weights, --pretrained or --scratch"
DETECTRON2_SET_PER_TRIAL = {"OUTPUT_DIR": "--output-dir", "SEED": "--seeds", "MODEL.WEIGHTS": _WEIGHTS_OPTIONS}
MMSEG_SET_PER_TRIAL = {"--work-dir": "--output-dir", "randomness.seed": "--seeds", "--weights": _WEIGHTS_OPTIONS,
                       "--scratch": _WEIGHTS_OPTIONS, "--resume": "an interrupted trial resumes by itself",
                       "--launcher": "--num-gpus"}


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

    def check_overrides(self, overrides):
        if len(overrides) % 2:
            raise TrialsError(f"detectron2 overrides come in KEY VALUE pairs; got {len(overrides)} words: "
                              f"{' '.join(overrides)}")
        for key in overrides[::2]:
            if key in DETECTRON2_SET_PER_TRIAL:
                raise TrialsError(f"override {key} is set by twist-trials for each trial "
                                  f"({DETECTRON2_SET_PER_TRIAL[key]}); drop it")


# ---- mmseg ------------------------------------------------------------------------------------------

SEGMENTATION_METRICS = ("mIoU", "aAcc", "mAcc")


def read_mmseg_metrics(work_dir: str) -> dict[str, float]:
    """mIoU, aAcc and mAcc of the final validation of an mmseg run, every one a number.

    From ``final_metrics.json`` (written by ``twist_segmentation.train`` when training completes), when its
    iteration is the end of training of the config mmengine dumped into the work directory at the run's start;
    for runs of mmseg's own tools, from the validation record of the newest ``<timestamp>/vis_data/scalars.json``
    at that end. Raises :class:`TrialsError` saying why the trial does not count.
    """
    final = os.path.join(work_dir, "final_metrics.json")
    schedule = _mmseg_max_iters(work_dir)
    if os.path.isfile(final):
        found, where = _final_metrics_file(final, schedule), final
    else:
        found, where = _final_validation_scalars(work_dir, schedule)
    check_complete(found, list(SEGMENTATION_METRICS), where)
    return found


def _mmseg_max_iters(work_dir: str) -> tuple[int, str] | None:
    """``train_cfg.max_iters`` and the file it is from: the newest config mmengine dumped into ``work_dir``.

    The dump is read as Python syntax, never run: ``train_cfg = dict(max_iters=N, ...)``."""
    for path in sorted(glob.glob(os.path.join(work_dir, "*.py")), key=os.path.getmtime, reverse=True):
        try:
            with open(path, encoding="utf-8") as f:
                max_iters = _train_cfg_max_iters(ast.parse(f.read(), path))
        except (OSError, SyntaxError, ValueError):
            continue
        if max_iters is not None:
            return max_iters, path
    return None


def _train_cfg_max_iters(module: ast.Module) -> int | None:
    for node in module.body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "train_cfg" for t in node.targets)
                and isinstance(node.value, ast.Call)):
            for keyword in node.value.keywords:
                value = keyword.value.value if isinstance(keyword.value, ast.Constant) else None
                if keyword.arg == "max_iters" and isinstance(value, int) and not isinstance(value, bool):
                    return value
    return None


def _final_metrics_file(path: str, schedule: tuple[int, str] | None) -> dict[str, float]:
    with open(path, encoding="utf-8") as f:
        record = _json_object(f.read())
    if record is None:
        raise TrialsError(f"'{path}' is not complete JSON (cut short?): the run's end was not recorded")
    iteration = record.get("iteration")
    if schedule is not None and iteration != schedule[0]:
        raise TrialsError(f"'{path}' is from iteration {iteration}, but the run's config ('{schedule[1]}') trains to "
                          f"{schedule[0]}: the final validation is missing")
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _final_validation_scalars(work_dir: str, schedule: tuple[int, str] | None) -> tuple[dict[str, float], str]:
    final = os.path.join(work_dir, "final_metrics.json")
    for scalars in sorted(glob.glob(os.path.join(work_dir, "*", "vis_data", "scalars.json")), reverse=True):
        lines = read_json_lines(scalars)
        validations = [i for i, record in enumerate(lines.records) if "mIoU" in record]
        if not validations:
            continue
        last = lines.records[validations[-1]]
        if lines.cut_after(validations[-1]):
            raise TrialsError(f"'{scalars}': a line after the validation at step {last.get('step')} is cut short, "
                              f"so the final validation may be lost")
        if schedule is None:
            raise TrialsError(f"'{work_dir}' holds neither final_metrics.json nor the config mmengine dumps: "
                              f"cannot tell whether the validation at step {last.get('step')} is the final one")
        if last.get("step") != schedule[0]:
            raise TrialsError(f"'{scalars}': the last validation is at step {last.get('step')}, but the run's config "
                              f"('{schedule[1]}') trains to {schedule[0]}: the final validation is missing")
        return {k: float(last[k]) for k in SEGMENTATION_METRICS if isinstance(last.get(k), (int, float))}, scalars
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

    def check_overrides(self, overrides):
        for word in overrides:
            key = word.split("=", 1)[0]
            if key in MMSEG_SET_PER_TRIAL:
                raise TrialsError(f"'{word}' is set by twist-trials for each trial ({MMSEG_SET_PER_TRIAL[key]}); "
                                  f"drop it")
            if word == "--cfg-options":
                raise TrialsError("give config options as key=value words: twist-trials passes them to --cfg-options")


ENGINES: dict[str, type] = {"detectron2": Detectron2Engine, "mmseg": MMSegEngine}


def engine_named(name: str) -> Engine:
    if name not in ENGINES:
        raise TrialsError(f"unknown engine '{name}'; expected one of {', '.join(sorted(ENGINES))}")
    return ENGINES[name]()


# ---- what a run set up: the manifest --------------------------------------------------------------------

MANIFEST = "trials.json"
TRIAL_FOLDER = re.compile(r"trial(\d+)_seed(-?\d+)")
SETUP_KEYS = ("engine", "config", "weights", "pretrained", "source_sha256", "overrides")


@dataclass
class Trial:
    index: int
    seed: int
    directory: str
    status: str = "pending"        # finished (skipped), ran, failed
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass
class TrialsSetup:
    """What ``run`` was asked for. The manifest records it, and a rerun in the same folder must ask the same:
    trials of two setups must never end up in one summary."""

    engine: str
    config: str
    weights: str | None
    pretrained: str | None = None  # the pretraining checkpoint ``weights`` were converted from
    overrides: list[str] = field(default_factory=list)

    @functools.cached_property
    def source_sha256(self) -> str | None:
        """Of the file the weights come from (``pretrained``, else ``weights``): a file overwritten in place under
        the same name must not have its trials summarised with the old ones."""
        source = self.pretrained or self.weights
        if not source or not os.path.isfile(source):
            return None
        digest = hashlib.sha256()
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        return digest.hexdigest()

    def record(self) -> dict[str, Any]:
        absolute = {k: os.path.abspath(v) if v else None for k, v in
                    (("config", self.config), ("weights", self.weights), ("pretrained", self.pretrained))}
        return {"engine": self.engine, **absolute, "source_sha256": self.source_sha256,
                "overrides": list(self.overrides)}


def trial_dirs(output_dir: str, seeds: list[int]) -> list[Trial]:
    return [Trial(i, s, os.path.join(output_dir, f"trial{i}_seed{s}")) for i, s in enumerate(seeds)]


def write_manifest(output_dir: str, setup: TrialsSetup, trials: list[Trial]) -> None:
    record = {**setup.record(), "trials": [{"index": t.index, "seed": t.seed,
                                            "directory": os.path.basename(t.directory)} for t in trials]}
    atomic_write(os.path.join(output_dir, MANIFEST), lambda f: json.dump(record, f, indent=2), binary=False)


def read_manifest(output_dir: str) -> dict[str, Any] | None:
    """The manifest of ``output_dir``, checked; None when there is none."""
    path = os.path.join(output_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = _json_object(f.read())
    except (OSError, UnicodeDecodeError) as err:
        raise TrialsError(f"cannot read '{path}': {err}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise TrialsError(f"'{path}' is not a trials manifest: {problem}")
    return manifest


def _manifest_problem(manifest: dict[str, Any] | None) -> str:
    if manifest is None:
        return "not a JSON object"
    missing = [key for key in (*SETUP_KEYS, "trials") if key not in manifest]
    if missing:
        return f"no {', '.join(missing)}"
    for entry in manifest["trials"] if isinstance(manifest["trials"], list) else [None]:
        if not (isinstance(entry, dict) and isinstance(entry.get("index"), int) and isinstance(entry.get("seed"), int)
                and TRIAL_FOLDER.fullmatch(str(entry.get("directory")))):
            return f"the trial entry {entry!r} is not {{index, seed, directory: trial<i>_seed<s>}}"
    return ""


def manifest_trials(output_dir: str, manifest: dict[str, Any]) -> list[Trial]:
    return [Trial(e["index"], e["seed"], os.path.join(output_dir, e["directory"])) for e in manifest["trials"]]


def check_setup(setup: TrialsSetup, output_dir: str) -> None:
    """Refuse, before anything runs or is written, what the run would refuse or the engine misread."""
    engine_named(setup.engine).check_overrides(list(setup.overrides))
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise TrialsError(f"--output-dir '{output_dir}' is a file, not a folder")
    manifest = read_manifest(output_dir)
    if manifest is None:
        return
    asked = setup.record()
    changed = [key for key in SETUP_KEYS if manifest[key] != asked[key]]
    if changed:
        raise TrialsError(f"'{os.path.join(output_dir, MANIFEST)}' records trials of another setup: " + "; ".join(
            f"{key} {_shown(manifest[key])} there, {_shown(asked[key])} now" for key in changed)
            + "; use another --output-dir")


def _shown(value: Any) -> str:
    if isinstance(value, list):
        value = " ".join(map(str, value))
    return f"'{value}'" if value else "none"


# ---- running ------------------------------------------------------------------------------------------

def run_trials(setup: TrialsSetup, output_dir: str, seeds: list[int], num_gpus: int = 1, dry_run: bool = False,
               echo=print) -> list[Trial]:
    """Run the trials one after another (each may use several GPUs), having recorded them; see the module doc."""
    check_setup(setup, output_dir)
    engine = engine_named(setup.engine)
    trials = trial_dirs(output_dir, seeds)
    if not dry_run:
        os.makedirs(output_dir, exist_ok=True)
        write_manifest(output_dir, setup, trials)
    for trial in trials:
        _run_trial(engine, setup, trial, num_gpus, dry_run, echo)
    return trials


def _run_trial(engine: Engine, setup: TrialsSetup, trial: Trial, num_gpus: int, dry_run: bool, echo) -> None:
    try:
        trial.metrics = engine.read_metrics(trial.directory)
        trial.status = "finished"
        echo(f"trial {trial.index} (seed {trial.seed}): already finished, skipped")
        return
    except (TrialsError, OSError):
        pass
    resume = engine.can_resume(trial.directory)
    cmd = engine.command(setup.config, setup.weights, trial.directory, trial.seed, num_gpus, resume,
                         list(setup.overrides))
    echo(("[dry run] " if dry_run else "") + " ".join(_quote(c) for c in cmd))
    if dry_run:
        return
    os.makedirs(trial.directory, exist_ok=True)
    with open(os.path.join(trial.directory, "stdout.log"), "ab") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    try:
        if code != 0:
            raise TrialsError(f"exited with code {code}; see {trial.directory}/stdout.log")
        trial.metrics = engine.read_metrics(trial.directory)
        trial.status = "ran"
        echo(f"trial {trial.index} (seed {trial.seed}): " + ", ".join(f"{k} {v:.2f}" for k, v in trial.metrics.items()))
    except (TrialsError, OSError) as err:
        trial.status, trial.error = "failed", str(err)
        echo(f"trial {trial.index} (seed {trial.seed}) failed: {err}")


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


# ---- choosing and reading the trials to summarise -------------------------------------------------------

def declared_trials(output_dir: str, names: list[str]) -> list[Trial]:
    """The trial folders named by the user (``trial<i>_seed<s>``, inside ``output_dir``)."""
    trials = []
    for name in names:
        folder = os.path.basename(os.path.normpath(name))
        match = TRIAL_FOLDER.fullmatch(folder)
        if not match:
            raise TrialsError(f"'{name}' is not a trial folder name (trial<i>_seed<s>)")
        trials.append(Trial(int(match.group(1)), int(match.group(2)), os.path.join(output_dir, folder)))
    repeated = sorted({os.path.basename(t.directory) for t in trials
                       if [u.directory for u in trials].count(t.directory) > 1})
    if repeated:
        raise TrialsError(f"trial folders named twice: {', '.join(repeated)}")
    return trials


def chosen_trials(output_dir: str, names: list[str] | None = None,
                  seeds: list[int] | None = None) -> tuple[list[Trial], dict[str, Any] | None]:
    """The trials to summarise: those named, else those of the given seeds, else those ``run`` recorded in the
    manifest; and the manifest, if there is one."""
    if not os.path.isdir(output_dir):
        raise TrialsError(f"'{output_dir}' is not a folder")
    manifest = read_manifest(output_dir)
    if names:
        return declared_trials(output_dir, names), manifest
    if seeds:
        return trial_dirs(output_dir, seeds), manifest
    if manifest is None:
        raise TrialsError(f"'{output_dir}' has no {MANIFEST} (written by `twist-trials run`): name the trials to "
                          f"summarise with --trials trial0_seed0 trial1_seed1 ... or --seeds 0 1 ...")
    return manifest_trials(output_dir, manifest), manifest


def ignored_folders(output_dir: str, trials: list[Trial]) -> list[str]:
    """Folders of ``output_dir`` that look like trials but are none of ``trials``."""
    chosen = {os.path.basename(t.directory) for t in trials}
    return sorted(name for name in os.listdir(output_dir) if TRIAL_FOLDER.fullmatch(name) and name not in chosen
                  and os.path.isdir(os.path.join(output_dir, name)))


def read_trials(engine: Engine, trials: list[Trial]) -> list[Trial]:
    """Each trial's final metrics; a trial without complete ones is failed, with the reason."""
    for trial in trials:
        try:
            if not os.path.isdir(trial.directory):
                raise TrialsError(f"the trial folder '{trial.directory}' does not exist")
            trial.metrics, trial.status = engine.read_metrics(trial.directory), "finished"
        except (TrialsError, OSError) as err:
            trial.status, trial.error = "failed", str(err)
    return trials


# ---- summarising --------------------------------------------------------------------------------------

def summarise(trials: list[Trial], ignored: list[str] = ()) -> dict[str, Any]:
    """Per metric over the trials that succeeded: mean, sample std (n-1), min, max, n and the values; and,
    before all that, which trials failed and why."""
    counted = [t for t in trials if t.status != "failed" and t.metrics]
    failed = [t for t in trials if t not in counted]
    names = sorted({name for t in counted for name in t.metrics}, key=_metric_order)
    return {"num_trials": len(trials), "num_failed": len(failed),
            "failed": [{"trial": t.index, "seed": t.seed, "directory": t.directory, "error": t.error or "did not run"}
                       for t in failed],
            "num_succeeded": len(counted),
            "metrics": {name: _statistics([t.metrics[name] for t in counted if name in t.metrics]) for name in names},
            "ignored": list(ignored),
            "trials": [{"trial": t.index, "seed": t.seed, "directory": t.directory, "status": t.status,
                        "metrics": t.metrics, **({"error": t.error} if t.error else {})} for t in trials]}


def _statistics(values: list[float]) -> dict[str, Any]:
    """Over the finite values: a metric that may be empty (COCO's APl on a split without large objects) is NaN in
    some trials, and those are left out of its figures and its n, not of the table."""
    finite = [v for v in values if math.isfinite(v)]
    nan = float("nan")
    return {"mean": statistics.fmean(finite) if finite else nan,
            "std": statistics.stdev(finite) if len(finite) > 1 else nan,
            "min": min(finite, default=nan), "max": max(finite, default=nan), "n": len(finite), "values": values}


def _metric_order(name: str) -> tuple:
    task, _, metric = name.rpartition("/")
    order = ["AP", "AP50", "AP75", "APs", "APm", "APl", "mIoU", "aAcc", "mAcc"]
    return (task, order.index(metric) if metric in order else len(order), metric)


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _trials(count: int) -> str:
    return f"{count} trial{'' if count == 1 else 's'}"


def summary_heading(summary: dict[str, Any], title: str) -> list[str]:
    """The title, and what the figures are over; a failed trial is said first, with its reason."""
    failed, succeeded = summary["failed"], summary["num_succeeded"]
    if not failed:
        return [f"# {title}", "", f"All {_trials(summary['num_trials'])} succeeded; mean ± sample standard "
                                  f"deviation over them."]
    over = (f"Mean ± sample standard deviation over the {_trials(succeeded)} that succeeded; the failed ones are not "
            f"in it." if succeeded else "No trial succeeded: there is nothing to average.")
    return [f"# {title}: {len(failed)} of {_trials(summary['num_trials'])} failed", "",
            *[f"- trial {f['trial']} (seed {f['seed']}): {f['error']}" for f in failed], "", over]


def summary_markdown(summary: dict[str, Any], title: str) -> str:
    metrics = summary["metrics"]
    lines = [*summary_heading(summary, title), "", "| metric | mean ± std | min | max | n |",
             "|---|---:|---:|---:|---:|"]
    for name, m in metrics.items():
        not_finite = len(m["values"]) - m["n"]
        n = f"{m['n']}" + (f" ({not_finite} NaN left out)" if not_finite else "")
        lines.append(f"| {name} | {_fmt(m['mean'])} ± {_fmt(m['std'])} | {_fmt(m['min'])} | {_fmt(m['max'])} | {n} |")
    names = list(metrics)
    lines += ["", "| trial | seed | status | " + " | ".join(names) + " |",
              "|---:|---:|---|" + "---:|" * len(names)]
    for t in summary["trials"]:
        cells = [_fmt(t["metrics"].get(n)) if n in t["metrics"] else "—" for n in names]
        lines.append(f"| {t['trial']} | {t['seed']} | {t['status']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null: strict JSON has no NaN, and readers of summary.json may be strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_summary(output_dir: str, trials: list[Trial], title: str, ignored: list[str] = ()) -> dict[str, Any]:
    summary = summarise(trials, ignored)
    atomic_write(os.path.join(output_dir, SUMMARY_JSON),
                 lambda f: json.dump(_json_safe(summary), f, indent=2, allow_nan=False), binary=False)
    atomic_write(os.path.join(output_dir, SUMMARY_MD), lambda f: f.write(summary_markdown(summary, title)),
                 binary=False)
    return summary
