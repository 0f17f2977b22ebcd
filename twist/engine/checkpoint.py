"""Checkpoints: written atomically, read weights-only, with the backbone exported on its own."""
from __future__ import annotations

import os
import pickle
import random
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from twist.atomic import atomic_write
from twist.engine.pickled_objects import python_objects


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, or not what the caller expected."""


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` through a temporary file and a rename: a crash never leaves a partial checkpoint."""
    atomic_write(path, lambda f: torch.save(obj, f))


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint refused because it holds Python objects that only full unpickling would build."""

    def __init__(self, path: str, objects: list[str], hint: str = ""):
        self.path, self.objects = path, objects
        shown = ", ".join(objects[:3]) + (f" and {len(objects) - 3} more" if len(objects) > 3 else "")
        kind = "a Python object" if len(objects) == 1 else "Python objects"
        super().__init__(f"checkpoint '{path}' holds {kind} ({shown}) beyond tensors and plain containers, so it "
                         f"was not loaded: unpickling it could run code from the file" + (f". {hint}" if hint else ""))


_TORCH_BOILERPLATE = ("Weights only load failed", "Check the documentation", "Please file an issue", "(1)", "(2)")


def _torch_reason(err: BaseException) -> str:
    """The line of torch's (often many-line) load error that says what was wrong."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reasons = [line.split("WeightsUnpickler error:", 1)[-1].strip() for line in lines
               if not line.startswith(_TORCH_BOILERPLATE)]
    return next((reason for reason in reasons if reason), lines[0] if lines else type(err).__name__)


def _refuse_unreadable(path: str, err: BaseException, hint: str) -> CheckpointError:
    """Why a weights-only load failed, read from the file itself (see :mod:`twist.engine.pickled_objects`)."""
    if isinstance(err, PermissionError):
        return CheckpointError(f"checkpoint '{path}' cannot be read: permission denied")
    objects, complete = python_objects(path)
    if complete and objects:
        return UnsafeCheckpointError(path, objects, hint)
    return CheckpointError(f"checkpoint '{path}' is truncated or not a torch checkpoint: {_torch_reason(err)}")


def read_torch_file(path: str, trust: bool = False, refusal_hint: str = "") -> tuple[Any, bool]:
    """Load ``path`` weights-only; with ``trust``, fall back to full unpickling, and say so on stderr.

    Returns the object and whether full unpickling was used. A missing, truncated or non-torch file raises
    :class:`CheckpointError` naming the file; without ``trust``, one that holds Python objects raises
    :class:`UnsafeCheckpointError` naming them, followed by ``refusal_hint`` (what the caller's user can do).
    """
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint '{path}' is a directory; pass the checkpoint file inside it")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        with warnings.catch_warnings():  # a raw pickle's protocol is no news: the refusal below explains it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True), False
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        refusal = _refuse_unreadable(path, err, refusal_hint)
    if not (trust and isinstance(refusal, UnsafeCheckpointError)):
        raise refusal
    print(f"warning: loading '{path}' with full unpickling: it holds {', '.join(refusal.objects[:3])}",
          file=sys.stderr)
    try:
        return torch.load(path, map_location="cpu", weights_only=False), True
    except Exception as err:  # noqa: BLE001 - whatever an untrusted pickle raises is reported the same way
        raise CheckpointError(f"checkpoint '{path}' could not be unpickled: {type(err).__name__}: {err}") from None


