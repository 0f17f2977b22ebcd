"""One writer per run folder: a lock file that a second ``twist-train`` cannot take, on this machine or
on another node that shares the file system.

The lock is created with ``O_CREAT | O_EXCL``, which is atomic on local and network file systems
(NFS v3 and later, Lustre, GPFS), and holds the holder's host, pid, start time and command as JSON.
While it is held, a daemon thread refreshes the file's mtime every ``HEARTBEAT_S`` seconds. A lock
is stale, and the next run takes it over, when

- its holder ran on this host and that process is gone (its pid is free, or now names another process);
- its holder ran on another host and the heartbeat is older than ``STALE_AFTER_S`` (a pid on another
  host cannot be checked from here);
- it was held by an earlier attempt of this same job (torchrun's ``--rdzv-id``, a SLURM job id): a
  launcher starts a new attempt only after stopping every worker of the last one, and the new rank 0
  may run on another node.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

LOCK_NAME = "twist-train.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
_TAKEOVER_STALE_S = 60.0  # a takeover takes milliseconds; an older takeover file is left by a killed process


class RunFolderLocked(RuntimeError):
    """Another process holds the run folder."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: str
    command: str
    process_start: str = ""  # the kernel's start time of ``pid``: tells a reused pid from the holder
    job: str = ""
    attempt: list[int] = field(default_factory=list)

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, running since {self.started}"


def _process_start(pid: int) -> str | None:
    """The start time of a live process from /proc (None when it is gone or a zombie, '' without /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None if os.path.isdir("/proc/self") else ""
    except OSError:
        return ""
    return None if fields[0] in ("Z", "X") else fields[19]


def _process_alive(holder: Holder) -> bool:
    start = _process_start(holder.pid)
    if start is None:
        return False
    if start and holder.process_start:
        return start == holder.process_start
    try:  # no /proc: ask the kernel whether the pid exists at all
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _job_attempt() -> tuple[str, list[int]]:
    """This job's identity and restart attempt as the launchers tell it; '' outside a named job."""
    env, jobs, attempt = os.environ, [], []
    if env.get("SLURM_JOB_ID"):
        jobs.append(f"slurm {env['SLURM_JOB_ID']}")
        attempt.append(int(env.get("SLURM_RESTART_COUNT", "0") or 0))
    if env.get("TORCHELASTIC_RUN_ID", "none") != "none":  # torchrun without --rdzv-id says 'none'
        jobs.append(f"torchrun {env['TORCHELASTIC_RUN_ID']}")
        attempt.append(int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0))
    return ", ".join(jobs), attempt


def _this_process() -> Holder:
    job, attempt = _job_attempt()
    return Holder(host=socket.gethostname(), pid=os.getpid(), started=time.strftime("%Y-%m-%d %H:%M:%S %z"),
                  command=" ".join(sys.argv), process_start=_process_start(os.getpid()) or "", job=job,
                  attempt=attempt)


def stale_reason(holder: Holder | None, age_s: float, me: Holder) -> str | None:
    """Why the lock of ``holder`` (its heartbeat ``age_s`` old) may be taken over, or None while it holds."""
    if holder is None:
        return f"its content is unreadable and {age_s:.0f} s old" if age_s > STALE_AFTER_S else None
    if holder.job and holder.job == me.job and holder.attempt < me.attempt:
        return f"it was held by an earlier attempt of this job ({holder.job}), which its launcher has stopped"
    if holder.host == me.host:
        return None if _process_alive(holder) else f"its process (pid {holder.pid}) is gone"
    if age_s > STALE_AFTER_S:
        return f"its heartbeat is {age_s:.0f} s old (more than {STALE_AFTER_S:.0f} s)"
    return None


def _read(path: str) -> tuple[str, float] | None:
    """The lock's text and the age of its heartbeat, or None when there is no lock."""
    for _ in range(20):  # a lock being created is empty for the moment between open and write
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            return None
        if text:
            break
        time.sleep(0.05)
    return text, age


def _parse(text: str) -> Holder | None:
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError):
        return None


class RunLock:
    """The lock of one run folder, held by this process until :meth:`release`."""

    def __init__(self, path: str, text: str, heartbeat_s: float):
        self.path, self._text = path, text
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, args=(heartbeat_s,), daemon=True,
                                        name="twist-run-lock-heartbeat")
        self._thread.start()

    @classmethod
    def acquire(cls, output_dir: str, heartbeat_s: float = HEARTBEAT_S) -> RunLock:
        """Take the lock of ``output_dir``, taking over a stale one; raise RunFolderLocked while it is held."""
        path = os.path.join(output_dir, LOCK_NAME)
        me = _this_process()
        text = json.dumps(asdict(me))
        for _ in range(5):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                _take_over_if_stale(path, output_dir, me)
                continue
            try:
                os.write(fd, text.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            return cls(path, text, heartbeat_s)
        raise RunFolderLocked(f"could not take the lock '{path}': it changed hands repeatedly; is another "
                              f"twist-train starting on run folder '{output_dir}'?")

    def _owned(self) -> bool:
        try:
            with open(self.path, encoding="utf-8") as f:
                return f.read() == self._text
        except OSError:
            return False

    def _heartbeat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            if not self._owned():
                print(f"warning: the run-folder lock '{self.path}' was taken over by another process "
                      f"(this one was presumed dead); two runs may now write to this folder", file=sys.stderr)
                return
            try:
                os.utime(self.path)
            except OSError:
                pass  # a file system that is briefly unavailable: the next beat tries again

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, unless another process has taken it over meanwhile."""
        self._stop.set()
        self._thread.join()
        if self._owned():
            os.unlink(self.path)


def _take_over_if_stale(path: str, output_dir: str, me: Holder) -> None:
    """Remove the lock at ``path`` if it is stale; raise RunFolderLocked naming its holder otherwise.

    Removing is serialised by a second exclusive file, and the lock is removed only if it is still
    the very one judged stale: two runs that find the same stale lock cannot both take it.
    """
    found = _read(path)
    if found is None:
        return  # released meanwhile
    text, age = found
    holder = _parse(text)
    reason = stale_reason(holder, age, me)
    if reason is None:
        who = holder.describe() if holder is not None else "a process whose lock cannot be read"
        raise RunFolderLocked(f"run folder '{output_dir}' is in use by another twist-train: {who} "
                              f"(lock file '{path}'); wait for it to end or pass another --output-dir")
    takeover = path + ".takeover"
    try:
        os.close(os.open(takeover, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        _remove_if_older(takeover, _TAKEOVER_STALE_S)
        time.sleep(0.1)
        return  # another run is taking it over; the caller tries again and meets its lock
    try:
        current = _read(path)
        if current is not None and current[0] == text:
            os.unlink(path)
            who = holder.describe() if holder is not None else "an unknown process"
            print(f"taking over the stale lock '{path}' of {who}: {reason}", file=sys.stderr)
    finally:
        os.unlink(takeover)


def _remove_if_older(path: str, age_s: float) -> None:
    try:
        if time.time() - os.stat(path).st_mtime > age_s:
            os.unlink(path)
    except FileNotFoundError:
        pass
