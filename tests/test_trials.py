"""Trials: reading detectron2's own output files, the statistics, and the runner's skip, resume and failure rules.

The runner is driven through a stand-in for ``train_net.py`` that takes the same arguments and writes
files in detectron2's formats (the real one needs detectron2 and GPUs-worth of time)."""
import json
import os
import statistics
import sys
import textwrap

import pytest

import twist.trials as trials
from twist.cli.trials import main as trials_main
from twist.trials import (Detectron2Engine, Trial, TrialsError, read_detectron2_metrics, summarise,
                          summary_markdown)

TRAIN_LINE = {"data_time": 0.01, "eta_seconds": 12.0, "fast_rcnn/cls_accuracy": 0.91, "fast_rcnn/fg_cls_accuracy": 0.5,
              "iteration": 19, "loss_box_reg": 0.21, "lr": 0.02, "total_loss": 0.9}


def _metrics_json(path, ap):
    with open(path / "metrics.json", "w") as f:
        f.write(json.dumps(TRAIN_LINE) + "\n")
        f.write(json.dumps({"bbox/AP": ap, "bbox/AP50": ap + 26.0, "bbox/AP75": ap + 7.0, "bbox/AP-person": 1.0,
                            "iteration": 23999}) + "\n")
        f.write('{"data_time": 0.0')  # a last line cut short by a crash


def test_reads_the_last_evaluation_record_of_metrics_json(tmp_path):
    _metrics_json(tmp_path, 58.1234)
    assert read_detectron2_metrics(str(tmp_path)) == {"bbox/AP": 58.1234, "bbox/AP50": 84.1234, "bbox/AP75": 65.1234}


def test_reads_coco_box_and_mask_and_dataset_prefixed_keys(tmp_path):
    record = {"coco_2017_val/bbox/AP": 41.9, "coco_2017_val/bbox/APs": 25.0, "coco_2017_val/segm/AP": 37.9,
              "coco_2017_val/segm/AP-person": 50.0, "iteration": 89999}
    (tmp_path / "metrics.json").write_text(json.dumps(TRAIN_LINE) + "\n" + json.dumps(record) + "\n")
    assert read_detectron2_metrics(str(tmp_path)) == {"bbox/AP": 41.9, "bbox/APs": 25.0, "segm/AP": 37.9}


def test_falls_back_to_the_copypaste_lines_of_log_txt(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(TRAIN_LINE) + "\n")  # training scalars only
    (tmp_path / "log.txt").write_text(textwrap.dedent("""\
        [11/23 10:00:01 d2.engine.train_loop]: Starting training from iteration 0
        [11/23 11:00:02 d2.evaluation.testing]: copypaste: Task: bbox
        [11/23 11:00:02 d2.evaluation.testing]: copypaste: AP,AP50,AP75
        [11/23 11:00:02 d2.evaluation.testing]: copypaste: 10.0000,20.0000,30.0000
        [11/23 12:00:02 d2.evaluation.testing]: copypaste: Task: bbox
        [11/23 12:00:02 d2.evaluation.testing]: copypaste: AP,AP50,AP75
        [11/23 12:00:02 d2.evaluation.testing]: copypaste: 58.1234,84.2345,65.4321
        """))
    assert read_detectron2_metrics(str(tmp_path)) == {"bbox/AP": 58.1234, "bbox/AP50": 84.2345, "bbox/AP75": 65.4321}
    (tmp_path / "log.txt").write_text("no results here\n")
    with pytest.raises(TrialsError, match="no evaluation results"):
        read_detectron2_metrics(str(tmp_path))


def test_summary_statistics_and_table():
    values = [58.1, 58.4, 57.9, 58.3, 57.8]
    runs = [Trial(i, i, f"t{i}", "ran", {"bbox/AP": v, "bbox/AP50": v + 26}) for i, v in enumerate(values)]
    runs.append(Trial(5, 5, "t5", "failed", {}, "exited with code 1"))
    summary = summarise(runs)
    ap = summary["metrics"]["bbox/AP"]
    assert ap["mean"] == pytest.approx(statistics.fmean(values)) and ap["n"] == 5
    assert ap["std"] == pytest.approx(statistics.stdev(values))  # the sample standard deviation
    assert (ap["min"], ap["max"]) == (57.8, 58.4) and summary["num_succeeded"] == 5
    table = summary_markdown(summary, "VOC")
    assert f"| bbox/AP | {statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} | 57.80 | 58.40 | 5 |" in table
    assert "| 5 | 5 | failed | — | — |" in table


