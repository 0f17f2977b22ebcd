"""``twist-eval``: every protocol end to end on a tiny pretraining run, as a user would call it."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import twist.eval.supervised as supervised
from twist.cli.eval import main as eval_main
from twist.config import load_config
from twist.engine.checkpoint import load_weights_only
from twist.engine.trainer import train

PROVENANCE = {"protocol", "checkpoint", "weights", "weights_entry", "backbone", "world_size", "config_sources"}
QUIET = ["progress_bar=false", "data.num_workers=0"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny pretraining run with its end-of-run cluster evaluation."""
    from tests.conftest import TINY

    out = str(tmp_path_factory.mktemp("pretrain"))
    train(load_config(None, TINY + ["data.num_samples=60", "eval.enabled=true"]), out)
    yield out
    shutil.rmtree(out, ignore_errors=True)


def _eval(protocol, out, *args):
    code = eval_main([protocol, "--output-dir", str(out), *args])
    path = os.path.join(out, "results.json")
    return code, (json.load(open(path)) if code == 0 else None)


def test_cluster_reproduces_the_end_of_run_evaluation(run_dir, tmp_path):
    code, results = _eval("cluster", tmp_path, "--checkpoint", f"{run_dir}/checkpoint.pth", *QUIET)
    assert code == 0
    trained = json.load(open(f"{run_dir}/metrics.json"))
    for key in ("nmi", "ami", "ari", "acc", "acc_majority", "num_samples", "num_clusters_used"):
        assert results[key] == trained[key], key
    assert results["num_samples"] == 15  # the synthetic val split: 60 // 4
    assert PROVENANCE <= set(results) and results["weights_entry"] == "backbone"
    for name in ("confusion.png", "predictions_grid.png", "predictions.npz", "config.yaml"):
        assert os.path.getsize(tmp_path / name) > 0, name
    # Nothing is written where the command was started.
    assert not os.path.exists("results.json") and not os.path.exists("confusion.png")


def test_knn_reads_backbone_only_weights_with_the_config_beside_them(run_dir, tmp_path):
    code, results = _eval("knn", tmp_path, "--checkpoint", f"{run_dir}/backbone.pth", "knn.k=5", *QUIET)
    assert code == 0
    assert results["weights_entry"] == "the file itself (a plain state dict)"
    assert results["config_sources"][0].endswith("config.yaml")
    assert results["k"] == 5 and results["num_train"] == 60 and results["num_val"] == 15
    assert 0 <= results["top1"] <= results["top5"] <= 1
    assert "baseline" not in results  # knn.pixel_baseline is off by default


def test_knn_pixel_baseline_is_the_same_vote_on_the_evaluation_view_pixels(run_dir, tmp_path):
    from tests.eval.test_knn import brute_force_knn
    from twist.eval.session import open_session

    code, results = _eval("knn", tmp_path / "knn", "--checkpoint", f"{run_dir}/checkpoint.pth", "knn.k=5",
                          "knn.pixel_baseline=true", *QUIET)
    assert code == 0
    session = open_session("knn", str(tmp_path / "session"), f"{run_dir}/checkpoint.pth", overrides=QUIET)

    def pixels(source):
        data = session.eval_dataset(source)
        items = [data[i] for i in range(len(data))]
        return np.stack([image.numpy().ravel() for image, _, _ in items]), np.array([label for _, label, _ in items])

    (train, train_labels), (val, val_labels) = (pixels(source) for source in session.train_and_val_sources())
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    top1, top5, _ = brute_force_knn(train, train_labels, val, val_labels, num_classes, k=5, temperature=0.07)
    base = results["baseline"]
    assert base["method"] == "kNN on raw pixels" and base["feature_dim"] == train.shape[1]
    assert (base["top1"], base["top5"]) == (top1 / 15, top5 / 15)


def test_linear_cached_equals_uncached(run_dir, tmp_path):
    common = ["--checkpoint", f"{run_dir}/checkpoint.pth", "linear.epochs=3", "linear.batch_size=16",
              "linear.lr=0.5", *QUIET]
    code_c, cached = _eval("linear", tmp_path / "cached", *common, "linear.mode=cached")
    code_u, uncached = _eval("linear", tmp_path / "uncached", *common, "linear.mode=uncached")
    assert code_c == code_u == 0
    assert cached["mode"] == "cached" and uncached["mode"] == "uncached"
    a = load_weights_only(tmp_path / "cached" / "checkpoint.pth")["model"]
    b = load_weights_only(tmp_path / "uncached" / "checkpoint.pth")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    assert [r["top1"] for r in cached["history"]] == [r["top1"] for r in uncached["history"]]
    assert [r["loss"] for r in cached["history"]] == pytest.approx([r["loss"] for r in uncached["history"]],
                                                                   rel=1e-4)


def test_linear_auto_mode_caches_small_datasets_and_augments_large_ones(run_dir, tmp_path):
    common = ["--checkpoint", f"{run_dir}/checkpoint.pth", "linear.epochs=1", "linear.batch_size=16", *QUIET]
    assert _eval("linear", tmp_path / "a", *common)[1]["mode"] == "cached"
    assert _eval("linear", tmp_path / "b", *common, "linear.cache_max_images=10")[1]["mode"] == "augmented"


