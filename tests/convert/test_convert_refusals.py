"""twist-convert refuses what it must not export, and says so on one line."""
import os

from tests.engine.test_nonfinite_weights import _diverged_backbone
from twist.cli.convert import main as convert_main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_nonfinite_weights_are_not_converted(tmp_path, capsys):
    _diverged_backbone(tmp_path / "diverged.pth")
    for target in ("detectron2", "timm"):
        out = tmp_path / ("out.pkl" if target == "detectron2" else "out.pth")
        assert convert_main(["--to", target, str(tmp_path / "diverged.pth"), str(out)]) == 2
        err = _one_error_line(capsys)
        assert "layer2.0.conv1.weight" in err and "diverged.pth" in err and not out.exists()


def _plain_backbone(tmp_path):
    import torch

    from twist.models.backbones import build_backbone

    path = tmp_path / "backbone.pth"
    torch.save(build_backbone("resnet18").module.state_dict(), path)
    return str(path)


def test_a_full_disk_while_writing_the_output(tmp_path, capsys, monkeypatch):
    from tests.os_faults import disk_full_when_syncing

    weights = _plain_backbone(tmp_path)
    disk_full_when_syncing(monkeypatch, "r18.pkl")
    assert convert_main(["--to", "detectron2", weights, str(tmp_path / "r18.pkl")]) == 2
    err = _one_error_line(capsys)
    assert "no space left on device" in err and str(tmp_path / "r18.pkl") in err
    assert sorted(os.listdir(tmp_path)) == ["backbone.pth"]


def test_a_read_only_output_folder(tmp_path, capsys, monkeypatch):
    from tests.os_faults import read_only_folder

    weights = _plain_backbone(tmp_path)
    (tmp_path / "ro").mkdir()
    read_only_folder(monkeypatch, tmp_path / "ro")
    assert convert_main(["--to", "timm", weights, str(tmp_path / "ro" / "r18.pth")]) == 2
    err = _one_error_line(capsys)
    assert f"'{tmp_path / 'ro'}'" in err and "read-only" in err