def load_weights_only(path: str, refusal_hint: str = "") -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file instead of pickle internals."""
    return read_torch_file(path, refusal_hint=refusal_hint)[0]


def _floating_tensors(value: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) for every floating tensor with data in nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.numel() > 0 and not value.is_meta:
            yield prefix, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _floating_tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _floating_tensors(item, f"{prefix}.{index}" if prefix else str(index))


def _suspects(tensors: list[torch.Tensor]) -> list[bool]:
    """Whether each tensor may hold NaN/inf: one fused L1-norm pass per device and dtype, one host read.

    A sum propagates NaN and inf where a max may drop NaN, so a finite L1 norm proves the tensor
    finite; a non-finite one may be an overflow of large finite values, which the caller confirms.
    """
    by_device: dict[torch.device, list[int]] = {}
    for index, tensor in enumerate(tensors):
        by_device.setdefault(tensor.device, []).append(index)
    suspect = [False] * len(tensors)
    for indices in by_device.values():
        order: list[int] = []
        finite: list[torch.Tensor] = []
        for wide in (False, True):  # float16/bfloat16 sum in float32: their own range would overflow
            accumulate = torch.float64 if wide else torch.float32
            chosen = [i for i in indices if (tensors[i].dtype == torch.float64) == wide]
            if chosen:
                norms = torch._foreach_norm([tensors[i] for i in chosen], 1, dtype=accumulate)
                finite.append(torch.stack(norms).isfinite())
                order.extend(chosen)
        for index, is_finite in zip(order, torch.cat(finite).tolist()):
            suspect[index] = not is_finite
    return suspect


def nonfinite_tensors(state: Mapping) -> list[str]:
    """Dotted names of the floating tensors in ``state`` (nested dicts, lists) that hold NaN or inf."""
    named = list(_floating_tensors(state, ""))
    suspects = _suspects([tensor for _, tensor in named])
    return [name for (name, tensor), suspect in zip(named, suspects)
            if suspect and not bool(torch.isfinite(tensor).all())]


def describe_tensors(names: list[str], shown: int = 3) -> str:
    """'7 tensors (a, b, c and 4 more)': the count and the first few names, for a one-line message."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} tensor{'s' if len(names) != 1 else ''} ({', '.join(names[:shown])}{more})"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """random.setstate wants tuples; a round trip through torch.save may hand back lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


class Entry:
    """The entries of a training checkpoint (``checkpoint.pth``): written by :func:`training_checkpoint`,
    read back by the resume (``twist.engine.resume``), ``twist-eval`` and ``twist-convert``
    (``twist.models.pretrained``). ``backbone.pth`` is the ``BACKBONE`` entry on its own."""

    MODEL = "model"  # the whole twin model: backbone.* and head.*
    BACKBONE = "backbone"
    TEACHER = "teacher"  # with teacher.enabled: the EMA teacher's twin model, and its backbone
    TEACHER_BACKBONE = "teacher_backbone"
    OPTIMIZER = "optimizer"
    SCALER = "scaler"
    STEP = "step"  # optimiser steps taken in total
    EPOCH = "epoch"  # epochs completed: the step // the steps per epoch
    RNG = "rng"  # every rank's RNG states, in rank order
    CONFIG = "config"  # the resolved config the run trained with


def training_checkpoint(model, teacher, optimizer, scaler, step: int, epoch: int, cfg: dict[str, Any],
                        rng_states: list[dict[str, Any]]) -> dict[str, Any]:
    """What a pretraining run saves to resume from (``teacher``: an EMA teacher, or None)."""
    state = {
        Entry.MODEL: model.state_dict(),
        Entry.BACKBONE: model.backbone.state_dict(),
        Entry.OPTIMIZER: optimizer.state_dict(),
        Entry.SCALER: scaler.state_dict(),
        Entry.STEP: step,
        Entry.EPOCH: epoch,
        Entry.RNG: rng_states,
        Entry.CONFIG: cfg,
    }
    if teacher is not None:
        state[Entry.TEACHER] = teacher.model.state_dict()
        state[Entry.TEACHER_BACKBONE] = teacher.model.backbone.state_dict()
    return state


def stored_config(checkpoint: Any) -> dict[str, Any] | None:
    """The config a training checkpoint stores, or None for any other file."""
    config = checkpoint.get(Entry.CONFIG) if isinstance(checkpoint, Mapping) else None
    return config if isinstance(config, dict) else None
