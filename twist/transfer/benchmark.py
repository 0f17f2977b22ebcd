"""The transfer benchmark in miniature: from nothing to a table of five-trial means, in one command.

    python -m twist.transfer.benchmark --config configs/transfer/digit_scenes.yaml --output-dir runs/transfer \
        --doc docs/transfer.md --jobs 2

Each step runs the project's own command line, as a user would, and is skipped when its output is
already there, so an interrupted run continues where it stopped:

1. digit scenes (:mod:`twist.transfer.digit_scenes`) under ``OUT/data``;
2. per initialisation, its pretraining (``twist-train``, or ``twist-eval semisup --random-init`` for
   the supervised one) under ``OUT/pretrain/<name>``;
3. its conversion (``twist-convert --to mmseg`` / ``--to detectron2``) under ``OUT/weights``;
4. the trials (``twist-trials run``, ``--scratch`` for the random initialisation, which itself skips
   the finished trials and refuses a setup other than the one they ran) of each protocol that the
   config's ``default_protocols`` (or ``--protocols``) names, under ``OUT/<protocol>/<name>``; a
   protocol of the ``detectron2`` engine runs only when Detectron2 is installed, and the report
   says so when not;
5. the report: per protocol (those run, and any other with trials in OUT), every initialisation's
   mean ± sample std over its trials, a bar chart with error bars, the command, the machine and the
   wall-clock time of every invocation, written to ``OUT/transfer.md`` (and ``--doc``). An
   initialisation with a failed trial is reported as failed, never averaged over fewer trials.

With ``--jobs N`` the initialisations' chains (steps 2 to 4) run N at a time, the cores shared out
between them (each command's ``OMP_NUM_THREADS``): on a 2-core machine, two one-thread fine-tunings
at 64 px get through 1.25x the images of one two-thread fine-tuning (docs/transfer_notes.md,
section 6). Each chain writes its own files (its folders, logs and weights); the one process that
runs them keeps ``timings.json`` and ``wall.json``, and holds OUT's lock. On a GPU machine the chains
share the device. When a chain fails, no step starts after it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from twist.atomic import atomic_write
from twist.engine.machine_speed import bare_resnet18_rate

SCENES_DONE = "scenes.json"
TIMINGS = "timings.json"
WALL = "wall.json"
WALL_KEYS = {"jobs", "threads", "rate", "protocols", "seconds"}


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


class ChainStopped(Exception):
    """A step not started because another initialisation's chain failed (or the run was interrupted)."""


def read_json(path: str, kind: type, default: Any) -> Any:
    """A bookkeeping file of OUT (``default`` when absent), refused in one line when it is not ``kind``."""
    if not os.path.isfile(path):
        return default
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as err:
        raise TransferError(f"'{path}' cannot be read ({err}): remove it, or use another --output-dir") from None
    if not isinstance(value, kind):
        raise TransferError(f"'{path}' holds a {type(value).__name__}, expected a {kind.__name__}: remove it, or "
                            "use another --output-dir")
    return value


@dataclass
class Runner:
    """Runs the steps' commands, each logged to its own file, and stops the benchmark when one fails.

    Each finished step's time is added to ``OUT/timings.json`` at once, and this invocation's wall-clock
    time so far to ``OUT/wall.json`` (one entry per invocation that ran a step, with its jobs, threads,
    the machine's measured speed and its protocols), so that a run over several invocations, killed
    ones included, reports what it took.
    """

    output_dir: str
    echo: Callable[[str], None] = print
    threads: int | None = None   # each command's OMP_NUM_THREADS (None: the environment's)
    invocation: dict[str, Any] = field(default_factory=dict)  # this one's jobs, threads, speed and protocols

    timings: dict[str, float] = field(default_factory=dict)
    walls: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # chains run side by side call run()
    stop: threading.Event = field(default_factory=threading.Event)  # set: no further step starts
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        self.timings = read_json(self.timings_path, dict, {})
        self.walls = read_json(os.path.join(self.output_dir, WALL), list, [])
        for entry in self.walls:
            if not isinstance(entry, dict) or set(entry) != WALL_KEYS:
                raise TransferError(f"'{os.path.join(self.output_dir, WALL)}': expected each invocation as the keys "
                                    f"{sorted(WALL_KEYS)}, found {entry!r}: remove it, or use another --output-dir")
        self.first_new_wall = len(self.walls)

    @property
    def timings_path(self) -> str:
        return os.path.join(self.output_dir, TIMINGS)

    def run(self, what: str, cmd: list[str], log_name: str, env: dict[str, str] | None = None) -> None:
        if self.stop.is_set():
            raise ChainStopped(what)
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
            atomic_write(self.timings_path, lambda f: json.dump(self.timings, f, indent=2), binary=False)
            self.record_wall_time()
        if code != 0:
            raise TransferError(f"{what} failed with exit code {code}; see {log_path}")
        self.echo(f"{what}: done in {time.perf_counter() - start:.0f} s")

    def record_wall_time(self) -> None:
        """This invocation's entry of ``wall.json``: its wall-clock time so far (called under the lock)."""
        entry = {**self.invocation, "seconds": round(time.perf_counter() - self.started, 1)}
        self.walls[self.first_new_wall:] = [entry]
        walls = list(self.walls)
        atomic_write(os.path.join(self.output_dir, WALL), lambda f: json.dump(walls, f, indent=2), binary=False)


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


