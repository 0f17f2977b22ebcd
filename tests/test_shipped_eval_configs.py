"""Every shipped evaluation config loads under the evaluation schema and runs its protocol end to end
at reduced size on CPU, on a freshly initialised backbone of the architecture it is written for.

Only the resolution, batch, epochs and the machine's data location are overridden."""
import glob
import os

import numpy as np
import pytest
from PIL import Image

from twist.cli.eval import main as eval_main
from twist.engine.checkpoint import atomic_torch_save
from twist.eval.config import EVAL
from twist.models.backbones import build_backbone

CONFIGS = sorted(glob.glob("configs/eval/*.yaml"))
REDUCED = ["data.image_size=32", "features.batch_size=8", "linear.batch_size=8", "linear.epochs=1",
           "semisup.batch_size=4", "semisup.epochs=1", "data.num_workers=0", "progress_bar=false"]


def _folder(root):
    rng = np.random.default_rng(0)
    names = []
    for split in ("train", "val"):
        for cls in ("n001", "n002"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                name = f"{cls}_{split}{i}.png"
                Image.fromarray(rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8)).save(root / split / cls / name)
                names.append(name) if split == "train" else None
    (root / "1percent.txt").write_text("\n".join(names[::2]) + "\n")
    return root


def test_every_eval_config_is_found():
    assert {os.path.basename(p) for p in CONFIGS} == {
        "digits.yaml", "imagenet_linear_resnet50.yaml", "imagenet_linear_deit_small.yaml",
        "imagenet_linear_vit_base.yaml", "imagenet_semisup_1pct_resnet50.yaml", "imagenet_semisup_10pct_resnet50.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_eval_config_runs_its_protocol(path, tmp_path):
    shipped = EVAL.load(path)
    protocol = "linear" if "linear" in path else "semisup" if "semisup" in path else "knn"
    arch = "deit_small" if "deit" in path else "vit_base" if "vit_base" in path else shipped["model"]["backbone"]
    atomic_torch_save(build_backbone(arch, image_size=32).module.state_dict(), str(tmp_path / "w.pth"))
    overrides = list(REDUCED)
    if shipped["data"]["dataset"] == "folder":
        data = _folder(tmp_path / "data")
        overrides.append(f"data.path={data}")
        if shipped["semisup"]["subset_file"]:
            overrides.append(f"semisup.subset_file={data / '1percent.txt'}")
    code = eval_main([protocol, "--checkpoint", str(tmp_path / "w.pth"), "--config", path, "--output-dir",
                      str(tmp_path / "out"), *overrides])
    assert code == 0
    assert os.path.isfile(tmp_path / "out" / "results.json")
