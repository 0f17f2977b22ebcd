"""The study script end to end on one epoch: it trains and evaluates real runs, its tables are the
evaluations' own results, and a second call reuses the finished runs instead of retraining."""
import json
import os
import statistics

from twist_tools.study import main


def _row(report: str, name: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_one_epoch_study_reports_what_the_evaluations_wrote(tmp_path):
    work, output = tmp_path / "runs", tmp_path / "study.md"
    args = ["--only", "TWIST", "W-MSE 2", "--epochs", "1", "--seeds", "0", "1", "--jobs", "2",
            "--work-dir", str(work), "--output", str(output), "--notes", str(tmp_path / "none.md")]
    assert main(args) == 0
    report = output.read_text()
    assert (tmp_path / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def read(variant, seed, protocol):
        return json.load(open(work / variant / f"seed{seed}" / protocol / "results.json"))

    knn = [read("twist", s, "knn")["top1"] for s in (0, 1)]
    cluster = [read("twist", s, "cluster")["acc"] for s in (0, 1)]
    cells = _row(report, "TWIST")
    assert cells[0] == f"{statistics.fmean(cluster):.3f} ± {statistics.stdev(cluster):.3f}"
    assert cells[3] == f"{statistics.fmean(knn):.3f} ± {statistics.stdev(knn):.3f}"
    wmse = _row(report, "W-MSE 2")
    assert wmse[0] == "–" and wmse[3] != "–"  # no class head, so no clustering
    assert _row(report, "Barlow Twins") == ["–"] * 5  # not run

    checkpoint = work / "twist" / "seed0" / "run" / "checkpoint.pth"
    before = os.stat(checkpoint).st_mtime_ns
    assert main(args) == 0
    assert os.stat(checkpoint).st_mtime_ns == before
    assert output.read_text() == report
