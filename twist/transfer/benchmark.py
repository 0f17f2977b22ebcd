"""The transfer benchmark in miniature: from nothing to a table of five-trial means, in one command.

    python -m twist.transfer.benchmark --config configs/transfer/digit_scenes.yaml --output-dir runs/transfer \
        --doc docs/transfer.md

Each step runs the project's own command line, as a user would, and is skipped when its output is
already there, so an interrupted run continues where it stopped:

1. digit scenes (:mod:`twist.transfer.digit_scenes`) under ``OUT/data``;
2. per initialisation, its pretraining (``twist-train``, or ``twist-eval semisup --random-init`` for
   the supervised one) under ``OUT/pretrain/<name>``;
3. its conversion (``twist-convert --to mmseg`` / ``--to detectron2``) under ``OUT/weights``;
4. the trials (``twist-trials run``, ``--scratch`` for the random initialisation) of each protocol
   the config's ``default_protocols`` names (or ``--protocols``) under ``OUT/<protocol>/<name>``; a
   protocol of the ``detectron2`` engine runs only when Detectron2 is installed, and the report says
   so when not;
5. the report: every initialisation's mean ± sample std over its trials, a bar chart with error
   bars, the command and the machine, written to ``OUT/transfer.md`` (and ``--doc``). An
   initialisation with a failed trial is reported as failed, never averaged over fewer trials.

With ``--jobs N`` the initialisations' chains (steps 2 to 4) run N at a time, each step's command
with the machine's cores shared out (``OMP_NUM_THREADS``): on a 2-core machine two one-thread
fine-tunings at 64 px get through 1.25x the images of one two-thread fine-tuning (docs/transfer_notes.md).
Each chain writes only its own folders; the one process that runs them keeps ``timings.json``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from twist.atomic import atomic_write
from twist.engine.machine_speed import bare_resnet18_rate

SCENES_DONE = "scenes.json"
TIMINGS = "timings.json"
WALL = "wall.json"


class TransferError(RuntimeError):
    """A step of the benchmark that failed, or a benchmark config that is wrong."""


@dataclass
class Initialisation:
    name: str
    pretrain: str | None = None      # a twist-train config
    supervised: str | None = None    # a twist-eval semisup config, run with --random-init
    overrides: tuple[str, ...] = ()  # this initialisation's own, after the section-wide ones

    @property
    def scratch(self) -> bool:
        return self.pretrain is None and self.supervised is None


@dataclass(frozen=True)
class Protocol:
    """A downstream protocol of the config's ``protocols`` section: its trials go to ``OUT/<name>/<init>``."""

    name: str
    title: str
    engine: str          # the twist-trials engine, which is also the conversion target
    config: str
    overrides: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return ENGINE_COLUMNS[self.engine][0]

    @property
    def metric(self) -> str:
        """The figure the bar chart shows."""
        return ENGINE_COLUMNS[self.engine][1]


@dataclass
class Benchmark:
    scenes: dict[str, int]
    trials: int
    pretrain_overrides: list[str]
    supervised_overrides: list[str]
    initialisations: list[Initialisation]
    protocols: list[Protocol]
    default_protocols: list[str]   # the names a run without --protocols runs

    def chosen(self, names: list[str] | None, where: str = "--protocols") -> list[Protocol]:
        """The protocols ``names`` gives (the config's ``default_protocols`` when None), in the config's order."""
        names = self.default_protocols if names is None else names
        known = {p.name for p in self.protocols}
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise TransferError(f"{where}: expected some of the config's protocols {sorted(known)}, not "
                                f"{unknown or names}")
        return [p for p in self.protocols if p.name in names]


SEGMENTATION_COLUMNS = ("mIoU", "mAcc", "aAcc")
DETECTION_COLUMNS = ("bbox/AP", "bbox/AP50", "bbox/AP75")
ENGINE_COLUMNS = {"mmseg": (SEGMENTATION_COLUMNS, "mIoU"), "detectron2": (DETECTION_COLUMNS, "bbox/AP50")}
TOP_KEYS = {"scenes", "trials", "pretrain_overrides", "supervised_overrides", "initialisations", "protocols",
            "default_protocols"}
