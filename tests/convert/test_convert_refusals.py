"""twist-convert refuses what it must not export, and says so on one line."""
from tests.engine.test_nonfinite_weights import _diverged_backbone
from tools.convert import main as convert_main


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
