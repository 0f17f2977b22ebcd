"""One writer per run folder: real processes racing for one folder, stale locks taken over, ranks of one
job sharing rank 0's lock."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import TINY
from twist.config import ConfigError, load_config
from twist.engine import run_lock
from twist.engine.run_lock import LOCK_NAME, RunFolderLocked, RunLock
from twist.engine.trainer import train

CLI_RUN = TINY + ["train.epochs=4", "eval.enabled=false"]


def _cli(out):
    return [sys.executable, "-m", "twist.cli.train", "--config", "configs/demo/digits.yaml", "--output-dir", str(out),
            *CLI_RUN]


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _holder(out, *, exit_at_once: bool, env=None) -> subprocess.Popen:
    """A real process that takes the folder's lock, then dies without releasing it or holds it until killed."""
    code = textwrap.dedent(f"""
        import os, sys, time
        from twist.engine.run_lock import RunLock
        os.makedirs({str(out)!r}, exist_ok=True)
        RunLock.acquire({str(out)!r})
        print("locked", flush=True)
        if {exit_at_once}:
            os._exit(0)  # as a process killed mid-run: no release
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env or _env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _train_records(out):
    records = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    return [r["step"] for r in records if r["kind"] == "train"]


def test_two_real_processes_racing_for_one_folder(tmp_path):
    out = tmp_path / "run"
    procs = [subprocess.Popen(_cli(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for _ in range(2)]
    results = [(proc, *proc.communicate(timeout=600)) for proc in procs]
    codes = sorted(proc.returncode for proc, _, _ in results)
    assert codes[0] == 0 and codes[1] != 0, [err[-2000:] for _, _, err in results]
    (winner, _, _), = [r for r in results if r[0].returncode == 0]
    (_, _, refused), = [r for r in results if r[0].returncode != 0]
    lines = refused.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused, refused
    assert f"pid {winner.pid}" in lines[0] and socket.gethostname() in lines[0]
    assert os.path.join(str(out), LOCK_NAME) in lines[0]
    # One writer: one record per step, no second run's lines interleaved.
    assert _train_records(out) == list(range(1, 17))
    assert not os.path.exists(out / LOCK_NAME)  # released at the end


def test_a_live_holder_is_named_and_its_lock_left_alone(tmp_path, tiny_config):
    out = tmp_path / "run"
    holder = _holder(out, exit_at_once=False)
    try:
        before = (out / LOCK_NAME).read_text()
        with pytest.raises(RunFolderLocked, match=rf"pid {holder.pid} on host {socket.gethostname()}"):
            train(tiny_config, str(out))
        assert (out / LOCK_NAME).read_text() == before
        assert sorted(os.listdir(out)) == [LOCK_NAME]  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, tiny_config, capsys):
    out = tmp_path / "run"
    dead = _holder(out, exit_at_once=True)
    dead.wait()
    assert (out / LOCK_NAME).exists()
    result = train(tiny_config, str(out), max_steps=1)
    assert result["step"] == 1
    err = capsys.readouterr().err
    assert f"pid {dead.pid}" in err and "stale" in err
    assert not (out / LOCK_NAME).exists()


def _rewrite_lock(path, **fields):
    holder = json.loads(path.read_text())
    holder.update(fields)
    path.write_text(json.dumps(holder))


def test_another_hosts_lock_holds_while_its_heartbeat_is_fresh(tmp_path, tiny_config, capsys):
    out = tmp_path / "run"
    dead = _holder(out, exit_at_once=True)
    dead.wait()
    lock = out / LOCK_NAME
    _rewrite_lock(lock, host="another-node")  # its pid means nothing here: only the heartbeat tells
    with pytest.raises(RunFolderLocked, match="another-node"):
        train(tiny_config, str(out))
    old = time.time() - run_lock.STALE_AFTER_S - 5
    os.utime(lock, (old, old))
    assert train(tiny_config, str(out), max_steps=1)["step"] == 1
    assert "stale" in capsys.readouterr().err


def test_the_holder_refreshes_its_heartbeat(tmp_path):
    lock = RunLock.acquire(str(tmp_path), heartbeat_s=0.05)
    try:
        old = time.time() - 1000
        os.utime(lock.path, (old, old))
        time.sleep(0.5)
        assert time.time() - os.path.getmtime(lock.path) < 5
    finally:
        lock.release()
    assert not os.path.exists(lock.path)


def test_an_earlier_attempt_of_the_same_job_does_not_lock_out_its_restart(tmp_path, monkeypatch):
    # torchrun restarts a job only after stopping every worker, possibly with rank 0 on another node.
    job = {"TORCHELASTIC_RUN_ID": "job-7", "TORCHELASTIC_RESTART_COUNT": "0"}
    holder = _holder(tmp_path, exit_at_once=False, env=_env(**job))
    try:
        _rewrite_lock(tmp_path / LOCK_NAME, host="another-node")
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
        with pytest.raises(RunFolderLocked):  # the same attempt: another process of it holds the folder
            RunLock.acquire(str(tmp_path))
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
        RunLock.acquire(str(tmp_path)).release()
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_released_when_the_run_fails(tmp_path, tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["method=wmse", "wmse.w_size=16", "wmse.out_dim=4"])
    with pytest.raises(ConfigError, match="wmse.w_size"):  # raised after the lock is taken
        train(cfg, str(tmp_path))
    assert not (tmp_path / LOCK_NAME).exists()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_rank_stops_when_rank_0_cannot_take_the_lock(tmp_path):
    out = tmp_path / "run"
    holder = _holder(out, exit_at_once=False)
    try:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_port()}",
                   "-m", "twist.cli.train", "--config", "configs/demo/digits.yaml", "--output-dir", str(out),
                   *CLI_RUN, "data.num_samples=64"]
        started = time.time()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env())
        assert proc.returncode != 0
        assert time.time() - started < 120  # no rank waits in a collective for a rank 0 that gave up
        assert f"pid {holder.pid}" in proc.stderr
        assert sorted(os.listdir(out)) == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()
