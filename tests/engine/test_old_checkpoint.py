"""A checkpoint as twist wrote it before the method modules (twist.methods) existed still resumes,
evaluates and converts. Its layout is spelt out here from the old key names, not taken from the
code that writes checkpoints today, so that a change of that code cannot hide a break."""
import json
import os

import torch

from tests.conftest import TINY
from twist.cli.convert import main as convert_main
from twist.cli.eval import main as eval_main
from twist.config import load_config
from twist.engine.checkpoint import load_weights_only
from twist.engine.trainer import train

# The entries of the old checkpoint.pth, and the order of its stored config's sections: every
# method's section sat at the top level beside the engine's, model.head inside model.
OLD_ENTRIES = ("model", "backbone", "optimizer", "scaler", "step", "epoch", "rng", "config")
OLD_SECTIONS = ("seed", "device", "method", "model", "barlow_twins", "wmse", "loss", "data", "augment", "optim",
                "train", "eval", "self_label", "teacher", "monitor", "logging")
OVERRIDES = TINY + ["model.head.dropout=0.2", "data.num_samples=48"]  # 6 steps per epoch, 12 in all


def _old_layout(state):
    config = state["config"]
    assert set(config) == set(OLD_SECTIONS)  # the config's sections are the old ones
    return {**{key: state[key] for key in OLD_ENTRIES}, "config": {key: config[key] for key in OLD_SECTIONS}}


def test_an_old_layout_checkpoint_resumes_evaluates_and_converts(tmp_path):
    cfg = load_config(None, OVERRIDES)
    straight, old = tmp_path / "straight", tmp_path / "old"
    train(cfg, str(straight))
    half = tmp_path / "half"
    train(cfg, str(half), max_steps=9)
    os.makedirs(old)
    torch.save(_old_layout(load_weights_only(str(half / "checkpoint.pth"))), old / "checkpoint.pth")

    resumed = train(load_config(None, OVERRIDES), str(old))
    assert resumed["finished"] and resumed["step"] == 12
    a, b = load_weights_only(str(straight / "checkpoint.pth")), load_weights_only(str(old / "checkpoint.pth"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key

    torch.save(_old_layout(b), tmp_path / "finished_old.pth")
    evaluated = tmp_path / "knn"
    assert eval_main(["knn", "--checkpoint", str(tmp_path / "finished_old.pth"), "--output-dir", str(evaluated),
                      "knn.k=5", "progress_bar=false", "data.num_workers=0"]) == 0
    results = json.load(open(evaluated / "results.json"))
    assert results["weights_entry"] == "backbone" and results["num_train"] == 48
    converted = tmp_path / "torchvision.pth"
    assert convert_main(["--to", "torchvision", str(tmp_path / "finished_old.pth"), str(converted)]) == 0
    tv = load_weights_only(str(converted))
    assert torch.equal(tv["conv1.weight"], b["backbone"]["conv1.weight"])