def test_an_interrupted_linear_probe_resumes_to_the_same_classifier(run_dir, tmp_path, monkeypatch):
    common = ["--checkpoint", f"{run_dir}/checkpoint.pth", "linear.epochs=4", "linear.batch_size=16",
              "linear.mode=augmented", *QUIET]
    assert _eval("linear", tmp_path / "straight", *common)[0] == 0

    saves = []
    real_save = supervised.atomic_torch_save

    def crash_after_two_epochs(obj, path):
        if len(saves) == 2:
            raise KeyboardInterrupt("job killed")
        saves.append(obj["epoch"])
        real_save(obj, path)

    monkeypatch.setattr(supervised, "atomic_torch_save", crash_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        _eval("linear", tmp_path / "resumed", *common)
    monkeypatch.undo()
    assert load_weights_only(tmp_path / "resumed" / "checkpoint.pth")["epoch"] == 2
    code, resumed = _eval("linear", tmp_path / "resumed", *common)
    assert code == 0 and resumed["epochs"] == 4
    a = load_weights_only(tmp_path / "straight" / "checkpoint.pth")["model"]
    b = load_weights_only(tmp_path / "resumed" / "checkpoint.pth")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_semisup_fine_tunes_on_a_balanced_subset_and_from_scratch(run_dir, tmp_path):
    code, results = _eval("semisup", tmp_path / "pre", "--checkpoint", f"{run_dir}/checkpoint.pth",
                          "semisup.fraction=0.5", "semisup.epochs=2", "semisup.batch_size=8", *QUIET)
    assert code == 0
    assert results["subset_size"] == sum(results["subset_per_class"].values())
    assert 25 <= results["subset_size"] <= 35 and len(results["history"]) == 2
    before = load_weights_only(f"{run_dir}/backbone.pth")
    after = load_weights_only(tmp_path / "pre" / "checkpoint.pth")["model"]
    assert not torch.equal(before["layer1.0.conv1.weight"], after["features.backbone.layer1.0.conv1.weight"])

    code, scratch = _eval("semisup", tmp_path / "scratch", "--random-init", "data.dataset=synthetic",
                          "data.num_samples=60", "data.image_size=16", "model.backbone=resnet18",
                          "model.small_input=true", "semisup.fraction=0.5", "semisup.epochs=1",
                          "semisup.batch_size=8", *QUIET)
    assert code == 0 and scratch["weights"] == "random" and scratch["checkpoint"] is None


def test_bad_requests_are_clear_errors(run_dir, tmp_path, capsys):
    code, _ = _eval("cluster", tmp_path / "a", "--checkpoint", f"{run_dir}/backbone.pth", *QUIET)
    assert code == 2 and "pass the run's full checkpoint.pth" in capsys.readouterr().err
    code, _ = _eval("knn", tmp_path / "b", "--checkpoint", f"{run_dir}/checkpoint.pth", "--teacher", *QUIET)
    assert code == 2 and "has no teacher weights" in capsys.readouterr().err
    code, _ = _eval("knn", tmp_path / "c", "--checkpoint", f"{run_dir}/checkpoint.pth", "knn.kk=3", *QUIET)
    assert code == 2 and "did you mean 'knn.k'" in capsys.readouterr().err
    code, _ = _eval("knn", tmp_path / "d", *QUIET)
    assert code == 2 and "give --checkpoint" in capsys.readouterr().err


def test_protocols_that_need_labels_refuse_an_unlabelled_list(run_dir, tmp_path, capsys):
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "train.txt").write_text("".join(f"{i}.png\n" for i in range(4)))
    code, _ = _eval("knn", tmp_path / "out", "--checkpoint", f"{run_dir}/checkpoint.pth", "data.dataset=filelist",
                    f"data.path={tmp_path}", "data.list_file=train.txt", "data.val_list_file=train.txt", *QUIET)
    assert code == 2
    assert "knn needs labels, but the 'train' split of data.dataset=filelist has none" in capsys.readouterr().err


def test_teacher_weights_are_evaluated_with_teacher(tmp_path):
    from tests.conftest import TINY

    run = tmp_path / "run"
    train(load_config(None, TINY + ["data.num_samples=60", "teacher.enabled=true", "teacher.momentum_start=0.5"]),
          str(run))
    code, student = _eval("cluster", tmp_path / "s", "--checkpoint", f"{run}/checkpoint.pth", *QUIET)
    code_t, teacher = _eval("cluster", tmp_path / "t", "--checkpoint", f"{run}/checkpoint.pth", "--teacher", *QUIET)
    assert code == code_t == 0
    assert student["weights"] == "student" and teacher["weights"] == "teacher"
    assert teacher["weights_entry"] == "teacher_backbone"
    code, knn = _eval("knn", tmp_path / "k", "--checkpoint", f"{run}/teacher_backbone.pth", "knn.k=5", *QUIET)
    assert code == 0 and knn["num_val"] == 15
