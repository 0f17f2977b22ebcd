"""data.skip_corrupt: every skipped file named, a limit past which the run stops, no silent no-op."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY
from twist.cli.train import main
from twist.config import load_config
from twist.data import DatasetError
from twist.engine.trainer import train


def _image_folder(root, corrupt: int, total: int = 32) -> list[str]:
    """``total`` 16 px PNGs under root/train/<class>/, the first ``corrupt`` of them garbage; their paths."""
    broken = []
    for i in range(total):
        folder = root / "train" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:02d}.png"
        if i < corrupt:
            path.write_bytes(b"not a png")
            broken.append(str(path))
        else:
            pixels = np.random.default_rng(i).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path)
    return broken


def _overrides(root, *extra):
    return [o for o in TINY if not o.startswith("data.dataset")] + [
        "data.dataset=folder", f"data.path={root}", "data.skip_corrupt=true", *extra]


def _records(out, kind):
    return [r for r in (json.loads(line) for line in open(os.path.join(out, "log.jsonl"))) if r["kind"] == kind]


def test_a_run_where_every_image_is_unreadable_stops_with_an_error(tmp_path, capsys):
    _image_folder(tmp_path / "data", corrupt=32)
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text("eval:\n  enabled: false\n")
    args = ["--config", str(config), "--output-dir", str(out), *_overrides(tmp_path / "data")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "twist-train: error:" in err and "unreadable" in err and "Traceback" not in err
    assert not any(name.endswith(".pth") for name in os.listdir(out))


def test_every_skipped_file_is_named_in_the_log_and_on_stderr(tmp_path, capsys):
    broken = _image_folder(tmp_path / "data", corrupt=2)
    out = str(tmp_path / "run")
    # Through a worker process: the skipped files' names come back with the batch.
    cfg = load_config(None, _overrides(tmp_path / "data", "data.max_skipped_fraction=0.1", "data.num_workers=1"))
    assert train(cfg, out)["finished"]
    skipped = _records(out, "skipped")
    assert sorted(r["file"] for r in skipped) == broken  # each named once, though read in both epochs
    assert all("cannot read image" in r["error"] for r in skipped)
    err = capsys.readouterr().err
    assert all(path in err for path in broken)
    assert _records(out, "train")[-1]["skipped_images"] == 4  # two files, two epochs


def test_more_skipped_files_than_the_limit_stop_the_run(tmp_path):
    _image_folder(tmp_path / "data", corrupt=4)  # 4 of 32 = 12.5 %
    cfg = load_config(None, _overrides(tmp_path / "data", "data.max_skipped_fraction=0.1"))
    with pytest.raises(DatasetError, match=r"data\.max_skipped_fraction=0\.1") as stopped:
        train(cfg, str(tmp_path / "run"))
    assert "4 of the 32 images" in str(stopped.value)
