"""A checkpoint holding a Python object is refused as unsafe, naming the object, whatever the object and however
the file was pickled; "truncated" is kept for files that really are cut short. The payloads would write a marker
file when unpickled: its absence afterwards shows that none of them ran."""
import builtins
import os
import pickle

import pytest
import torch

from twist.engine.checkpoint import CheckpointError, UnsafeCheckpointError, load_weights_only, read_torch_file
from twist.models.pretrained import load_backbone_weights


class RunsShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class RunsEval:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.eval, (f"open({self.marker!r}, 'w').close()",)


class Settings:  # a plain instance: unpickling it imports this module, which is code from elsewhere too
    def __init__(self, marker):
        self.marker = str(marker)


PAYLOADS = {"shell": (RunsShell, "posix.system"), "eval": (RunsEval, "builtins.eval"),
            "instance": (Settings, f"{__name__}.Settings")}
WRITERS = {
    "torch.save": lambda obj, path: torch.save(obj, path),
    "torch.save legacy": lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False),
    "pickle protocol 2": lambda obj, path: pickle.dump(obj, open(path, "wb"), protocol=2),
    "pickle protocol 5": lambda obj, path: pickle.dump(obj, open(path, "wb"), protocol=5),
}


@pytest.fixture(params=list(WRITERS))
def writer(request):
    return WRITERS[request.param]


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_every_payload_is_refused_as_unsafe_and_none_runs(tmp_path, writer, payload):
    cls, global_name = PAYLOADS[payload]
    marker = tmp_path / "MARKER"
    path = str(tmp_path / "crafted.pth")
    writer({"backbone": {"conv1.weight": torch.zeros(1)}, "extra": cls(marker), "epoch": 1}, path)
    for load in (load_weights_only, lambda p: read_torch_file(p)[0], load_backbone_weights):
        with pytest.raises(UnsafeCheckpointError) as err:
            load(path)
        message = str(err.value)
        assert "crafted.pth" in message and global_name in message and "not loaded" in message, message
        assert "truncated" not in message and "\n" not in message
    assert not marker.exists()


def test_the_payload_would_run_if_unpickled(tmp_path):
    """The marker check above can fail: plain unpickling of the same file does write the marker."""
    marker = tmp_path / "MARKER"
    WRITERS["torch.save"]({"extra": RunsShell(marker)}, tmp_path / "crafted.pth")
    torch.load(tmp_path / "crafted.pth", weights_only=False)
    assert marker.exists()


def test_the_option_to_trust_is_named_only_by_callers_that_have_it(tmp_path):
    path = str(tmp_path / "crafted.pth")
    torch.save({"extra": Settings(tmp_path / "MARKER")}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_weights_only(path)
    assert "--trust-checkpoint" not in str(err.value) and err.value.path == path
    with pytest.raises(UnsafeCheckpointError, match="pass --trust-checkpoint"):
        load_backbone_weights(path)


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9])
def test_real_truncation_still_says_truncated(tmp_path, writer, cut):
    path = tmp_path / "cut.pth"
    writer({"backbone": {"conv1.weight": torch.randn(64, 3, 7, 7)}, "epoch": 1}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_weights_only(str(path))
    assert not isinstance(err.value, UnsafeCheckpointError)
