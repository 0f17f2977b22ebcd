"""The demo's verdict over seeds and thread counts: `make demo`'s run for each seed x thread count, one table.

    python -m twist_tools.demo_seeds                          # seeds 0-4 x 1 and 2 threads -> docs/demo_seeds.md
    python -m twist_tools.demo_seeds --seeds 0 1 --threads 2 --doc /tmp/seeds.md

Each run is `twist-train --config configs/demo/digits.yaml seed=S` with S and the thread count fixed
(OMP_NUM_THREADS), one run at a time so that none slows another, each in its own folder under
--work-dir; a finished run (its metrics.json is there) is reused and one stopped part-way resumes
from its checkpoint, so an interrupted grid continues where it stopped.
After training, `twist-eval knn` scores each run's frozen features on the held-out split
(configs/eval/digits.yaml), beside the same vote on the raw pixels (knn.pixel_baseline).
The doc holds every run's clustering figures, kNN top-1 and wall time (of twist-train), their mean
and minimum, the goal each run is held to, and the machine's speed: a bare ResNet-18's training rate in
the demo's step (twist.engine.machine_speed), measured once before the runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from twist.atomic import atomic_write
from twist.engine.machine_speed import DEMO_SETTING, DEMO_SETTING_TEXT, bare_resnet18_rate
from twist.engine.runtime import describe_hardware

DEMO_CONFIG = "configs/demo/digits.yaml"
EVAL_CONFIG = "configs/eval/digits.yaml"
# The goal of a demo run: the unsupervised ACC of every run and of their mean, the NMI of every run,
# every digit given a cluster of its own, and (in verdict) kNN on the features above kNN on the pixels.
GOAL = {"acc_min": 0.93, "acc_mean": 0.95, "nmi_min": 0.90}


@dataclass(frozen=True)
class Run:
    seed: int
    threads: int

    @property
    def name(self) -> str:
        return f"seed{self.seed}_threads{self.threads}"


def run_demo(run: Run, work_dir: str, overrides: list[str]) -> dict:
    """The run's metrics.json, with its wall time; trains first unless the run already finished."""
    out = os.path.join(work_dir, run.name)
    metrics_path = os.path.join(out, "metrics.json")
    timing_path = os.path.join(out, "wall_time.json")
    env = {**os.environ, "OMP_NUM_THREADS": str(run.threads)}
    if not (os.path.isfile(metrics_path) and os.path.isfile(timing_path)):
        os.makedirs(out, exist_ok=True)
        cmd = [sys.executable, "-m", "twist.cli.train", "--config", DEMO_CONFIG, "--output-dir", out,
               "train.progress_bar=false", f"seed={run.seed}", *overrides]
        start = time.perf_counter()
        with open(os.path.join(out, "demo_seeds.log"), "ab") as log:
            # a run stopped part-way resumes from its checkpoint, exactly
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if code != 0 or not os.path.isfile(metrics_path):
            raise RuntimeError(f"{run.name}: twist-train exited {code} without {metrics_path}; see "
                               f"{out}/demo_seeds.log")
        seconds = time.perf_counter() - start
        atomic_write(timing_path, lambda f: json.dump({"seconds": seconds}, f), binary=False)
    knn_path = os.path.join(out, "knn", "results.json")
    if not os.path.isfile(knn_path):
        cmd = [sys.executable, "-m", "twist.cli.eval", "knn", "--checkpoint", os.path.join(out, "checkpoint.pth"),
               "--output-dir", os.path.dirname(knn_path), "--config", EVAL_CONFIG, "progress_bar=false",
               "knn.pixel_baseline=true"]
        with open(os.path.join(out, "demo_seeds.log"), "ab") as log:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if code != 0:
            raise RuntimeError(f"{run.name}: twist-eval knn exited {code}; see {out}/demo_seeds.log")
    with open(metrics_path, encoding="utf-8") as f:
        metrics = json.load(f)
    with open(timing_path, encoding="utf-8") as f:
        metrics["seconds"] = json.load(f)["seconds"]
    with open(knn_path, encoding="utf-8") as f:
        knn = json.load(f)
    metrics.update(knn_top1=knn["top1"], pixels_knn_top1=knn["baseline"]["top1"], knn_k=knn["k"],
                   knn_temperature=knn["temperature"])
    return metrics


