"""A crafted pickle that runs a command when unpickled, given to every command and library function that
reads a checkpoint: each refuses it cleanly (a non-zero exit or a project error) and the command never runs.

The payload's reduce calls ``os.system`` (or ``exec``) to create a marker file; the first test shows that
plain unpickling does create it, so that the marker's absence afterwards means something."""
import importlib.util
import os
import pickle

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from twist.engine.checkpoint import CheckpointError

HAS_MMSEG = importlib.util.find_spec("mmseg") is not None
HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None


class RunsShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class RunsPython:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


class Crafted(dict):
    """The crafted files by kind (path strings), the folder they are in and the marker their payload creates."""

    def __init__(self, files: dict, root):
        super().__init__({kind: str(path) for kind, path in files.items()})
        self.root, self.marker = root, root / "MARKER"

    def assert_no_payload_ran(self):
        assert not self.marker.exists(), "the crafted pickle ran its payload"


@pytest.fixture
def crafted(tmp_path):
    """``.pth`` (torch.save) and ``.pkl`` (raw pickle) files laid out like real weights, one tensor a payload."""
    marker = tmp_path / "MARKER"
    files = {}
    files["pth"] = tmp_path / "crafted.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1), "bn1.weight": RunsShell(marker)}, "epoch": 1},
               files["pth"])
    files["pkl"] = tmp_path / "crafted.pkl"
    with open(files["pkl"], "wb") as f:
        pickle.dump({"model": {"stem.conv1.weight": np.zeros(1), "stem.conv1.norm.weight": RunsPython(marker)},
                     "__author__": "twist", "matching_heuristics": True}, f)
    files["object_array.pkl"] = tmp_path / "object_array.pkl"  # the payload inside an admitted numpy array
    with open(files["object_array.pkl"], "wb") as f:
        pickle.dump({"model": {"stem.conv1.weight": np.array([RunsShell(marker)], dtype=object)},
                     "__author__": "twist"}, f, protocol=2)
    return Crafted(files, tmp_path)


def test_the_crafted_files_do_run_code_when_unpickled(crafted):
    for name in ("pkl", "object_array.pkl"):
        with open(crafted[name], "rb") as f:
            pickle.load(f)
        assert crafted.marker.exists(), name
        crafted.marker.unlink()
    torch.load(crafted["pth"], weights_only=False)
    assert crafted.marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_the_restricted_pkl_reader_admits_arrays_numbers_strings_and_containers(tmp_path, protocol):
    from collections import OrderedDict

    from twist.convert.detectron2 import read_detectron2_pkl

    model = OrderedDict([("stem.conv1.weight", np.arange(6, dtype=np.float32).reshape(1, 2, 3)),
                         ("fortran", np.asfortranarray(np.ones((2, 3)))), ("count", np.int64(7)),
                         ("names", np.array(["a", "b"])), ("scale", 0.5)])
    data = {"model": model, "__author__": "twist", "matching_heuristics": True, "tags": {"x"}, "raw": b"\x00\xff"}
    written = {"numpy2.pkl": pickle.dumps(data, protocol=protocol)}
    if protocol < 4:  # numpy 1 named its array functions numpy.core (GLOBAL opcodes: plain text, no lengths)
        written["numpy1.pkl"] = written["numpy2.pkl"].replace(b"numpy._core", b"numpy.core")
        assert b"numpy.core.multiarray\n_reconstruct" in written["numpy1.pkl"]
    for name, blob in written.items():
        (tmp_path / name).write_bytes(blob)
        loaded = read_detectron2_pkl(str(tmp_path / name))
        assert list(loaded["model"]) == list(model) and loaded["tags"] == {"x"} and loaded["raw"] == b"\x00\xff"
        assert all(np.array_equal(loaded["model"][k], v) for k, v in model.items())


def test_library_functions_refuse(crafted):
    from twist.engine.checkpoint import load_weights_only, read_torch_file
    from twist.models.pretrained import load_backbone_weights

    for path in crafted.values():
        for load in (load_weights_only, read_torch_file, load_backbone_weights):
            with pytest.raises(CheckpointError, match="crafted|object_array"):
                load(path)
    crafted.assert_no_payload_ran()


def test_the_restricted_pkl_reader_names_the_file_and_the_global(crafted):
    from twist.convert.detectron2 import read_detectron2_pkl

    for name, where in (("pkl", "builtins.exec"), ("object_array.pkl", "posix.system")):
        with pytest.raises(CheckpointError) as refused:
            read_detectron2_pkl(crafted[name])
        message = str(refused.value)
        assert crafted[name] in message and where in message and len(message.splitlines()) == 1
    crafted.assert_no_payload_ran()


def test_twist_train_refuses_a_crafted_checkpoint_to_resume(crafted, capsys):
    from twist.cli.train import main as train_main

    out = crafted.root / "run"
    out.mkdir()
    os.replace(crafted["pth"], out / "checkpoint.pth")
    config = crafted.root / "tiny.yaml"
    config.write_text("train:\n  epochs: 1\n")
    assert train_main(["--config", str(config), "--output-dir", str(out), *TINY]) != 0
    assert "checkpoint.pth" in capsys.readouterr().err
    crafted.assert_no_payload_ran()


