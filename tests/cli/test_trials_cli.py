"""``twist-trials`` as a user meets it: the manifest a run records and the only trials a summary reads, failed
trials never hidden, a dry run that refuses what the real run refuses, and one line for each bad argument.

The trials run through the stand-in for ``train_net.py`` of tests/test_trials.py, which writes detectron2's files."""
import json
import shutil

import pytest

from twist.cli.trials import main as trials_main


def _config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("SOLVER:\n  MAX_ITER: 2\n")
    return config


def _run(tmp_path, *extra):
    return ["run", "--engine", "detectron2", "--config", str(_config(tmp_path)), "--scratch", "--output-dir",
            str(tmp_path / "out"), *extra]


def _stray(out, name, like):
    """A folder that looks like a finished trial but is none of the run's: copied from one, with another AP."""
    shutil.copytree(out / like, out / name)
    text = (out / name / "metrics.json").read_text()
    (out / name / "metrics.json").write_text(text.replace('"bbox/AP": 51.0', '"bbox/AP": 99.0'))


def test_run_records_its_trials_and_summarize_reads_only_those(tmp_path, fake_engine, capsys):
    out = tmp_path / "out"
    assert trials_main(_run(tmp_path, "--trials", "2", "--seeds", "1", "2")) == 0
    manifest = json.loads((out / "trials.json").read_text())
    assert (manifest["engine"], manifest["config"], manifest["weights"]) == ("detectron2", str(tmp_path / "c.yaml"),
                                                                             None)
    assert [(t["index"], t["seed"], t["directory"]) for t in manifest["trials"]] == [(0, 1, "trial0_seed1"),
                                                                                     (1, 2, "trial1_seed2")]
    _stray(out, "trial2_seed3", "trial0_seed1")
    capsys.readouterr()
    assert trials_main(["summarize", str(out)]) == 0
    printed = capsys.readouterr()
    mentions = [line for line in (printed.out + printed.err).splitlines() if "trial2_seed3" in line]
    assert mentions == ["ignored 1 folder that is not one of the trials: trial2_seed3"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["bbox/AP"]["values"] == [51.0, 52.0] and summary["ignored"] == ["trial2_seed3"]
    assert (out / "summary.md").read_text().splitlines()[0] == f"# detectron2 trials in {out}"  # never "None"


def test_summarize_without_a_manifest_needs_the_trials_named(tmp_path, fake_engine, capsys):
    out = tmp_path / "out"
    assert trials_main(_run(tmp_path, "--trials", "2", "--seeds", "1", "2")) == 0
    (out / "trials.json").unlink()  # a folder of an older version, or put together by hand
    _stray(out, "trial2_seed3", "trial0_seed1")
    capsys.readouterr()
    assert trials_main(["summarize", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no trials.json" in err and "--trials trial0_seed0 trial1_seed1" in err
    assert trials_main(["summarize", str(out), "--trials", "trial0_seed1", "trial1_seed2"]) == 0
    assert json.loads((out / "summary.json").read_text())["metrics"]["bbox/AP"]["values"] == [51.0, 52.0]
    assert trials_main(["summarize", str(out), "--seeds", "1", "3"]) == 1  # trial1_seed3 does not exist
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"][0]["directory"] == str(out / "trial1_seed3") and "does not exist" in summary["failed"][0][
        "error"]
    capsys.readouterr()
    assert trials_main(["summarize", str(out), "--trials", "best_run"]) == 2
    assert "'best_run' is not a trial folder name (trial<i>_seed<s>)" in capsys.readouterr().err


def test_a_nan_ap_fails_its_trial_and_the_summary_says_so_first(tmp_path, fake_engine, capsys):
    out = tmp_path / "out"
    assert trials_main(_run(tmp_path, "--trials", "3", "--seeds", "1", "11", "2")) == 1  # seed 11: AP NaN
    assert "1 of 3 trials failed: trial 1 (seed 11): bbox/AP is NaN" in capsys.readouterr().err
    md = (out / "summary.md").read_text().splitlines()
    assert md[0].endswith(": 1 of 3 trials failed") and "trial 1 (seed 11): " in md[2] and "bbox/AP is NaN" in md[2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_failed"] == 1 and summary["metrics"]["bbox/AP"]["values"] == [51.0, 52.0]
    assert trials_main(["summarize", str(out)]) == 1
    assert "1 of 3 trials failed" in capsys.readouterr().err


def test_seeds_alone_set_the_number_of_trials(tmp_path, fake_engine):
    assert trials_main(_run(tmp_path, "--seeds", "4", "5")) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["num_trials"] == 2


def test_a_rerun_in_the_same_folder_under_other_settings_is_refused(tmp_path, fake_engine, capsys):
    args = _run(tmp_path, "--trials", "1")
    assert trials_main(args + ["SOLVER.BASE_LR", "0.01"]) == 0
    capsys.readouterr()
    for extra in (["--dry-run"], []):
        assert trials_main(args + [*extra, "SOLVER.BASE_LR", "0.02"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "overrides" in err and "SOLVER.BASE_LR 0.01" in err and "0.02" in err
    assert len((tmp_path / "out" / "trial0_seed0" / "calls.txt").read_text().splitlines()) == 1


def test_a_rerun_with_the_weights_file_overwritten_is_refused(tmp_path, fake_engine, capsys):
    weights = tmp_path / "w.pkl"
    weights.write_bytes(b"first conversion")
    args = _run(tmp_path, "--trials", "1")
    args[args.index("--scratch"):args.index("--scratch") + 1] = ["--weights", str(weights)]
    assert trials_main(args) == 0
    weights.write_bytes(b"another conversion, same name")
    capsys.readouterr()
    assert trials_main(args) == 2
    assert "source_sha256" in capsys.readouterr().err


@pytest.mark.parametrize("extra, named", [
    (["--trials", "0"], "--trials must be at least 1, got 0"),
    (["--trials", "-2"], "--trials must be at least 1, got -2"),
    (["--trials", "1", "--num-gpus", "0"], "--num-gpus must be at least 1, got 0"),
    (["--trials", "1", "--seeds", "-1"], "--seeds: -1 is negative"),
    (["--trials", "2", "--seeds", "4", "4"], "--seeds repeats 4"),
    (["--trials", "3", "--seeds", "1", "2"], "--seeds gives 2 seeds for --trials 3"),
    (["--trials", "1", "--teacher"], "--teacher applies only with --pretrained"),
    (["--trials", "1", "--trust-checkpoint"], "--trust-checkpoint applies only with --pretrained"),
    (["--trials", "1", "SOLVER.MAX_ITER"], "KEY VALUE pairs"),
    (["--trials", "1", "SEED", "3"], "SEED is set by twist-trials"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_a_bad_argument_gives_one_line_naming_it(tmp_path, fake_engine, capsys, extra, named):
    assert trials_main(_run(tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and named in err
    assert not (tmp_path / "out").exists()


def test_a_config_that_is_a_folder_is_named_as_such(tmp_path, fake_engine, capsys):
    args = _run(tmp_path, "--trials", "1")
    args[args.index("--config") + 1] = str(tmp_path)
    assert trials_main(args) == 2
    assert f"config '{tmp_path}' is a folder, not a config file" in capsys.readouterr().err


def _small_input_checkpoint(path):
    from twist.engine.checkpoint import atomic_torch_save
    from twist.models.backbones import build_backbone

    atomic_torch_save({"backbone": build_backbone("resnet18", small_input=True).module.state_dict()}, str(path))


def _namespace_checkpoint(path):
    import argparse

    import torch

    from twist.models.backbones import build_backbone

    torch.save({"backbone": build_backbone("resnet18").module.state_dict(), "args": argparse.Namespace(lr=0.1)},
               str(path))


def _diverged_checkpoint(path):
    from twist.engine.checkpoint import atomic_torch_save
    from twist.models.backbones import build_backbone

    state = build_backbone("resnet18").module.state_dict()
    state["conv1.weight"].fill_(float("nan"))
    atomic_torch_save({"backbone": state}, str(path))


@pytest.mark.parametrize("make, refusal", [(_small_input_checkpoint, "no detectron2 counterpart"),
                                           (_namespace_checkpoint, "--trust-checkpoint"),
                                           (_diverged_checkpoint, "conv1.weight")],
                         ids=["small-input stem", "not weights-only", "NaN weights"])
def test_a_dry_run_fails_where_the_real_run_would(tmp_path, capsys, make, refusal):
    make(tmp_path / "checkpoint.pth")
    args = ["run", "--engine", "detectron2", "--config", "detection/configs/voc_faster_rcnn_R_50_FPN_24k.yaml",
            "--pretrained", str(tmp_path / "checkpoint.pth"), "--trials", "1", "--output-dir", str(tmp_path / "out")]
    assert trials_main(args) == 2
    real = capsys.readouterr().err
    assert trials_main(args + ["--dry-run"]) == 2
    dry = capsys.readouterr()
    assert dry.err == real and refusal in real and "twist_detection.train_net" not in dry.out
    assert not (tmp_path / "out").exists()


def test_a_dry_run_checks_the_weights_exist(tmp_path, capsys):
    args = ["run", "--engine", "detectron2", "--config", "detection/configs/voc_faster_rcnn_R_50_FPN_24k.yaml",
            "--weights", str(tmp_path / "gone.pkl"), "--trials", "1", "--output-dir", str(tmp_path / "out"),
            "--dry-run"]
    assert trials_main(args) == 2
    assert f"weights '{tmp_path / 'gone.pkl'}' do not exist" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_one_gives_one_line(tmp_path, fake_engine, capsys):
    (tmp_path / "taken").write_text("a file\n")
    for out in (tmp_path / "taken", tmp_path / "taken" / "out"):
        args = _run(tmp_path, "--trials", "1")
        args[args.index("--output-dir") + 1] = str(out)
        assert trials_main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(tmp_path / "taken") in err