def verdict(results: dict[Run, dict]) -> list[str]:
    """The goal's failed conditions, each naming the runs that fail it (empty when the goal holds)."""
    accs = [m["acc"] for m in results.values()]
    failed = []
    low_acc = [r.name for r, m in results.items() if m["acc"] < GOAL["acc_min"]]
    if low_acc:
        failed.append(f"ACC below {GOAL['acc_min']} in {', '.join(low_acc)}")
    if statistics.mean(accs) < GOAL["acc_mean"]:
        failed.append(f"mean ACC {statistics.mean(accs):.3f} below {GOAL['acc_mean']}")
    low_nmi = [r.name for r, m in results.items() if m["nmi"] < GOAL["nmi_min"]]
    if low_nmi:
        failed.append(f"NMI below {GOAL['nmi_min']} in {', '.join(low_nmi)}")
    unused = [r.name for r, m in results.items() if m["num_clusters_used"] < m["num_classes"]]
    if unused:
        failed.append(f"not every digit has a cluster of its own in {', '.join(unused)}")
    no_lead = [r.name for r, m in results.items() if m["knn_top1"] <= m["pixels_knn_top1"]]
    if no_lead:
        failed.append(f"kNN on the features not above kNN on the raw pixels in {', '.join(no_lead)}")
    return failed


def report(results: dict[Run, dict], command: str, machine: str, rate: float, overrides: list[str]) -> str:
    lines = ["# The demo over seeds and threads", "",
             f"`make demo`'s run (`{DEMO_CONFIG}`{', ' + ' '.join(overrides) if overrides else ''}) for each seed and "
             "thread count, one run at a time. Written by", "", f"    {command}", "",
             f"on {machine}; bare ResNet-18 training at {rate:.0f} images/s ({DEMO_SETTING_TEXT}).", "",
             "| seed | threads | ACC | NMI | AMI | ARI | clusters used | kNN top-1 | wall time |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run, m in results.items():
        lines.append(f"| {run.seed} | {run.threads} | {m['acc']:.3f} | {m['nmi']:.3f} | {m['ami']:.3f} | "
                     f"{m['ari']:.3f} | {m['num_clusters_used']} / {m['num_classes']} | {m['knn_top1']:.3f} | "
                     f"{m['seconds']:.0f} s |")
    accs, nmis = [m["acc"] for m in results.values()], [m["nmi"] for m in results.values()]
    knns, pixels = [m["knn_top1"] for m in results.values()], sorted({m["pixels_knn_top1"] for m in results.values()})
    votes = ", ".join(sorted({f"k = {m['knn_k']}, T = {m['knn_temperature']}" for m in results.values()}))
    lines += ["", f"ACC: mean {statistics.mean(accs):.3f}, min {min(accs):.3f}; "
              f"NMI: mean {statistics.mean(nmis):.3f}, min {min(nmis):.3f}; "
              f"kNN top-1 on the held-out split: mean {statistics.mean(knns):.3f}, min {min(knns):.3f}, against "
              f"{' / '.join(f'{p:.3f}' for p in pixels)} for the same vote on the raw pixels "
              f"({EVAL_CONFIG}, {votes}).", ""]
    failed = verdict(results)
    goal = (f"ACC at least {GOAL['acc_min']} in every run and {GOAL['acc_mean']} on average, NMI at least "
            f"{GOAL['nmi_min']} in every run, every digit a cluster of its own, kNN on the features above kNN on "
            "the raw pixels in every run")
    lines.append(f"Goal ({goal}): {'met.' if not failed else 'not met: ' + '; '.join(failed) + '.'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twist_tools.demo_seeds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work-dir", default="runs/demo_seeds", help="one folder per run; rerun to resume")
    parser.add_argument("--doc", default="docs/demo_seeds.md")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run (for tests and trials)")
    args = parser.parse_args(argv)
    command = " ".join(["python -m twist_tools.demo_seeds", *(argv if argv is not None else sys.argv[1:])])
    rate = bare_resnet18_rate(steps=5, **DEMO_SETTING)
    print(f"machine: bare ResNet-18 training at {rate:.0f} images/s ({DEMO_SETTING_TEXT})", flush=True)
    results = {}
    for threads in args.threads:
        for seed in args.seeds:
            run = Run(seed, threads)
            try:
                results[run] = run_demo(run, args.work_dir, args.overrides)
            except RuntimeError as err:
                print(f"demo_seeds: error: {err}", file=sys.stderr)
                return 1
            m = results[run]
            print(f"{run.name}: ACC {m['acc']:.3f} NMI {m['nmi']:.3f} kNN {m['knn_top1']:.3f} (pixels "
                  f"{m['pixels_knn_top1']:.3f}) in {m['seconds']:.0f} s", flush=True)
    text = report(results, command, describe_hardware(), rate, args.overrides)
    os.makedirs(os.path.dirname(os.path.abspath(args.doc)), exist_ok=True)
    atomic_write(args.doc, lambda f: f.write(text), binary=False)
    print(text)
    return 0 if not verdict(results) else 3


if __name__ == "__main__":
    sys.exit(main())
