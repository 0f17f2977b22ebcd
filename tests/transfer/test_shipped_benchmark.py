"""The shipped transfer benchmark config: every file it names exists and loads under its own schema,
every pretraining reads the train digits only, and the supervised run trains on every train label."""
import glob
import os

from twist.config import load_config
from twist.eval.config import EVAL
from twist.transfer.benchmark import load_benchmark

SHIPPED = "configs/transfer/digit_scenes.yaml"


def test_the_transfer_configs_are_found():
    assert set(glob.glob("configs/transfer/*.yaml")) == {SHIPPED, "configs/transfer/supervised_digits.yaml"}


def test_every_file_the_benchmark_names_loads_and_reads_only_train_digits():
    bench = load_benchmark(SHIPPED)
    assert bench.trials == 5 and [i.name for i in bench.initialisations] == [
        "twist", "random", "supervised", "barlow_twins", "wmse"]
    assert [(p.name, p.engine) for p in bench.protocols] == [
        ("segmentation", "mmseg"), ("tenth_rate_segmentation", "mmseg"), ("frozen_segmentation", "mmseg"),
        ("detection", "detectron2")]
    # make transfer runs the tenth-rate fine-tuning (and detection); the others are diagnostics
    assert [p.name for p in bench.chosen(None)] == ["tenth_rate_segmentation", "detection"]
    for protocol in bench.protocols:
        assert os.path.isfile(protocol.config), protocol
    for init in bench.initialisations:
        if init.pretrain:
            cfg = load_config(init.pretrain, [*bench.pretrain_overrides, *init.overrides])
            assert cfg["data"]["dataset"] == "digits" and cfg["data"]["train_split"] == "train"
            assert cfg["model"]["backbone"] == "resnet18" and not cfg["model"]["small_input"]  # it converts
        elif init.supervised:
            cfg = EVAL.load(init.supervised, [*bench.supervised_overrides, *init.overrides])
            assert cfg["data"]["train_split"] == "train" and cfg["semisup"]["fraction"] == 1.0
            assert cfg["model"]["backbone"] == "resnet18"
        else:
            assert init.name == "random"
    wmse = next(init for init in bench.initialisations if init.name == "wmse")
    assert load_config(wmse.pretrain, [*bench.pretrain_overrides, *wmse.overrides])["wmse"]["w_eps"] == 1e-4
