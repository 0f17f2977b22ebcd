"""``twist-eval`` under torchrun on 2 gloo processes gives the figures of one process, and counts every
val image once (15 val images: shards of 8 and 7, where a padding sampler would count one twice).

Fine-tuning (semisup) runs in float64 on both sides. In float32 the two runs
reorder sums differently (2 ranks reduce across processes; each machine's kernels block them its
own way), and during fine-tuning a 1e-7 difference can flip a near-tie ReLU or max-pool choice and
move early-layer updates by percents: a float32 comparison then passes on one machine and fails on
another. In float64 the two runs agree to about 1e-14 of the weights, while a missing cross-rank
reduction (per-rank batch norm statistics) moves them by a multiple of the update itself. The
linear probe trains a classifier on frozen features, where float32 rounding stays at its own size.
"""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from tests.conftest import TINY
from twist.cli.eval import main as eval_main
from twist.config import load_config
from twist.engine.checkpoint import load_weights_only
from twist.engine.trainer import train

QUIET = ["progress_bar=false", "data.num_workers=0"]
TRAINED = ("linear", "semisup")
FLOAT64 = ("semisup",)
FLOAT64_LAUNCHER = """import sys
import torch
torch.set_default_dtype(torch.float64)
from twist.cli.eval import main
sys.exit(main(sys.argv[1:]))
"""
PROTOCOL_ARGS = {
    "knn": ["knn.k=5"],
    "cluster": [],
    "linear": ["linear.mode=augmented", "linear.epochs=2", "linear.batch_size=16", "linear.lr=0.5"],
    "semisup": ["semisup.fraction=0.27", "semisup.epochs=2", "semisup.batch_size=8", "semisup.lr_backbone=0.0005",
                "semisup.lr_head=0.005"],
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    train(load_config(None, TINY + ["data.num_samples=60"]), str(out))
    yield str(out / "checkpoint.pth")
    shutil.rmtree(out, ignore_errors=True)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _two_ranks(args: list[str], tmp_path, float64: bool) -> subprocess.CompletedProcess:
    launcher = ["-m", "twist.cli.eval"]
    if float64:
        script = tmp_path / "eval_float64.py"
        script.write_text(FLOAT64_LAUNCHER)
        launcher = [str(script)]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={_port()}", *launcher, args[0], "--output-dir",
                           str(tmp_path / "two"), *args[1:]],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("protocol", list(PROTOCOL_ARGS))
def test_two_ranks_equal_one_process(protocol, checkpoint, tmp_path, request):
    args = [protocol, "--checkpoint", checkpoint, *PROTOCOL_ARGS[protocol], *QUIET]
    float64 = protocol in FLOAT64
    if float64:
        request.getfixturevalue("float64_default")
    assert eval_main([*args[:1], "--output-dir", str(tmp_path / "one"), *args[1:]]) == 0
    proc = _two_ranks(args, tmp_path, float64)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.load(open(tmp_path / "one" / "results.json"))
    two = json.load(open(tmp_path / "two" / "results.json"))
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert proc.stdout.count("results:") == 1  # only rank 0 reports and writes
    if protocol == "cluster":
        assert two["num_samples"] == 15
        for key in ("nmi", "ami", "ari", "acc", "acc_majority", "acc_top5", "num_clusters_used"):
            assert two[key] == one[key], key
    else:
        assert two["num_val"] == 15
        assert two["top1"] == one["top1"] and two["top5"] == one["top5"]
    if protocol == "semisup":
        # The labelled subset is a function of the labels, the fraction and the seed, not of the ranks.
        assert two["subset_per_class"] == one["subset_per_class"] and two["subset_size"] == one["subset_size"]
    if protocol in TRAINED:
        _assert_same_training(tmp_path / "one", tmp_path / "two", checkpoint, protocol, one, two)


def _assert_same_training(one_dir, two_dir, pretrained: str, protocol: str, one: dict, two: dict) -> None:
    """Both runs trained the same weights: their difference is a tiny fraction of what training changed."""
    a = load_weights_only(one_dir / "checkpoint.pth")["model"]
    b = load_weights_only(two_dir / "checkpoint.pth")["model"]
    assert a.keys() == b.keys()
    expected_dtype, rtol, atol = (torch.float64, 1e-9, 1e-10) if protocol in FLOAT64 else (torch.float32, 1e-4, 1e-5)
    for key in a:
        assert a[key].dtype == b[key].dtype
        if a[key].is_floating_point():
            assert a[key].dtype == expected_dtype, key
            torch.testing.assert_close(b[key], a[key], rtol=rtol, atol=atol, msg=key)
    if protocol == "semisup":  # the fine-tuned first convolution really moved, by far more than the tolerance
        start = load_weights_only(pretrained)["backbone"]["conv1.weight"].double()
        moved = (a["features.backbone.conv1.weight"] - start).abs().max()
        assert moved > 1e-5
    losses = lambda r: [e["loss"] for e in r["history"]]  # noqa: E731
    assert losses(two) == pytest.approx(losses(one), rel=rtol)
