"""twist-eval refuses what it must not score, and says so on one line."""
import os

from tests.engine.test_nonfinite_weights import _diverged_backbone
from twist.cli.eval import main as eval_main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_nonfinite_weights_are_not_evaluated(tmp_path, capsys):
    _diverged_backbone(tmp_path / "diverged.pth")
    for protocol in ("knn", "cluster"):
        code = eval_main([protocol, "--checkpoint", str(tmp_path / "diverged.pth"), "--output-dir",
                          str(tmp_path / protocol), "device=cpu", "data.dataset=synthetic"])
        assert code == 2
        err = _one_error_line(capsys)
        assert "layer2.0.conv1.weight" in err and "diverged.pth" in err
        assert not (tmp_path / protocol / "results.json").exists()


def test_cluster_refuses_a_head_with_nonfinite_weights(tmp_path, capsys, tiny_overrides):
    import torch

    from twist.config import load_config
    from twist.engine.trainer import train

    train(load_config(None, tiny_overrides + ["train.epochs=1"]), str(tmp_path / "run"))
    state = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    head = next(k for k in state["model"] if k.startswith("head.") and k.endswith("weight"))
    state["model"][head].fill_(float("nan"))
    torch.save(state, tmp_path / "nan_head.pth")
    code = eval_main(["cluster", "--checkpoint", str(tmp_path / "nan_head.pth"), "--output-dir",
                      str(tmp_path / "cluster"), "progress_bar=false"])
    assert code == 2
    err = _one_error_line(capsys)
    assert head in err and "nan_head.pth" in err and not (tmp_path / "cluster" / "results.json").exists()


def _plain_backbone(tmp_path):
    import torch

    from twist.models.backbones import build_backbone

    path = tmp_path / "backbone.pth"
    torch.save(build_backbone("resnet18", small_input=True).module.state_dict(), path)
    return str(path)


KNN = ["device=cpu", "data.dataset=synthetic", "data.num_samples=16", "data.num_classes=2", "data.image_size=16",
       "data.num_workers=0", "progress_bar=false", "knn.k=3"]


def test_a_full_disk_while_writing_the_results(tmp_path, capsys, monkeypatch):
    from tests.os_faults import disk_full_when_syncing

    weights = _plain_backbone(tmp_path)
    disk_full_when_syncing(monkeypatch, "results.json")
    assert eval_main(["knn", "--checkpoint", weights, "--output-dir", str(tmp_path / "knn"), *KNN]) == 2
    err = _one_error_line(capsys)
    assert "no space left on device" in err and str(tmp_path / "knn" / "results.json") in err
    assert not [name for name in os.listdir(tmp_path / "knn") if name.endswith(".tmp")]


def test_a_read_only_output_folder(tmp_path, capsys, monkeypatch):
    from tests.os_faults import read_only_folder

    weights = _plain_backbone(tmp_path)
    read_only_folder(monkeypatch, tmp_path / "ro")
    assert eval_main(["knn", "--checkpoint", weights, "--output-dir", str(tmp_path / "ro" / "knn"), *KNN]) == 2
    err = _one_error_line(capsys)
    assert f"'{tmp_path / 'ro'}'" in err and "read-only" in err
