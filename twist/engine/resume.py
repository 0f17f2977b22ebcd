"""Taking up a run folder again: resuming its checkpoint only under the config it was written with (but
for the keys ``twist.config.RESUMABLE`` allows), starting over with the old run kept aside, and clearing
what a killed write left behind.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Mapping

import torch

from twist.config import ConfigError, resume_changes
from twist.engine.checkpoint import (
    CheckpointError,
    Entry,
    describe_tensors,
    load_weights_only,
    nonfinite_tensors,
    set_rng_state,
    stored_config,
)
from twist.engine.run_lock import LOCK_NAME

PREVIOUS = "previous"


def describe_changes(changes: dict[str, list]) -> str:
    return ", ".join(f"{key} ({old} stored, {new} now)" for key, (old, new) in changes.items())


def _start_over_hint(path: str) -> str:
    folder = os.path.dirname(path) or "."
    return f"pass --restart to start over (the old run moves to {os.path.join(folder, PREVIOUS)}/<date>/)"


def state_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, Any]) -> list[str]:
    """How the tensors ``given`` differ from those a module ``expected``: missing, of another shape, extra."""
    problems = []
    for name, tensor in expected.items():
        if name not in given:
            problems.append(f"{name} is missing")
        elif tuple(getattr(given[name], "shape", ())) != tuple(tensor.shape):
            problems.append(f"{name} is {list(given[name].shape)} there and {list(tensor.shape)} here")
    return problems + [f"{name} is not in this model" for name in given if name not in expected]


def load_fitting(module: torch.nn.Module, state: Any, path: str, key: str) -> None:
    """``module.load_state_dict(state[key])``, or a CheckpointError naming the first tensors that do not fit."""
    given = state.get(key)
    if not isinstance(given, Mapping):
        raise CheckpointError(f"checkpoint '{path}' holds no '{key}' state; it was not written by twist-train "
                              f"under this config: {_start_over_hint(path)}")
    problems = state_mismatch(module.state_dict(), given)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CheckpointError(f"checkpoint '{path}' does not fit the {key} of this config: {shown}; it was "
                              f"written for another model: {_start_over_hint(path)}")
    module.load_state_dict(given)


def restore_run(path: str, cfg: dict[str, Any], model, teacher, optimizer, scaler,
                rank: int, world_size: int) -> tuple[int, dict[str, list]]:
    """Load the run at ``path`` into the training objects; return its step and the allowed config changes.

    Refused before anything is loaded: a config that differs from the stored one beyond ``RESUMABLE``
    (naming every key with both values), a checkpoint written by another number of ranks, and one
    that holds NaN or inf.
    """
    state = load_weights_only(path)
    if not isinstance(state, Mapping) or Entry.STEP not in state:
        raise CheckpointError(f"'{path}' is not a checkpoint twist-train wrote (no step, model and optimizer "
                              f"state): move it out of the run folder, or {_start_over_hint(path)}")
    changes: dict[str, list] = {}
    stored = stored_config(state)
    if stored is not None:
        changes, refused = resume_changes(stored, cfg)
        if refused:
            raise ConfigError(f"'{path}' was written under another config, which a resumed run may not change: "
                              f"{describe_changes(refused)}; resume with the stored values, or "
                              f"{_start_over_hint(path)}")
    rng_states = state.get(Entry.RNG)
    if not isinstance(rng_states, list) or len(rng_states) != world_size:
        ranks = f"{len(rng_states)} ranks" if isinstance(rng_states, list) else "no RNG state"
        raise CheckpointError(f"checkpoint '{path}' was written by {ranks}; resume it with the same number of "
                              f"ranks ({world_size} now)")
    bad = nonfinite_tensors({key: state[key] for key in (Entry.MODEL, Entry.TEACHER, Entry.OPTIMIZER) if key in state})
    if bad:
        raise CheckpointError(f"checkpoint '{path}' holds NaN or inf in {describe_tensors(bad)}, so it cannot be "
                              f"resumed: {_start_over_hint(path)}")
    load_fitting(model, state, path, Entry.MODEL)
    if teacher is not None:
        load_fitting(teacher.model, state, path, Entry.TEACHER)
    try:
        optimizer.load_state_dict(state[Entry.OPTIMIZER])
        scaler.load_state_dict(state[Entry.SCALER])
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint '{path}': its optimizer state does not fit this config ({err}): "
                              f"{_start_over_hint(path)}") from None
    set_rng_state(rng_states[rank])
    return state[Entry.STEP], changes


def move_run_aside(output_dir: str) -> str | None:
    """Move everything in ``output_dir`` (but its lock and earlier moved runs) to ``previous/<date>/``."""
    entries = [name for name in os.listdir(output_dir) if name not in (LOCK_NAME, PREVIOUS)]
    if not entries:
        return None
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    target, n = os.path.join(output_dir, PREVIOUS, stamp), 1
    while os.path.exists(target):
        n += 1
        target = os.path.join(output_dir, PREVIOUS, f"{stamp}_{n}")
    os.makedirs(target)
    for name in entries:
        os.replace(os.path.join(output_dir, name), os.path.join(target, name))
    return target


def stale_temporaries(output_dir: str, outputs: tuple[str, ...]) -> list[str]:
    """The temporary files that writes of ``outputs`` (atomic writes, the plot's) left when killed."""
    prefixes = tuple(f".{name}." for name in outputs)
    return sorted(name for name in os.listdir(output_dir)
                  if (name.startswith(prefixes) and name.endswith(".tmp"))
                  or any(name == f"{output}.tmp.png" for output in outputs))


def clear_stale_temporaries(output_dir: str, outputs: tuple[str, ...]) -> None:
    """Remove the temporaries a killed write left; only safe under the run's lock (no other writer)."""
    stale = stale_temporaries(output_dir, outputs)
    for name in stale:
        os.unlink(os.path.join(output_dir, name))
    if stale:
        print(f"removed {len(stale)} stale temporary file{'s' if len(stale) > 1 else ''} that an interrupted "
              f"write left in {output_dir}: {', '.join(stale)}", file=sys.stderr)
