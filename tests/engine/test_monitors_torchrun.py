"""The monitors under torchrun (2 gloo processes): one kNN figure from the rank-sharded features, equal
to twist-eval knn of the checkpoint in one process, and one probe accuracy over both ranks' images."""
import json
import os
import socket
import subprocess
import sys

from tests.conftest import TINY
from twist.cli.eval import main as eval_main

MONITORS = ["monitor.knn_every=1", "monitor.k=5", "monitor.temperature=0.2", "monitor.max_train_images=0",
            "monitor.max_val_images=0", "monitor.probe=true", "train.log_every=2", "train.epochs=1",
            "eval.enabled=false", "data.num_samples=48"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_give_one_knn_figure_and_one_probe_accuracy(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_port()}",
               "-m", "twist.cli.train", "--config", "configs/demo/digits.yaml", "--output-dir", str(out), *TINY,
               *MONITORS]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in open(out / "log.jsonl")]
    [knn] = [r for r in records if r["kind"] == "monitor" and r["monitor"] == "knn"]
    probe = [r for r in records if r["kind"] == "monitor" and r["monitor"] == "probe"]
    assert knn["step"] == 3 and knn["num_train"] == 48  # 48 images / (2 ranks x 8) = 3 steps
    assert [r["step"] for r in probe] == [2, 3] and sum(r["images"] for r in probe) == 3 * 2 * 8
    assert eval_main(["knn", "--checkpoint", f"{out}/checkpoint.pth", "--output-dir", str(tmp_path / "knn"),
                      "knn.k=5", "knn.temperature=0.2", "data.train_split=train", "data.val_split=val",
                      "progress_bar=false", "data.num_workers=0"]) == 0
    results = json.load(open(tmp_path / "knn" / "results.json"))
    assert (knn["knn_top1"], knn["knn_top5"], knn["num_val"]) == (results["top1"], results["top5"],
                                                                   results["num_val"])
