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
from twist.trials import Detectron2Engine, Trial, TrialsError, read_detectron2_metrics, summarise, summary_markdown

TRAIN_LINE = {"data_time": 0.01, "eta_seconds": 12.0, "fast_rcnn/cls_accuracy": 0.91, "fast_rcnn/fg_cls_accuracy": 0.5,
              "iteration": 19, "loss_box_reg": 0.21, "lr": 0.02, "total_loss": 0.9}


def _metrics_json(path, ap):
    with open(path / "metrics.json", "w") as f:
        f.write(json.dumps(TRAIN_LINE) + "\n")
        f.write('{"data_time": 0.0')  # a line cut short by a crash; the resumed run appended its next record to it
        f.write(json.dumps({"bbox/AP": ap, "bbox/AP50": ap + 26.0, "bbox/AP75": ap + 7.0, "bbox/AP-person": 1.0,
                            "iteration": 23999}) + "\n")


def test_reads_the_last_evaluation_record_of_metrics_json(tmp_path):
    _metrics_json(tmp_path, 58.1234)
    assert read_detectron2_metrics(str(tmp_path)) == {"bbox/AP": 58.1234, "bbox/AP50": 84.1234, "bbox/AP75": 65.1234}


def test_reads_coco_box_and_mask_and_dataset_prefixed_keys(tmp_path):
    figures = {"bbox/AP": 41.9, "bbox/AP50": 62.6, "bbox/AP75": 45.7, "bbox/APs": 25.0, "segm/AP": 37.9,
               "segm/AP50": 59.7, "segm/AP75": 40.6}
    record = {**{f"coco_2017_val/{k}": v for k, v in figures.items()}, "coco_2017_val/segm/AP-person": 50.0,
              "iteration": 89999}
    (tmp_path / "metrics.json").write_text(json.dumps(TRAIN_LINE) + "\n" + json.dumps(record) + "\n")
    assert read_detectron2_metrics(str(tmp_path)) == figures


