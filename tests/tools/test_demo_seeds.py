"""The seed x thread grid of the demo: its runs, its table and its verdict."""
import json

from twist_tools.demo_seeds import GOAL, Run, main, verdict

QUICK = ["train.epochs=1", "data.image_size=16", "optim.warmup_epochs=0", "eval.kmeans_baseline=false"]


def _metrics(acc, nmi, used=10, knn=0.98, pixels=0.97):
    return {"acc": acc, "nmi": nmi, "ami": nmi, "ari": acc, "num_clusters_used": used, "num_classes": 10,
            "knn_top1": knn, "pixels_knn_top1": pixels, "knn_k": 20, "knn_temperature": 0.07}


def test_the_verdict_names_each_condition_and_run_that_fails_it():
    good = {Run(s, 1): _metrics(0.96, 0.93) for s in range(3)}
    assert verdict(good) == []
    one_low = {**good, Run(3, 2): _metrics(0.92, 0.93)}
    assert verdict(one_low) == [f"ACC below {GOAL['acc_min']} in seed3_threads2"]
    low_mean = {Run(s, 1): _metrics(0.94, 0.93) for s in range(2)}
    assert verdict(low_mean) == ["mean ACC 0.940 below 0.95"]
    shared = {Run(0, 1): _metrics(0.97, 0.89, used=9)}
    assert verdict(shared) == ["NMI below 0.9 in seed0_threads1",
                               "not every digit has a cluster of its own in seed0_threads1"]
    tie = {**good, Run(1, 2): _metrics(0.96, 0.93, knn=0.97, pixels=0.97)}
    assert verdict(tie) == ["kNN on the features not above kNN on the raw pixels in seed1_threads2"]


def test_the_grid_runs_the_demo_writes_the_table_and_reuses_finished_runs(tmp_path):
    work, doc = tmp_path / "runs", tmp_path / "seeds.md"
    args = ["--seeds", "0", "1", "--threads", "1", "--work-dir", str(work), "--doc", str(doc), *QUICK]
    assert main(args) == 3  # one epoch does not reach the goal, and the exit code says so
    text = doc.read_text()
    for seed in (0, 1):
        metrics = json.loads((work / f"seed{seed}_threads1" / "metrics.json").read_text())
        assert f"| {seed} | 1 | {metrics['acc']:.3f} | {metrics['nmi']:.3f} |" in text
        knn = json.loads((work / f"seed{seed}_threads1" / "knn" / "results.json").read_text())
        assert knn["checkpoint"].endswith(f"seed{seed}_threads1/checkpoint.pth") and knn["num_val"] == 355
        assert f" | {knn['top1']:.3f} | " in text
        assert f"against {knn['baseline']['top1']:.3f} for the same vote on the raw pixels" in text
        assert f"k = {knn['k']}, T = {knn['temperature']})" in text
    assert "bare ResNet-18 training at" in text and "(24 px, batch 512: the demo's step)" in text
    assert "Goal (" in text and "not met" in text
    timing = (work / "seed0_threads1" / "wall_time.json").read_text()
    assert main(args) == 3 and (work / "seed0_threads1" / "wall_time.json").read_text() == timing
    assert doc.read_text().split("\n", 8)[8] == text.split("\n", 8)[8]  # the same table, the rate aside