PROTOCOL_KEYS = {"title", "engine", "config", "overrides"}


def override_words(where: str, value: Any) -> tuple[str, ...]:
    """A config section's overrides: a list of words (or nothing), refused by name otherwise."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise TransferError(f"{where}: expected a list of the config's overrides, not {value!r}")
    return tuple(str(word) for word in value)


def load_protocols(path: str, raw: Any) -> list[Protocol]:
    if not isinstance(raw, dict) or not raw:
        raise TransferError(f"{path}: protocols must map each protocol's name to its title, engine, config and "
                            f"overrides, not {raw!r}")
    protocols = []
    for name, spec in raw.items():
        where = f"{path}: protocols.{name}"
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise TransferError(f"{where}: a protocol's name is its folder: letters, digits, '_' and '-' only")
        if not isinstance(spec, dict) or set(spec) != PROTOCOL_KEYS:
            found = sorted(spec) if isinstance(spec, dict) else spec
            raise TransferError(f"{where}: expected the keys {sorted(PROTOCOL_KEYS)}, found {found}")
        if spec["engine"] not in ENGINE_COLUMNS:
            raise TransferError(f"{where}.engine: expected one of {sorted(ENGINE_COLUMNS)}, not {spec['engine']!r}")
        protocols.append(Protocol(name, str(spec["title"]), spec["engine"], str(spec["config"]),
                                  override_words(f"{where}.overrides", spec["overrides"])))
    return protocols


def load_benchmark(path: str) -> Benchmark:
    """Read a benchmark config (see ``configs/transfer/digit_scenes.yaml``), naming the key that is wrong."""
    if not os.path.isfile(path):
        raise TransferError(f"benchmark config '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict) or set(raw) != TOP_KEYS:
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise TransferError(f"{path}: expected the keys {sorted(TOP_KEYS)}, found {found}")
    inits = []
    for name, spec in raw["initialisations"].items():
        spec = spec or {}
        sources = set(spec) & {"pretrain", "supervised"}
        if set(spec) - {"pretrain", "supervised", "overrides"} or len(sources) > 1 or (
                "overrides" in spec and not sources):
            raise TransferError(f"{path}: initialisations.{name} takes one of 'pretrain' or 'supervised' (or "
                                f"nothing, for random weights) and, beside either, 'overrides'; not {sorted(spec)}")
        inits.append(Initialisation(name, spec.get("pretrain"), spec.get("supervised"),
                                    override_words(f"{path}: initialisations.{name}.overrides", spec.get("overrides"))))
    from twist.transfer.digit_scenes import SceneSpec

    spec_keys = set(SceneSpec.__dataclass_fields__)
    scenes = raw["scenes"] if isinstance(raw["scenes"], dict) else {}
    if not {"train", "val", "seed"} <= set(scenes) or set(scenes) - {"train", "val", "seed"} - spec_keys:
        raise TransferError(f"{path}: scenes takes train, val and seed, and optionally {sorted(spec_keys)}; found "
                            f"{sorted(scenes) if scenes else raw['scenes']!r}")
    if not isinstance(raw["trials"], int) or raw["trials"] < 2:
        raise TransferError(f"{path}: trials must be an integer of at least 2 (a spread needs two), not "
                            f"{raw['trials']!r}")
    defaults = raw["default_protocols"]
    if not isinstance(defaults, list):
        raise TransferError(f"{path}: default_protocols must list the protocols a plain run runs, not {defaults!r}")
    bench = Benchmark(raw["scenes"], raw["trials"], list(override_words(f"{path}: pretrain_overrides",
                                                                        raw["pretrain_overrides"])),
                      list(override_words(f"{path}: supervised_overrides", raw["supervised_overrides"])), inits,
                      load_protocols(path, raw["protocols"]), [str(name) for name in defaults])
    bench.chosen(None, f"{path}: default_protocols")
    return bench


def detectron2_available() -> bool:
    try:
        import detectron2  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Runner:
    """Runs the steps' commands, each logged to its own file, and stops the benchmark when one fails.

    Each finished step's time is added to ``OUT/timings.json`` at once, so that a benchmark run over
    several invocations still reports what all of its steps took.
    """

    output_dir: str
    echo: Callable[[str], None] = print
    threads: int | None = None   # each command's OMP_NUM_THREADS (None: the environment's)

    timings: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # chains run side by side call run()

    def __post_init__(self):
        if os.path.isfile(self.timings_path):
            with open(self.timings_path, encoding="utf-8") as f:
                self.timings = json.load(f)

    @property
    def timings_path(self) -> str:
        return os.path.join(self.output_dir, TIMINGS)

    def run(self, what: str, cmd: list[str], log_name: str, env: dict[str, str] | None = None) -> None:
        log_path = os.path.join(self.output_dir, "logs", log_name)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        self.echo(f"{what}: {' '.join(cmd)}")
        threads = {} if self.threads is None else {"OMP_NUM_THREADS": str(self.threads),
                                                   "MKL_NUM_THREADS": str(self.threads)}
        start = time.perf_counter()
        with open(log_path, "ab") as log:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **threads, **(env or {})}).returncode
        with self.lock:
            # added up: a step that a later invocation resumes (or finds done) costs what every invocation spent on it
            self.timings[what] = self.timings.get(what, 0.0) + time.perf_counter() - start
            if code != 0:
                raise TransferError(f"{what} failed with exit code {code}; see {log_path}")
            atomic_write(self.timings_path, lambda f: json.dump(self.timings, f, indent=2), binary=False)
        self.echo(f"{what}: done in {time.perf_counter() - start:.0f} s")


def scene_spec(scenes: dict[str, Any]):
    """The :class:`SceneSpec` of the config's ``scenes`` section: its keys other than train, val and seed."""
    from twist.transfer.digit_scenes import SceneSpec

    drawn = {k: tuple(v) if isinstance(v, list) else v for k, v in scenes.items() if k not in ("train", "val", "seed")}
    return SceneSpec(**drawn)


