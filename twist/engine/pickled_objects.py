"""Which Python objects a checkpoint's pickle would import, read from its opcodes without unpickling anything.

``torch.load(weights_only=True)`` refuses such files with messages that differ from one global to the next
(and, for a raw pickle, stop at an opcode before any global is seen), so the refusal is explained from the
file itself: a file whose pickle is complete and imports a global that the weights-only unpickler does not
allow holds a Python object; one whose pickle ends early is truncated.
"""
from __future__ import annotations

import _compat_pickle
import pickletools
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO

import torch

_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
               "BINUNICODE8"}
_MEMO_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_NON_PUSHING_OPS = {"PROTO", "FRAME", "MEMOIZE", "STOP", *_MEMO_PUT_OPS}
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_PICKLES = 5  # torch's pre-zip format: magic number, protocol, system info, the object, storage keys


@dataclass(frozen=True)
class PickleScan:
    complete: bool        # the (first) pickle ran to its STOP opcode
    globals: list[str]    # "module.name" of each global imported by the complete pickles, in order


def _python3_name(module: str, attr: str) -> str:
    """What unpickling imports for a protocol-2 global: Python 2 names (``__builtin__.eval``) are mapped."""
    module, attr = _compat_pickle.NAME_MAPPING.get((module, attr), (module, attr))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{attr}"


def _globals_of_one_pickle(stream: IO[bytes]) -> list[str]:
    """The globals of the pickle starting at the stream's position; ValueError if it ends before STOP.

    STACK_GLOBAL (protocol 4+) takes its module and name from the stack, so the strings pushed (and
    memoised) before it are followed; any other push is tracked as a non-string.
    """
    found: list[str] = []
    pushed: list[str | None] = []
    memo: dict[int, str | None] = {}
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name == "GLOBAL" or name == "INST":
            found.append(_python3_name(*str(arg).split(" ", 1)))
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            module, attr = (pushed[-2:] if len(pushed) >= 2 else [None, None])
            found.append(f"{module}.{attr}" if isinstance(module, str) and isinstance(attr, str)
                         else "an unnamed global")
            pushed.append(None)
        elif name in _STRING_OPS:
            pushed.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in _MEMO_PUT_OPS:
            memo[int(arg)] = pushed[-1] if pushed else None
        elif name in _MEMO_GET_OPS:
            pushed.append(memo.get(int(arg)))
        elif name not in _NON_PUSHING_OPS:
            pushed.append(None)
    return found


def _open_pickles(path: str, stack: ExitStack) -> tuple[IO[bytes], int]:
    """The stream holding the file's pickle(s), and how many pickles may follow one another in it."""
    if zipfile.is_zipfile(path):
        archive = stack.enter_context(zipfile.ZipFile(path))
        member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
        if member is None:
            raise ValueError("a zip archive without data.pkl")
        return stack.enter_context(archive.open(member)), 1
    stream = stack.enter_context(open(path, "rb"))
    if stream.read(4) == ZIP_MAGIC:
        raise ValueError("a zip archive cut short (no central directory)")
    stream.seek(0)
    return stream, LEGACY_PICKLES


def scan_pickle(path: str) -> PickleScan:
    """The globals ``path`` would import, read without unpickling; ``complete`` False when it is cut short.

    Of a stream of several pickles (torch's legacy format) only those read to their end count, and the
    stream is complete when its first one is: the rest may be raw tensor data or the end of the file.
    """
    found: list[str] = []
    try:
        with ExitStack() as stack:
            stream, count = _open_pickles(path, stack)
            for index in range(count):
                try:
                    found += _globals_of_one_pickle(stream)
                except ValueError:
                    return PickleScan(index > 0, found)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return PickleScan(False, found)
    return PickleScan(True, found)


def allowed_globals() -> set[str]:
    """The globals ``torch.load(weights_only=True)`` admits: its defaults and any added as safe globals."""
    from torch import _weights_only_unpickler

    allowed = set(_weights_only_unpickler._get_allowed_globals())
    for entry in torch.serialization.get_safe_globals():
        obj, name = entry if isinstance(entry, tuple) else (entry, None)
        allowed.add(name or f"{obj.__module__}.{obj.__qualname__}")
    return allowed


def python_objects(path: str) -> tuple[list[str], bool]:
    """The distinct globals in ``path`` that weights-only loading refuses, and whether its pickle is complete."""
    scan = scan_pickle(path)
    allowed = allowed_globals()
    refused = [name for name in dict.fromkeys(scan.globals) if name not in allowed]
    return refused, scan.complete
