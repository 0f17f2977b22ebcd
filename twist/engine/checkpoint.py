"""Checkpoints: written atomically, read weights-only, with the backbone exported on its own."""
from __future__ import annotations

import os
import pickle
import random
import zipfile
from typing import Any

import torch

from twist.atomic import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, or not what the caller expected."""


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` through a temporary file and a rename: a crash never leaves a partial checkpoint."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_weights_only(path: str) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file instead of pickle internals."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"checkpoint '{path}' holds objects other than tensors and plain containers, "
                              f"so it was not loaded (weights-only loading): {str(err).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"checkpoint '{path}' is truncated or not a torch checkpoint: {err}") from None


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