def test_falls_back_to_the_copypaste_lines_of_log_txt(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(TRAIN_LINE) + "\n")  # training scalars only
    (tmp_path / "log.txt").write_text(textwrap.dedent("""\
        [11/23 10:00:01 d2.engine.train_loop]: Starting training from iteration 0
        [11/23 11:00:02 d2.evaluation.testing]: copypaste: Task: bbox
        [11/23 11:00:02 d2.evaluation.testing]: copypaste: AP,AP50,AP75
        [11/23 11:00:02 d2.evaluation.testing]: copypaste: 10.0000,20.0000,30.0000
        [11/23 12:00:01 d2.engine.hooks]: Overall training speed: 23998 iterations in 1:00:00 (0.1500 s / it)
        [11/23 12:00:01 d2.engine.hooks]: Total training time: 1:00:00 (0:00:10 on hooks)
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
    max_iter = int(opts.get("SOLVER.MAX_ITER", 2))
    with open(os.path.join(out, "config.yaml"), "w") as f:  # detectron2's default_setup writes the merged config
        f.write(f"MODEL:\\n  MASK_ON: false\\nSOLVER:\\n  MAX_ITER: {max_iter}\\nSEED: {seed}\\n")
    ap = float("nan") if seed == 11 else 50.0 + seed  # an evaluation without detections
    with open(os.path.join(out, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": max_iter - 1, "total_loss": 1.0}) + "\\n")
        f.write(json.dumps({"bbox/AP": ap, "bbox/AP50": ap + 30, "bbox/AP75": ap + 10, "iteration": max_iter}) + "\\n")
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
    assert trials_main(args) == 1  # seed 7 died after a checkpoint
    assert "1 of 3 trials failed: trial 1 (seed 7)" in capsys.readouterr().err
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
    assert code == 1
    err = capsys.readouterr().err
    assert "1 of 2 trials failed" in err and "trial 1 (seed 13): exited with code 1" in err
    assert "--scratch" in (tmp_path / "out" / "trial0_seed3" / "calls.txt").read_text()


def test_dry_run_prints_the_pipeline_and_writes_nothing(tmp_path, capsys):
    from twist.engine.checkpoint import atomic_torch_save
    from twist.models.backbones import build_backbone

    atomic_torch_save(build_backbone("resnet18").module.state_dict(), str(tmp_path / "backbone.pth"))
    code = trials_main(["run", "--engine", "detectron2",
                        "--config", "detection/configs/voc_faster_rcnn_R_50_FPN_24k.yaml",
                        "--pretrained", str(tmp_path / "backbone.pth"), "--trials", "2", "--num-gpus", "8",
                        "--output-dir", str(tmp_path / "pipeline"), "--dry-run"])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (f"[dry run] twist-convert --to detectron2 {tmp_path}/backbone.pth "
                          f"{tmp_path}/pipeline/weights.pkl")
    assert len(printed) == 3
    assert all("twist_detection.train_net" in line and "--num-gpus 8" in line for line in printed[1:])
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


# ---- a trial counts only when its final metrics are complete -------------------------------------------

def _evaluation(ap, iteration, **extra):
    return json.dumps({"bbox/AP": ap, "bbox/AP50": ap + 26.0, "bbox/AP75": ap + 7.0, "iteration": iteration, **extra})


def _train_line(iteration):
    return json.dumps({**TRAIN_LINE, "iteration": iteration})


def _detectron2_config(path, max_iter, mask_on=False):
    """The ``config.yaml`` detectron2's default_setup writes into OUTPUT_DIR: the run's merged config."""
    (path / "config.yaml").write_text(f"MODEL:\n  MASK_ON: {str(mask_on).lower()}\n  WEIGHTS: w.pkl\n"
                                      f"SOLVER:\n  BASE_LR: 0.02\n  MAX_ITER: {max_iter}\nSEED: 0\n")


def test_a_final_evaluation_line_cut_short_does_not_count(tmp_path):
    lines = [_train_line(19), _evaluation(40.0, 11999), _train_line(23999)]
    (tmp_path / "metrics.json").write_text("\n".join(lines) + "\n" + _evaluation(58.1, 24000)[:25])
    with pytest.raises(TrialsError, match="cut short"):
        read_detectron2_metrics(str(tmp_path))  # not the intermediate AP 40.0


def test_an_intermediate_evaluation_does_not_count(tmp_path):
    # killed during the final evaluation: the last evaluation on record is the one at half time
    lines = [_train_line(19), _evaluation(40.0, 11999), _train_line(23979), _train_line(23999)]
    (tmp_path / "metrics.json").write_text("\n".join(lines) + "\n")
    with pytest.raises(TrialsError, match="iteration 11999"):
        read_detectron2_metrics(str(tmp_path))
    _detectron2_config(tmp_path, 24000)  # the run's own config says where the end is
    (tmp_path / "metrics.json").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(TrialsError, match="iteration 11999.*MAX_ITER 24000"):
        read_detectron2_metrics(str(tmp_path))
    (tmp_path / "metrics.json").write_text("\n".join([*lines, _evaluation(58.1, 24000)]) + "\n")
    assert read_detectron2_metrics(str(tmp_path))["bbox/AP"] == 58.1


def test_the_final_evaluation_must_hold_every_metric(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"bbox/AP": 58.1, "bbox/AP50": 84.2, "iteration": 23999}) + "\n")
    with pytest.raises(TrialsError, match="lacks bbox/AP75"):
        read_detectron2_metrics(str(tmp_path))
    _detectron2_config(tmp_path, 24000, mask_on=True)  # Mask R-CNN: the masks' figures are expected too
    (tmp_path / "metrics.json").write_text(_evaluation(41.9, 23999) + "\n")
    with pytest.raises(TrialsError, match="lacks segm/AP, segm/AP50, segm/AP75"):
        read_detectron2_metrics(str(tmp_path))


def test_a_nan_ap_fails_the_trial_naming_it(tmp_path):
    (tmp_path / "metrics.json").write_text(_evaluation(float("nan"), 23999) + "\n")  # json writes NaN
    with pytest.raises(TrialsError, match="bbox/AP is NaN"):
        read_detectron2_metrics(str(tmp_path))


def test_log_copypaste_counts_only_after_training_ended(tmp_path):
    block = ("[11/23 11:00:02 d2.evaluation.testing]: copypaste: Task: bbox\n"
             "[11/23 11:00:02 d2.evaluation.testing]: copypaste: AP,AP50,AP75\n"
             "[11/23 11:00:02 d2.evaluation.testing]: copypaste: {}\n")
    ended = "[11/23 12:00:01 d2.engine.hooks]: Total training time: 1:00:00 (0:00:10 on hooks)\n"
    log = tmp_path / "log.txt"
    log.write_text(block.format("40.0000,60.0000,45.0000"))  # an intermediate evaluation only
    with pytest.raises(TrialsError, match="no evaluation after the end of training"):
        read_detectron2_metrics(str(tmp_path))
    log.write_text(block.format("40.0000,60.0000,45.0000") + ended + block.format("58.1234,84.2345,65.4321")[:-12])
    with pytest.raises(TrialsError, match="lacks bbox/AP, bbox/AP50, bbox/AP75"):  # its values line was cut short
        read_detectron2_metrics(str(tmp_path))


def _mmseg_run(path, iteration, max_iters, metrics):
    """What twist_segmentation.train leaves: mmengine's dump of the run's config and final_metrics.json."""
    path.mkdir(exist_ok=True)
    (path / "fpn_r50_twist_4xb4-20k_voc12aug-512x512.py").write_text(
        f"model = dict(\n    type='EncoderDecoder')\n"
        f"train_cfg = dict(max_iters={max_iters}, type='IterBasedTrainLoop', val_interval=2000)\n")
    (path / "final_metrics.json").write_text(json.dumps({"iteration": iteration, "metrics": metrics,
                                                         "config": "c.py", "weights": None}))


SEG = {"aAcc": 93.1, "mIoU": 73.3, "mAcc": 82.0}


def test_mmseg_final_metrics_count_only_complete_and_at_the_configured_end(tmp_path):
    from twist.trials import read_mmseg_metrics

    _mmseg_run(tmp_path, 20000, 20000, SEG)
    assert read_mmseg_metrics(str(tmp_path)) == SEG
    _mmseg_run(tmp_path, 20000, 40000, SEG)  # resumed under a longer schedule, stopped before the end
    with pytest.raises(TrialsError, match="iteration 20000.*trains to 40000"):
        read_mmseg_metrics(str(tmp_path))
    _mmseg_run(tmp_path, 20000, 20000, {"aAcc": 93.1, "mIoU": 73.3})
    with pytest.raises(TrialsError, match="lacks mAcc"):
        read_mmseg_metrics(str(tmp_path))
    _mmseg_run(tmp_path, 20000, 20000, {**SEG, "mIoU": float("nan")})
    with pytest.raises(TrialsError, match="mIoU is NaN"):
        read_mmseg_metrics(str(tmp_path))
    (tmp_path / "final_metrics.json").write_text('{"iteration": 20000, "metrics": {"aAcc": 93.1, "mI')
    with pytest.raises(TrialsError, match="final_metrics.json' is not complete JSON"):
        read_mmseg_metrics(str(tmp_path))


def test_mmseg_scalars_count_only_the_validation_at_the_configured_end(tmp_path):
    from twist.trials import read_mmseg_metrics

    _mmseg_run(tmp_path, 0, 40000, SEG)
    (tmp_path / "final_metrics.json").unlink()  # a run of mmseg's own tools: its scalars only
    (tmp_path / "20240101_000000" / "vis_data").mkdir(parents=True)
    scalars = tmp_path / "20240101_000000" / "vis_data" / "scalars.json"
    lines = [json.dumps({"loss": 0.5, "lr": 0.01, "iter": 20000, "step": 20000}), json.dumps({**SEG, "step": 20000})]
    scalars.write_text("\n".join(lines) + "\n")
    with pytest.raises(TrialsError, match="step 20000.*trains to 40000"):
        read_mmseg_metrics(str(tmp_path))
    scalars.write_text("\n".join([*lines, json.dumps({**SEG, "mIoU": 74.0, "step": 40000})]) + "\n")
    assert read_mmseg_metrics(str(tmp_path))["mIoU"] == 74.0


def test_a_summary_with_a_failed_trial_says_so_first_and_lists_it():
    runs = [Trial(0, 0, "t0", "ran", {"bbox/AP": 58.0}), Trial(1, 1, "t1", "failed", {}, "bbox/AP is NaN"),
            Trial(2, 2, "t2", "ran", {"bbox/AP": 58.4})]
    summary = summarise(runs)
    assert summary["num_failed"] == 1 and summary["failed"] == [
        {"trial": 1, "seed": 1, "directory": "t1", "error": "bbox/AP is NaN"}]
    lines = summary_markdown(summary, "VOC").splitlines()
    assert lines[0] == "# VOC: 1 of 3 trials failed"
    assert "trial 1 (seed 1): bbox/AP is NaN" in lines[2]
    assert "over the 2 trials that succeeded" in summary_markdown(summary, "VOC")


def test_nan_in_a_metric_that_may_be_empty_does_not_break_the_statistics(tmp_path):
    # COCO's APl is NaN when a split has no large objects; it is no reason to fail a trial
    runs = [Trial(i, i, f"t{i}", "ran", {"bbox/AP": 40.0 + i, "bbox/APl": v}) for i, v in enumerate([50.0, float("nan"),
                                                                                                      52.0])]
    summary = summarise(runs)
    assert summary["metrics"]["bbox/APl"]["n"] == 2 and summary["metrics"]["bbox/APl"]["mean"] == 51.0
    assert summary["metrics"]["bbox/AP"]["std"] == pytest.approx(1.0)
    trials.write_summary(str(tmp_path), runs, "COCO")
    written = json.loads((tmp_path / "summary.json").read_text())  # strict JSON: NaN written as null
    assert written["metrics"]["bbox/APl"]["values"] == [50.0, None, 52.0]