def make_scenes(bench: Benchmark, data_dir: str, echo: Callable[[str], None]) -> dict[str, Any]:
    from twist.transfer.digit_scenes import write_digit_scenes

    done = os.path.join(data_dir, SCENES_DONE)
    if os.path.isfile(done):
        with open(done, encoding="utf-8") as f:
            written = json.load(f)
        if written["spec"] == bench.scenes:
            return written
        raise TransferError(f"'{data_dir}' holds scenes made with {written['spec']}, not the config's "
                            f"{bench.scenes}: use another --output-dir")
    echo(f"scenes: writing {bench.scenes['train']} train and {bench.scenes['val']} val scenes under {data_dir}")
    paths = write_digit_scenes(data_dir, bench.scenes["train"], bench.scenes["val"], scene_spec(bench.scenes),
                               seed=bench.scenes["seed"])
    written = {"spec": bench.scenes, **paths}
    atomic_write(done, lambda f: json.dump(written, f, indent=2), binary=False)
    return written


def pretrain(init: Initialisation, bench: Benchmark, runner: Runner) -> str | None:
    """The checkpoint that initialisation ``init`` starts from (None for random weights)."""
    if init.scratch:
        return None
    out = os.path.join(runner.output_dir, "pretrain", init.name)
    checkpoint = os.path.join(out, "checkpoint.pth")
    if init.pretrain:
        if not os.path.isfile(os.path.join(out, "backbone.pth")):
            runner.run(f"pretrain {init.name}", [sys.executable, "-m", "twist.cli.train", "--config", init.pretrain,
                                                 "--output-dir", out, "train.progress_bar=false",
                                                 *bench.pretrain_overrides, *init.overrides],
                       f"pretrain_{init.name}.log")
        return checkpoint
    if not os.path.isfile(os.path.join(out, "results.json")):
        runner.run(f"pretrain {init.name}", [sys.executable, "-m", "twist.cli.eval", "semisup", "--random-init",
                                             "--config", init.supervised, "--output-dir", out,
                                             "progress_bar=false", *bench.supervised_overrides, *init.overrides],
                   f"pretrain_{init.name}.log")
    return checkpoint