@pytest.mark.parametrize("protocol", ["linear", "knn", "semisup", "cluster"])
def test_twist_eval_refuses_a_crafted_checkpoint(crafted, capsys, protocol):
    from twist.cli.eval import main as eval_main

    for name in ("pth", "pkl"):
        code = eval_main([protocol, "--checkpoint", crafted[name], "--output-dir", str(crafted.root / protocol),
                          "device=cpu", "data.dataset=synthetic"])
        assert code != 0 and crafted[name] in capsys.readouterr().err
    crafted.assert_no_payload_ran()


def test_twist_convert_refuses_a_crafted_checkpoint_for_every_target(crafted, capsys):
    from twist.cli.convert import main as convert_main
    from twist.convert import TARGETS

    for name in ("pth", "pkl"):
        assert convert_main(["--inspect", crafted[name]]) != 0
        for target in TARGETS:
            output = crafted.root / ("out.pkl" if target == "detectron2" else "out.pth")
            assert convert_main(["--to", target, crafted[name], str(output)]) != 0
            assert crafted[name] in capsys.readouterr().err and not output.exists()
    crafted.assert_no_payload_ran()


@pytest.mark.parametrize("engine", ["detectron2", "mmseg"])
def test_twist_trials_refuses_a_crafted_pretraining_checkpoint(crafted, capsys, engine):
    from twist.cli.trials import main as trials_main

    config = (os.path.join("detection", "configs", "voc_faster_rcnn_R_50_FPN_24k.yaml") if engine == "detectron2"
              else os.path.join("segmentation", "configs", "fpn_r50_twist_4xb4-20k_voc12aug-512x512.py"))
    for name in ("pth", "pkl"):
        code = trials_main(["run", "--engine", engine, "--config", config, "--pretrained", crafted[name], "--trials",
                            "1", "--output-dir", str(crafted.root / f"trials_{engine}_{name}")])
        assert code != 0 and crafted[name] in capsys.readouterr().err
    crafted.assert_no_payload_ran()


@pytest.mark.skipif(not HAS_MMSEG, reason="the seg extra (mmsegmentation on mmcv-lite) is not installed")
def test_twist_trials_with_crafted_segmentation_weights_fails_without_running_them(crafted):
    from twist.cli.trials import main as trials_main

    config = os.path.join("segmentation", "configs", "fpn_r50_twist_4xb4-20k_voc12aug-512x512.py")
    code = trials_main(["run", "--engine", "mmseg", "--config", config, "--weights", crafted["pth"], "--trials", "1",
                        "--output-dir", str(crafted.root / "trials")])
    assert code != 0
    crafted.assert_no_payload_ran()


@pytest.mark.skipif(not HAS_MMSEG, reason="the seg extra (mmsegmentation on mmcv-lite) is not installed")
def test_segmentation_train_refuses_crafted_weights(crafted):
    from twist_segmentation.train import main as seg_main

    config = os.path.join("segmentation", "configs", "fpn_r50_twist_4xb4-20k_voc12aug-512x512.py")
    for name in ("pth", "pkl"):
        with pytest.raises(SystemExit) as stop:
            seg_main([config, "--work-dir", str(crafted.root / "seg"), "--weights", crafted[name]])
        assert stop.value.code not in (0, None) and crafted[name] in str(stop.value)
    crafted.assert_no_payload_ran()


def test_detection_checks_refuse_crafted_weights(crafted):
    from twist_detection.checks import check_weights_fit_config, weights_author
    from twist_detection.config_files import load_config_file, lookup

    cfg = load_config_file(os.path.join("detection", "configs", "voc_faster_rcnn_R_50_FPN_24k.yaml"))
    for path in crafted.values():
        if path.endswith(".pkl"):
            with pytest.raises(CheckpointError, match="crafted|object_array"):
                weights_author(path)
        with pytest.raises(CheckpointError, match="crafted|object_array"):
            check_weights_fit_config(path, lambda key: lookup(cfg, key), "voc.yaml")
    crafted.assert_no_payload_ran()


@pytest.mark.skipif(not HAS_DETECTRON2, reason="detectron2 is installed from its own guide, not the package index")
def test_detectron2_train_net_refuses_crafted_weights_before_detectron2_reads_them(crafted):
    from twist_detection.train_net import build_config, parse_args

    for path in crafted.values():
        args = parse_args(["--config-file", os.path.join("detection", "configs", "voc_faster_rcnn_R_50_FPN_24k.yaml"),
                           "MODEL.WEIGHTS", path, "OUTPUT_DIR", str(crafted.root / "d2")])
        with pytest.raises(SystemExit) as stop:
            build_config(args)
        assert path in str(stop.value)
    crafted.assert_no_payload_ran()


@pytest.mark.skipif(not HAS_DETECTRON2, reason="detectron2 is installed from its own guide, not the package index")
def test_twist_trials_with_crafted_detectron2_weights_fails_without_running_them(crafted):
    from twist.cli.trials import main as trials_main

    config = os.path.join("detection", "configs", "voc_faster_rcnn_R_50_FPN_24k.yaml")
    code = trials_main(["run", "--engine", "detectron2", "--config", config, "--weights", crafted["pkl"], "--trials",
                        "1", "--output-dir", str(crafted.root / "trials"), "MODEL.DEVICE", "cpu"])
    assert code != 0
    crafted.assert_no_payload_ran()