FAKE_TRAIN_NET = textwrap.dedent('''
    """Stands in for train_net.py: same arguments, detectron2's output files."""
    import json, os, sys
    args = sys.argv[1:]
    start = min(args.index(k) for k in ("MODEL.WEIGHTS", "OUTPUT_DIR") if k in args)
    opts = dict(zip(args[start::2], args[start + 1::2]))
    out, seed = opts["OUTPUT_DIR"], int(opts["SEED"])
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "calls.txt"), "a") as f:
        f.write(" ".join(args) + "\\n")
    if seed == 13:
        sys.exit(1)
    if seed == 7 and "--resume" not in args:  # dies after a checkpoint, as a preempted job would
        open(os.path.join(out, "last_checkpoint"), "w").write("model_0000999.pth")
        sys.exit(1)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": 1, "total_loss": 1.0}) + "\\n")
        f.write(json.dumps({"bbox/AP": 50.0 + seed, "bbox/AP50": 80.0 + seed, "bbox/AP75": 60.0 + seed,
                            "iteration": 2}) + "\\n")
    open(os.path.join(out, "model_final.pth"), "wb").close()
''')


@pytest.fixture
def fake_engine(tmp_path, monkeypatch):
    script = tmp_path / "fake_train_net.py"
    script.write_text(FAKE_TRAIN_NET)

    class StandIn(Detectron2Engine):
        def command(self, *args, **kwargs):
            cmd = super().command(*args, **kwargs)
            assert cmd[1:3] == ["-m", "twist_detection.train_net"]
            return [sys.executable, str(script), *cmd[3:]]

    monkeypatch.setitem(trials.ENGINES, "detectron2", StandIn)
    return StandIn


def test_runner_skips_finished_trials_resumes_interrupted_ones_and_summarises(tmp_path, fake_engine, capsys):
    out = tmp_path / "voc"
    weights = tmp_path / "w.pkl"
    weights.write_bytes(b"")
    config = tmp_path / "c.yaml"
    config.write_text("SOLVER:\n  MAX_ITER: 2\n")
    args = ["run", "--engine", "detectron2", "--config", str(config), "--weights", str(weights), "--trials", "3",
            "--seeds", "1", "7", "2", "--output-dir", str(out), "SOLVER.MAX_ITER", "2"]
    assert trials_main(args) == 2  # seed 7 died after a checkpoint
    assert "2 of 3 trials succeeded; failed: trial 1 (seed 7)" in capsys.readouterr().err
    assert trials_main(args) == 0  # again: 0 and 2 are skipped, 1 resumes
    calls = (out / "trial1_seed7" / "calls.txt").read_text().splitlines()
    assert len(calls) == 2 and "--resume" not in calls[0] and "--resume" in calls[1]
    assert len((out / "trial0_seed1" / "calls.txt").read_text().splitlines()) == 1
    assert calls[1].endswith("SEED 7 SOLVER.MAX_ITER 2") and f"MODEL.WEIGHTS {weights}" in calls[1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["bbox/AP"]["values"] == [51.0, 57.0, 52.0]
    assert summary["metrics"]["bbox/AP"]["mean"] == pytest.approx(160 / 3)
    assert "bbox/AP" in (out / "summary.md").read_text()

    assert trials_main(["summarize", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["num_succeeded"] == 3


def test_fewer_successes_than_trials_is_an_error_naming_them(tmp_path, fake_engine, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    code = trials_main(["run", "--engine", "detectron2", "--config", str(config), "--scratch", "--trials", "2",
                        "--seeds", "3", "13", "--output-dir", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "1 of 2 trials succeeded" in err and "trial 1 (seed 13): exited with code 1" in err
    assert "--scratch" in (tmp_path / "out" / "trial0_seed3" / "calls.txt").read_text()


def test_dry_run_prints_the_pipeline_and_writes_nothing(tmp_path, capsys):
    from twist.engine.checkpoint import atomic_torch_save
    from twist.models.backbones import build_backbone

    atomic_torch_save(build_backbone("resnet18").module.state_dict(), str(tmp_path / "backbone.pth"))
    code = trials_main(["run", "--engine", "detectron2", "--config", "detection/configs/voc_faster_rcnn_R_50_FPN_24k.yaml",
                        "--pretrained", str(tmp_path / "backbone.pth"), "--trials", "2", "--num-gpus", "8",
                        "--output-dir", str(tmp_path / "pipeline"), "--dry-run"])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"[dry run] twist-convert --to detectron2 {tmp_path}/backbone.pth {tmp_path}/pipeline/weights.pkl"
    assert len(printed) == 3 and all("twist_detection.train_net" in line and "--num-gpus 8" in line for line in printed[1:])
    assert "SEED 1" in printed[2] and not (tmp_path / "pipeline").exists()


def test_the_pipeline_converts_then_runs(tmp_path, fake_engine, capsys):
    from twist.engine.checkpoint import atomic_torch_save
    from twist.models.backbones import build_backbone

    atomic_torch_save({"backbone": build_backbone("resnet18").module.state_dict()}, str(tmp_path / "checkpoint.pth"))
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    code = trials_main(["run", "--engine", "detectron2", "--config", str(config), "--pretrained",
                        str(tmp_path / "checkpoint.pth"), "--trials", "2", "--output-dir", str(tmp_path / "p")])
    assert code == 0
    assert os.path.getsize(tmp_path / "p" / "weights.pkl") > 1_000_000
    assert f"MODEL.WEIGHTS {tmp_path}/p/weights.pkl" in (tmp_path / "p" / "trial0_seed0" / "calls.txt").read_text()
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["num_succeeded"] == 2
