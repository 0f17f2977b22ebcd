"""The real CLI under torchrun on CPU (gloo): two processes, two 'nodes' on localhost, and a worker
killed with SIGKILL that the elastic agent restarts from the last checkpoint."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import torch

from tests.conftest import TINY

RUN = TINY + ["data.num_samples=64", "train.epochs=3", "train.checkpoint_every=2", "eval.enabled=false"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*launcher_args, out, extra=()):
    return [sys.executable, "-m", "torch.distributed.run", *launcher_args, "-m", "twist.cli.train",
            "--config", "configs/demo/digits.yaml", "--output-dir", str(out), *RUN, *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _state(out):
    return torch.load(os.path.join(out, "checkpoint.pth"), weights_only=True)


def test_two_processes_through_the_cli(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(_torchrun("--nproc_per_node=2", f"--master_port={_port()}", out=out),
                          capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = _state(out)
    assert state["step"] == 3 * 4  # 64 images / (2 ranks x 8 images) = 4 steps per epoch
    assert len(state["rng"]) == 2  # every rank's generator, for an exact resume
    records = [json.loads(line) for line in open(out / "log.jsonl")]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == sorted(set(steps))  # one writer: no duplicated lines from a second rank
    assert sorted(os.listdir(out)) == ["backbone.pth", "checkpoint.pth", "config.yaml", "log.jsonl",
                                       "tensorboard", "training_curves.png"]


def test_two_nodes_on_localhost_with_c10d_rendezvous(tmp_path):
    out, port = tmp_path / "run", _port()
    common = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
              "--rdzv-id=twist-test"]
    nodes = [subprocess.Popen(_torchrun(*common, f"--node_rank={rank}", out=out), env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert _state(out)["step"] == 12 and len(_state(out)["rng"]) == 2


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def test_sigkilled_worker_is_restarted_and_the_run_ends_identical(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    longer = ["train.epochs=8"]
    proc = subprocess.run(_torchrun("--nproc_per_node=2", f"--master_port={_port()}", out=straight, extra=longer),
                          capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]

    elastic = ["--nproc_per_node=2", "--max-restarts=1", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{_port()}", "--rdzv-id=twist-kill-test"]
    launcher = subprocess.Popen(_torchrun(*elastic, out=killed, extra=longer),
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, victim = time.time() + 300, None
    while time.time() < deadline and victim is None:
        time.sleep(0.2)
        checkpoint = killed / "checkpoint.pth"
        if checkpoint.exists() and _state(killed)["step"] >= 4:
            workers = [c for agent in _children(launcher.pid) for c in [agent] + _children(agent)]
            workers = [w for w in workers if "twist.cli.train" in open(f"/proc/{w}/cmdline").read()
                       and "torch.distributed.run" not in open(f"/proc/{w}/cmdline").read()]
            if workers:
                victim = workers[-1]
                os.kill(victim, signal.SIGKILL)
    assert victim is not None, "the run ended before a worker could be killed"
    _, stderr = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, stderr[-3000:]
    a, b = _state(straight), _state(killed)
    assert a["step"] == b["step"] == 8 * 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
