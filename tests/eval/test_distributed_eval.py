"""``twist-eval`` under torchrun on 2 gloo processes gives the figures of one process, and counts every
val image once (15 val images: shards of 8 and 7, where a padding sampler would count one twice)."""
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
PROTOCOL_ARGS = {
    "knn": ["knn.k=5"],
    "cluster": [],
    "linear": ["linear.mode=augmented", "linear.epochs=2", "linear.batch_size=16", "linear.lr=0.5"],
    # Small learning rates: fine-tuning this tiny pretrained net at larger ones is unstable (the loss
    # rises), which turns float rounding (1e-7 after a step) into percent-level differences in 4 steps.
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


@pytest.mark.parametrize("protocol", list(PROTOCOL_ARGS))
def test_two_ranks_equal_one_process(protocol, checkpoint, tmp_path):
    args = [protocol, "--checkpoint", checkpoint, *PROTOCOL_ARGS[protocol], *QUIET]
    # One thread, as each rank below has: another thread count reorders float sums, and in fine-tuning
    # that alone can flip a near-tie ReLU or max-pool choice and move some updates by up to 10 %.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert eval_main([*args[:1], "--output-dir", str(tmp_path / "one"), *args[1:]]) == 0
    finally:
        torch.set_num_threads(threads)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={_port()}", "-m", "twist.cli.eval", args[0], "--output-dir",
                           str(tmp_path / "two"), *args[1:]],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.load(open(tmp_path / "one" / "results.json"))
    two = json.load(open(tmp_path / "two" / "results.json"))
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert proc.stdout.count("results:") == 1  # only rank 0 reports and writes
    if protocol == "cluster":
        assert two["num_samples"] == 15
        for key in ("nmi", "ami", "ari", "acc", "acc_majority", "acc_top5", "num_clusters_used"):
            assert two[key] == one[key], key
    elif protocol == "semisup":
        # The labelled subset is a function of the labels, the fraction and the seed, not of the ranks.
        assert two["subset_per_class"] == one["subset_per_class"] and two["subset_size"] == one["subset_size"]
        # An almost untrained classifier of 15 images has near-ties that rounding may flip: one image at most.
        assert two["num_val"] == 15
        assert abs(two["top1"] - one["top1"]) <= 1 / 15 + 1e-6 and abs(two["top5"] - one["top5"]) <= 1 / 15 + 1e-6
    else:
        assert two["num_val"] == 15
        assert two["top1"] == one["top1"] and two["top5"] == one["top5"]
    if protocol in ("linear", "semisup"):
        a = load_weights_only(tmp_path / "one" / "checkpoint.pth")["model"]
        b = load_weights_only(tmp_path / "two" / "checkpoint.pth")["model"]
        assert a.keys() == b.keys()
        for key in a:
            if a[key].is_floating_point():
                torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
        losses = lambda r: [e["loss"] for e in r["history"]]  # noqa: E731
        assert losses(two) == pytest.approx(losses(one), rel=1e-4)