def machine_description() -> str:
    import platform

    import torch

    model = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {usable_cores()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a scheduler's cgroup sets), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
    ax.set_title(f"digit scenes, {metric}\n{title.lower()}", fontsize=10)  # two lines: the titles are long
    for x, (m, s) in enumerate(zip(means, stds)):
        ax.text(x, m + s + 0.5, f"{m:.1f}", ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reported_protocols(bench: Benchmark, chosen: list[Protocol], output_dir: str) -> list[Protocol]:
    """The report's protocols: those this invocation ran, and any other of the config's with trials in
    ``output_dir`` (so a diagnostic run beside the default one adds its table, and takes none away)."""
    def has_trials(protocol: Protocol) -> bool:
        return any(os.path.isfile(os.path.join(output_dir, protocol.name, init.name, "summary.json"))
                   for init in bench.initialisations)

    return [p for p in bench.protocols if p in chosen or has_trials(p)]


def write_report(bench: Benchmark, protocols: list[Protocol], out_dir: str, command: str, machine: str, took: str,
                 doc: str | None) -> str:
    """``OUT/transfer.md`` (and ``doc``): a table and chart per protocol of the initialisations whose
    trials have finished, the initialisations not finished yet, the command, the machine and the time."""
    lines = ["# Transfer in miniature: digit scenes", "",
             f"Mean ± sample standard deviation over {bench.trials} trials per initialisation "
             f"({bench.scenes['train']} train and {bench.scenes['val']} val scenes). Written by", "",
             f"    {command}", "",
             f"on {machine}, in {took}.", ""]
    charts, pending = [], []
    body: list[str] = []
    for protocol in protocols:
        rows = [(init.name, read_summary(os.path.join(out_dir, protocol.name, init.name)))
                for init in bench.initialisations
                if os.path.isfile(os.path.join(out_dir, protocol.name, init.name, "summary.json"))]
        finished = {name for name, _ in rows}
        missing = [init.name for init in bench.initialisations if init.name not in finished]
        if not rows and protocol.engine == "detectron2" and not detectron2_available():
            body += [f"## {protocol.title}", "", "Not run: Detectron2 is not installed.", ""]
            continue
        if missing:
            pending.append(f"{protocol.name}: {', '.join(missing)}")
        columns = protocol.columns
        body += [f"## {protocol.title} ({protocol.config})", "",
                 "| initialisation | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        body += [f"| {name} | " + " | ".join(row_cells(summary, columns)) + " |" for name, summary in rows]
        chart = f"transfer_{protocol.name}.png"
        bar_chart(rows, protocol.metric, protocol.title, os.path.join(out_dir, chart))
        charts.append(chart)
        body += ["", f"![{protocol.metric} per initialisation]({chart})", ""]
    if pending:
        lines += [f"**Not finished yet:** {'; '.join(pending)} (the command above, without --report-only, "
                  "continues where the run stopped).", ""]
    text = "\n".join(lines + body) + "\n"
    report = os.path.join(out_dir, "transfer.md")
    atomic_write(report, lambda f: f.write(text), binary=False)
    if doc:
        import shutil

        doc_dir = os.path.dirname(os.path.abspath(doc))
        for chart in charts:
            shutil.copyfile(os.path.join(out_dir, chart), os.path.join(doc_dir, chart))
        atomic_write(doc, lambda f: f.write(text), binary=False)
    return report


def describe_invocation(entry: dict[str, Any]) -> str:
    jobs, threads = entry["jobs"], entry["threads"]
    how = (f"{jobs} jobs side by side at {threads} thread{'s' if threads != 1 else ''} each" if jobs > 1
           else f"1 job at {threads} thread{'s' if threads != 1 else ''}")
    return (f"{entry['seconds'] / 60:.0f} minutes, {how} (bare ResNet-18 training at 64 px: {entry['rate']:.0f} "
            f"images/s), running {', '.join(entry['protocols'])}")


def how_long(timings: dict[str, float], walls: list[dict[str, Any]]) -> str:
    """The report's account of the time: wall-clock per invocation that ran a step, and the steps' sum."""
    steps = f"its steps' times summed: {sum(timings.values()) / 60:.0f} minutes"
    if not walls:
        return f"no invocation that ran a step ({steps})"
    count = "1 invocation" if len(walls) == 1 else f"{len(walls)} invocations"
    return (f"{sum(w['seconds'] for w in walls) / 60:.0f} minutes of wall-clock time ({count}: "
            + "; ".join(describe_invocation(w) for w in walls) + f"; {steps})")


def run_chain(init: Initialisation, bench: Benchmark, protocols: list[Protocol], runner: Runner,
              scenes: dict[str, Any]) -> None:
    """One initialisation's pretraining, conversions and trials; a failure stops every chain's next step."""
    try:
        checkpoint = pretrain(init, bench, runner)
        for protocol in protocols:
            weights = convert(init, checkpoint, protocol.engine, runner)
            read_summary(run_trials(init, weights, protocol, bench, runner, scenes))
    except ChainStopped:
        raise
    except BaseException:
        runner.stop.set()
        raise


def run_chains(bench: Benchmark, protocols: list[Protocol], runner: Runner, scenes: dict[str, Any],
               jobs: int) -> None:
    """Every initialisation's chain, ``jobs`` at a time. When one fails, the running ones finish their
    current step and no step starts after it; the first failure in the config's order is raised, the
    others echoed, and the chains that stopped early are named."""
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures = {pool.submit(run_chain, init, bench, protocols, runner, scenes): init.name
               for init in bench.initialisations}
    try:
        wait(futures)
    except BaseException:  # an interrupt: start nothing more, and let the running steps end (they got it too)
        runner.stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    errors = [(name, f.exception()) for f, name in futures.items() if f.exception() is not None]
    failures = [err for name, err in errors if not isinstance(err, ChainStopped)]
    stopped = [name for name, err in errors if isinstance(err, ChainStopped)]
    if failures:
        for err in failures[1:]:
            runner.echo(f"also failed: {err}")
        if stopped:
            runner.echo(f"stopped before their next step: {', '.join(stopped)} (rerun to resume)")
        raise failures[0]


def run_benchmark(config: str, output_dir: str, doc: str | None = None, echo: Callable[[str], None] = print,
                  command: str = "", report_only: bool = False, protocols: list[str] | None = None,
                  jobs: int = 1) -> str:
    """Every step of the module doc; returns the report's path. ``protocols``: the names to run (the
    config's ``default_protocols`` when None); ``jobs``: initialisations run side by side.
    ``report_only``: run nothing, and report the initialisations whose trials have finished, naming
    the others as not run yet."""
    from twist.engine.run_lock import RunFolderLocked, RunLock

    bench = load_benchmark(config)
    chosen = bench.chosen(protocols)
    if jobs < 1:
        raise TransferError(f"--jobs must be at least 1, not {jobs}")
    cores = usable_cores()
    side_by_side = min(jobs, len(bench.initialisations))
    threads = max(1, cores // side_by_side) if jobs > 1 else None
    if side_by_side > cores:
        echo(f"--jobs {jobs} on {cores} cores: each job gets one thread, and they share the cores")
    os.makedirs(output_dir, exist_ok=True)
    try:
        lock = RunLock.acquire(output_dir)  # one writer per output folder: a second invocation is refused
    except RunFolderLocked as err:
        raise TransferError(f"'{output_dir}' is in use by another benchmark: {err}") from None
    try:
        import torch

        runnable = [p for p in chosen if p.engine != "detectron2" or detectron2_available()]
        rate = 0.0
        if not report_only:  # the machine's speed as this invocation found it, kept beside its time
            rate = round(bare_resnet18_rate(steps=5, batch=8, size=64), 1)
            echo(f"machine: bare ResNet-18 training at 64 px runs at {rate:.0f} images/s here")
        # without --jobs the commands inherit this process's environment, and so its thread count
        runner = Runner(output_dir, echo, threads, {"jobs": side_by_side, "threads": threads or torch.get_num_threads(),
                                                    "rate": rate, "protocols": [p.name for p in runnable]})
        if len(runnable) < len(chosen):
            echo("detection: skipped, Detectron2 is not installed (see the README's detection section)")
        if not report_only:
            run_chains(bench, runnable, runner, make_scenes(bench, os.path.join(output_dir, "data"), echo), jobs)
        return write_report(bench, reported_protocols(bench, chosen, output_dir), output_dir,
                            command or f"python -m twist.transfer.benchmark --config {config} --output-dir "
                            f"{output_dir}", machine_description(), how_long(runner.timings, runner.walls), doc)
    finally:
        lock.release()


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