def convert(init: Initialisation, checkpoint: str | None, target: str, runner: Runner) -> str | None:
    if checkpoint is None:
        return None
    suffix = ".pkl" if target == "detectron2" else ".pth"
    out = os.path.join(runner.output_dir, "weights", f"{init.name}_{target}{suffix}")
    if not os.path.isfile(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        runner.run(f"convert {init.name} to {target}", [sys.executable, "-m", "twist.cli.convert", "--to", target,
                                                        checkpoint, out], f"convert_{init.name}_{target}.log")
    return out


def run_trials(init: Initialisation, weights: str | None, protocol: Protocol, bench: Benchmark, runner: Runner,
               scenes: dict[str, Any]) -> str:
    """The trials of one initialisation under one protocol; returns their folder (holding summary.json)."""
    task, engine = protocol.name, protocol.engine
    out = os.path.join(runner.output_dir, task, init.name)
    if os.path.isfile(os.path.join(out, "summary.json")):
        done = read_summary(out)
        if done["num_trials"] == done["num_succeeded"] == bench.trials:
            return out  # every trial done: a rerun retries only failed or missing ones, so there is nothing to run
    cmd = [sys.executable, "-m", "twist.cli.trials", "run", "--engine", engine, "--config", protocol.config,
           "--trials", str(bench.trials), "--output-dir", out]
    cmd += ["--scratch"] if weights is None else ["--weights", weights]
    overrides = list(protocol.overrides)
    env = None
    if engine == "mmseg":
        cmd += ["--", "--data-root", scenes["voc"], *overrides]
    else:  # detection/digit_scenes.py registers the scenes from Detectron2's dataset root
        import torch

        cmd += (["MODEL.DEVICE", "cpu"] if not torch.cuda.is_available() else []) + overrides
        env = {"DETECTRON2_DATASETS": os.path.dirname(os.path.dirname(scenes["voc"]))}
    runner.run(f"{task} {init.name}", cmd, f"{task}_{init.name}.log", env)
    return out


# ---- the report ---------------------------------------------------------------------------------------


def read_summary(trials_dir: str) -> dict[str, Any]:
    """The trials' summary.json; an initialisation with any failed trial is reported as failed."""
    path = os.path.join(trials_dir, "summary.json")
    if not os.path.isfile(path):
        raise TransferError(f"'{path}' does not exist: the trials did not finish")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def row_cells(summary: dict[str, Any], columns: tuple[str, ...]) -> list[str]:
    if summary["num_succeeded"] != summary["num_trials"]:
        failed = summary["num_trials"] - summary["num_succeeded"]
        return [f"failed ({failed} of {summary['num_trials']} trials)"] + [""] * (len(columns) - 1)
    cells = []
    for name in columns:
        m = summary["metrics"].get(name)
        cells.append("—" if m is None else f"{m['mean']:.1f} ± {m['std']:.1f}")
    return cells


def machine_description(jobs: int, threads: int | None) -> str:
    import platform

    import torch

    model = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    how = (f"{jobs} jobs side by side at {threads} thread{'s' if threads != 1 else ''} each" if jobs > 1
           else f"{threads or torch.get_num_threads()} threads")
    return (f"{model}, {os.cpu_count()} cores, torch {torch.__version__} on {how}, "
            f"Python {platform.python_version()}")


def bar_chart(rows: list[tuple[str, dict[str, Any]]], metric: str, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, s in rows if metric in s["metrics"] and s["num_succeeded"] == s["num_trials"]]
    means = [s["metrics"][metric]["mean"] for name, s in rows if name in names]
    stds = [s["metrics"][metric]["std"] for name, s in rows if name in names]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(names, means, yerr=stds, capsize=5, color="#4c72b0")
    ax.set_ylabel(f"{metric} (mean ± sample std)")
    ax.set_title(f"digit scenes, {title.lower()}: {metric}")
    for x, (m, s) in enumerate(zip(means, stds)):
        ax.text(x, m + s + 0.5, f"{m:.1f}", ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(bench: Benchmark, protocols: list[Protocol], results: dict[str, list[tuple[str, dict[str, Any]]]],
                 out_dir: str, command: str, machine: str, rate: float, took: str, doc: str | None,
                 pending: list[str] = ()) -> str:
    """``OUT/transfer.md`` (and ``doc``): the table, the chart, the command and the machine, and the
    initialisations not run yet, if any."""
    lines = ["# Transfer in miniature: digit scenes", "",
             f"Mean ± sample standard deviation over {bench.trials} trials per initialisation "
             f"({bench.scenes['train']} train and {bench.scenes['val']} val scenes). Written by", "",
             f"    {command}", "",
             f"on {machine} (bare ResNet-18 training at 64 px: {rate:.0f} images/s), in {took}.", ""]
    if pending:
        lines += [f"**Not finished yet:** {', '.join(pending)} (the command above, without --report-only, "
                  "continues where the run stopped).", ""]
    charts = []
    for protocol in protocols:
        rows = results.get(protocol.name)
        if rows is None:
            lines += [f"## {protocol.title}", "", "Not run: Detectron2 is not installed.", ""]
            continue
        columns = protocol.columns
        lines += [f"## {protocol.title} ({protocol.config})", "",
                  "| initialisation | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        lines += [f"| {name} | " + " | ".join(row_cells(summary, columns)) + " |" for name, summary in rows]
        chart = f"transfer_{protocol.name}.png"
        bar_chart(rows, protocol.metric, protocol.title, os.path.join(out_dir, chart))
        charts.append(chart)
        lines += ["", f"![{protocol.metric} per initialisation]({chart})", ""]
    text = "\n".join(lines) + "\n"
    report = os.path.join(out_dir, "transfer.md")
    atomic_write(report, lambda f: f.write(text), binary=False)
    if doc:
        import shutil

        doc_dir = os.path.dirname(os.path.abspath(doc))
        for chart in charts:
            shutil.copyfile(os.path.join(out_dir, chart), os.path.join(doc_dir, chart))
        atomic_write(doc, lambda f: f.write(text), binary=False)
    return report


def how_long(timings: dict[str, float], walls: list[float]) -> str:
    """The report's account of the time: wall-clock per invocation that ran a step, and the steps' sum."""
    steps = f"its steps' times summed: {sum(timings.values()) / 60:.0f} minutes"
    if not walls:
        return f"no invocation that ran a step ({steps})"
    spread = "1 invocation" if len(walls) == 1 else f"{len(walls)} invocations: " + " + ".join(
        f"{w / 60:.0f}" for w in walls)
    return f"{sum(walls) / 60:.0f} minutes of wall-clock time ({spread}; {steps})"


def run_chain(init: Initialisation, bench: Benchmark, protocols: list[Protocol], runner: Runner,
              scenes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One initialisation's pretraining, conversions and trials: its summary per protocol."""
    checkpoint = pretrain(init, bench, runner)
    summaries = {}
    for protocol in protocols:
        weights = convert(init, checkpoint, protocol.engine, runner)
        summaries[protocol.name] = read_summary(run_trials(init, weights, protocol, bench, runner, scenes))
    return summaries


def run_chains(bench: Benchmark, protocols: list[Protocol], runner: Runner, scenes: dict[str, Any],
               jobs: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Every initialisation's chain, ``jobs`` at a time. When one fails, none is started after it, the
    running ones finish, and the first failure is raised (any other is echoed)."""
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_chain, init, bench, protocols, runner, scenes): init.name
                   for init in bench.initialisations}
        done, not_done = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            for future in not_done:
                future.cancel()
            wait(not_done)
            failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
            for future in failed[1:]:
                runner.echo(f"also failed: {future.exception()}")
            raise failed[0].exception()
    return {name: future.result() for future, name in futures.items()}


def run_benchmark(config: str, output_dir: str, doc: str | None = None, echo: Callable[[str], None] = print,
                  command: str = "", report_only: bool = False, protocols: list[str] | None = None,
                  jobs: int = 1) -> str:
    """Every step of the module doc; returns the report's path. ``protocols``: the names to run (the
    config's ``default_protocols`` when None); ``jobs``: initialisations run side by side.
    ``report_only``: run nothing, and report the initialisations whose trials have finished, naming
    the others as not run yet."""
    bench = load_benchmark(config)
    chosen = bench.chosen(protocols)
    if jobs < 1:
        raise TransferError(f"--jobs must be at least 1, not {jobs}")
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    os.makedirs(output_dir, exist_ok=True)
    start = time.perf_counter()
    runner = Runner(output_dir, echo, threads)
    rate = bare_resnet18_rate(steps=5, batch=8, size=64)
    echo(f"machine: bare ResNet-18 training at 64 px runs at {rate:.0f} images/s here")
    scenes = make_scenes(bench, os.path.join(output_dir, "data"), echo)
    runnable = [p for p in chosen if p.engine != "detectron2" or detectron2_available()]
    if len(runnable) < len(chosen):
        echo("detection: skipped, Detectron2 is not installed (see the README's detection section)")
    tasks = [p.name for p in runnable]
    results: dict[str, list[tuple[str, dict[str, Any]]]] = {task: [] for task in tasks}
    pending: list[str] = []
    if report_only:
        for init in bench.initialisations:
            finished = [task for task in tasks
                        if os.path.isfile(os.path.join(output_dir, task, init.name, "summary.json"))]
            if finished != tasks:
                pending.append(init.name)
            for task in finished:
                results[task].append((init.name, read_summary(os.path.join(output_dir, task, init.name))))
    else:
        steps_before = dict(runner.timings)
        try:
            chains = run_chains(bench, runnable, runner, scenes, jobs)
        finally:  # an invocation that ran a step (even one that failed) adds its wall-clock time to the run's
            if runner.timings != steps_before:
                add_wall_time(output_dir, time.perf_counter() - start)
        for init in bench.initialisations:
            for task in tasks:
                results[task].append((init.name, chains[init.name][task]))
    return write_report(bench, chosen, results, output_dir, command or f"python -m twist.transfer.benchmark "
                        f"--config {config} --output-dir {output_dir}", machine_description(jobs, threads), rate,
                        how_long(runner.timings, read_wall_times(output_dir)), doc, pending)


def read_wall_times(output_dir: str) -> list[float]:
    path = os.path.join(output_dir, WALL)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def add_wall_time(output_dir: str, seconds: float) -> None:
    walls = [*read_wall_times(output_dir), seconds]
    atomic_write(os.path.join(output_dir, WALL), lambda f: json.dump(walls, f), binary=False)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m twist.transfer.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/transfer/digit_scenes.yaml", help="the benchmark config")
    parser.add_argument("--output-dir", default="runs/transfer", help="every step's outputs; rerun to resume")
    parser.add_argument("--doc", help="also write the report here (e.g. docs/transfer.md), with its charts beside it")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: report the initialisations whose trials have finished, naming the others")
    parser.add_argument("--protocols", nargs="+", metavar="NAME",
                        help="run these of the config's protocols (default: its default_protocols)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="initialisations run side by side, the cores shared out between them (default 1)")
    args = parser.parse_args(argv)
    command = " ".join(["python -m twist.transfer.benchmark", *(argv if argv is not None else sys.argv[1:])])
    try:
        report = run_benchmark(args.config, args.output_dir, args.doc, command=command, report_only=args.report_only,
                               protocols=args.protocols, jobs=args.jobs)
    except TransferError as err:
        print(f"transfer: error: {err}", file=sys.stderr)
        return 2
    print(open(report, encoding="utf-8").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
