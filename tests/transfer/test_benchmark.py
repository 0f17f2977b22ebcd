"""The whole transfer chain at toy size, through the real command lines: scenes, one pretraining of a
few steps, its conversion, two segmentation trials from it and two from random weights, and the
report; the fine-tuned backbone really started from the pretraining checkpoint's tensors."""
import json

import pytest
import torch
import yaml

from twist.engine.checkpoint import load_weights_only, read_torch_file
from twist.transfer.benchmark import TransferError, detectron2_available, load_benchmark, run_benchmark, usable_cores

pytest.importorskip("mmseg", reason="the seg extra (mmsegmentation on mmcv-lite) is not installed")

SEG_SHORT = ["train_cfg.max_iters=2", "train_cfg.val_interval=2", "param_scheduler.0.end=2",
             "default_hooks.checkpoint.interval=2", "train_dataloader.batch_size=2"]
DET_SHORT = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
             "SOLVER.STEPS", "(1,)", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.PRECISE_BN.ENABLED", "False",
             "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]


def _toy(tmp_path) -> str:
    config = {
        "scenes": {"train": 6, "val": 3, "seed": 0},
        "trials": 2,
        "pretrain_overrides": ["data.train_split=train", "data.image_size=24", "eval.enabled=false", "train.epochs=1",
                               "optim.warmup_epochs=0"],
        "supervised_overrides": [],
        "initialisations": {"twist": {"pretrain": "configs/demo/digits.yaml", "overrides": ["train.log_every=1"]},
                            "random": {}},
        "protocols": {
            "segmentation": {"title": "Segmentation, backbone fine-tuned", "engine": "mmseg", "overrides": SEG_SHORT,
                             "config": "segmentation/configs/miniature/fpn_r18_digit_scenes-64x64.py"},
            "frozen_segmentation": {"title": "Segmentation, backbone frozen", "engine": "mmseg",
                                    "config": "segmentation/configs/miniature/fpn_r18_digit_scenes-64x64_frozen.py",
                                    "overrides": SEG_SHORT},
            "detection": {"title": "Detection", "engine": "detectron2", "overrides": DET_SHORT,
                          "config": "detection/configs/miniature/voc_faster_rcnn_R_18_FPN_digit_scenes.yaml"},
            "unused": {"title": "Not in default_protocols", "engine": "mmseg", "overrides": SEG_SHORT,
                       "config": "segmentation/configs/miniature/fpn_r18_digit_scenes-64x64.py"},
        },
        "default_protocols": ["segmentation", "frozen_segmentation", "detection"],
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_the_whole_chain_at_toy_size(tmp_path):
    from twist_segmentation.train import tensor_digest

    out = tmp_path / "out"
    # two chains side by side: each initialisation's steps write only its own folders
    report = run_benchmark(_toy(tmp_path), str(out), doc=str(tmp_path / "transfer.md"), echo=lambda line: None,
                           jobs=2)
    text = open(report).read()
    assert not (out / "unused").exists() and "Not in default_protocols" not in text
    threads = max(1, usable_cores() // 2)
    assert f"2 jobs side by side at {threads} thread{'s' if threads > 1 else ''} each" in text
    assert text == (tmp_path / "transfer.md").read_text()
    for chart in ("transfer_segmentation.png", "transfer_frozen_segmentation.png"):
        assert (tmp_path / chart).is_file(), chart
    for protocol in ("segmentation", "frozen_segmentation"):
        for name in ("twist", "random"):
            summary = json.loads((out / protocol / name / "summary.json").read_text())
            assert summary["num_trials"] == summary["num_succeeded"] == 2
            miou = summary["metrics"]["mIoU"]
            assert f"| {name} | {miou['mean']:.1f} ± {miou['std']:.1f} |" in text
    assert "(bare ResNet-18 training at 64 px: " in text and "2 trials per initialisation" in text
    # The initialisation's own overrides reached its pretraining, after the section-wide ones.
    saved = yaml.safe_load((out / "pretrain" / "twist" / "config.yaml").read_text())
    assert saved["train"]["log_every"] == 1 and saved["train"]["epochs"] == 1
    # Each trial's backbone, after mmseg's own initialisation, held the pretraining checkpoint's tensors.
    backbone = load_weights_only(str(out / "pretrain" / "twist" / "checkpoint.pth"))["backbone"]
    expected = {k: tensor_digest(v) for k, v in sorted(backbone.items())}
    for trial in ("trial0_seed0", "trial1_seed1"):
        recorded = json.loads((out / "segmentation" / "twist" / trial / "initial_backbone.json").read_text())
        assert recorded["digests"] == expected and len(expected) == 120  # ResNet-18 with its BN buffers
    assert not (out / "segmentation" / "random" / "trial0_seed0" / "initial_backbone.json").exists()
    # The frozen protocol started from the same tensors and ended with them: only the FPN trained.
    for trial in ("trial0_seed0", "trial1_seed1"):
        folder = out / "frozen_segmentation" / "twist" / trial
        assert json.loads((folder / "initial_backbone.json").read_text())["digests"] == expected
        # mmengine's own checkpoint, written by this test's run: it holds its logger's objects
        final = read_torch_file(str(folder / "iter_2.pth"), trust=True)[0]["state_dict"]
        after = {k[len("backbone."):]: tensor_digest(v) for k, v in sorted(final.items()) if k.startswith("backbone.")}
        assert after == expected
        assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in final.items() if k.startswith("neck."))
    try:
        import detectron2  # noqa: F401
    except ImportError:
        assert "Not run: Detectron2 is not installed." in text
    else:
        assert "bbox/AP50" in text
    # Every step's time was kept as it finished; the report gives the invocation's wall-clock time and their sum.
    timings = json.loads((out / "timings.json").read_text())
    assert {"pretrain twist", "convert twist to mmseg", "segmentation twist", "segmentation random"} <= set(timings)
    walls = json.loads((out / "wall.json").read_text())
    ran = [p.name for p in load_benchmark(_toy(tmp_path)).protocols  # in the config's order
           if p.name != "unused" and (p.engine == "mmseg" or detectron2_available())]
    assert [(w["jobs"], w["threads"], w["protocols"]) for w in walls] == [(2, threads, ran)] and walls[0]["rate"] > 0
    assert walls[0]["seconds"] > max(timings.values())
    assert (f"in {walls[0]['seconds'] / 60:.0f} minutes of wall-clock time (1 invocation: "
            f"{walls[0]['seconds'] / 60:.0f} minutes, 2 jobs side by side") in text
    assert f"; its steps' times summed: {sum(timings.values()) / 60:.0f} minutes)" in text
    # A second call finds every trial done (twist-trials skips them) and writes the same table.
    again = run_benchmark(_toy(tmp_path), str(out), echo=lambda line: None)
    assert open(again).read().split("## Segmentation")[1] == text.split("## Segmentation")[1]
    assert len(json.loads((out / "wall.json").read_text())) == 2
    # --protocols runs another of the config's protocols into the same folder; the report keeps the others.
    only = open(run_benchmark(_toy(tmp_path), str(out), echo=lambda line: None, protocols=["unused"])).read()
    assert "Not in default_protocols" in only and only.split("## Segmentation, backbone fine-tuned")[1].split(
        "## ")[0] == text.split("## Segmentation, backbone fine-tuned")[1].split("## ")[0]
    assert json.loads((out / "unused" / "random" / "summary.json").read_text())["num_succeeded"] == 2
    assert "(3 invocations: " in only and "running unused;" in only
    # --report-only runs nothing: an initialisation without trials is named, not averaged or started.
    config = yaml.safe_load(open(_toy(tmp_path)))
    config["initialisations"]["wmse"] = {"pretrain": "configs/demo/digits_wmse.yaml"}
    (tmp_path / "more.yaml").write_text(yaml.safe_dump(config))
    partial = open(run_benchmark(str(tmp_path / "more.yaml"), str(out), echo=lambda line: None,
                                 report_only=True)).read()
    assert ("**Not finished yet:** frozen_segmentation: wmse; segmentation: wmse; unused: wmse" in partial
            and "| twist |" in partial and "| wmse |" not in partial)
    assert not (out / "pretrain" / "wmse").exists()
    assert len(json.loads((out / "wall.json").read_text())) == 3  # an invocation that ran nothing adds no time


def test_a_benchmark_config_with_a_wrong_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    config = yaml.safe_load(open(_toy(tmp_path)))
    config["initialisations"]["twist"] = {"pretrain": "a.yaml", "supervised": "b.yaml"}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(TransferError, match="initialisations.twist takes one of"):
        load_benchmark(str(path))
    config["initialisations"]["twist"] = {"pretrain": "a.yaml"}
    config["initialisations"]["random"] = {"overrides": ["train.epochs=2"]}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(TransferError, match=r"initialisations.random takes one of .* not \['overrides'\]"):
        load_benchmark(str(path))
    config["initialisations"]["random"] = {}
    config["initialisations"]["twist"] = {"pretrain": "a.yaml"}
    config["protocols"]["segmentation"]["engine"] = "mmdet"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(TransferError, match=r"segmentation.engine: expected one of \['detectron2', 'mmseg'\]"):
        load_benchmark(str(path))
    config["protocols"]["segmentation"]["engine"] = "mmseg"
    config["protocols"]["segmentation"]["overrides"] = "train_cfg.max_iters=2"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(TransferError, match=r"protocols.segmentation.overrides: expected a list"):
        load_benchmark(str(path))
    config["protocols"]["segmentation"] = {"engine": "mmseg", "config": "a.py", "overrides": []}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(TransferError, match=r"protocols.segmentation: expected the keys \['config', 'engine', "
                       r"'overrides', 'title'\], found \['config', 'engine', 'overrides'\]"):
        load_benchmark(str(path))
    config["protocols"]["segmentation"] = {"title": "S", "engine": "mmseg", "config": "a.py", "overrides": []}
    config["default_protocols"] = ["segmentation", "segmentaton"]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(TransferError, match=r"default_protocols: expected some of the config's protocols "
                       r"\['detection', 'frozen_segmentation', 'segmentation', 'unused'\], not \['segmentaton'\]"):
        load_benchmark(str(path))
    config["default_protocols"] = ["segmentation"]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(TransferError, match=r"--protocols: expected some of .* not \['frozen'\]"):
        load_benchmark(str(path)).chosen(["frozen"])
    with pytest.raises(TransferError, match="--jobs must be at least 1, not 0"):
        run_benchmark(str(path), str(tmp_path / "never"), echo=lambda line: None, jobs=0)
    assert not (tmp_path / "never").exists()
    config["default_protocols"] = "segmentation"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(TransferError, match="default_protocols must list the protocols a plain run runs, not "
                       "'segmentation'"):
        load_benchmark(str(path))
    config.pop("trials")
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(TransferError, match="expected the keys"):
        load_benchmark(str(path))


def test_the_scenes_section_sets_how_scenes_are_drawn(tmp_path):
    from twist.transfer.benchmark import scene_spec
    from twist.transfer.digit_scenes import SceneSpec

    shipped = load_benchmark("configs/transfer/digit_scenes.yaml")
    assert scene_spec(shipped.scenes) == SceneSpec(canvas=64, digits_per_scene=(1, 3), digit_size=(24, 44),
                                                   background_grid=2)
    path = tmp_path / "bad.yaml"
    config = yaml.safe_load(open(_toy(tmp_path)))
    config["scenes"]["canvass"] = 64
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(TransferError, match="scenes takes train, val and seed, and optionally"):
        load_benchmark(str(path))


def test_a_failed_chain_stops_the_run_and_each_failure_is_named(tmp_path):
    """Two chains side by side fail at their pretraining: the first in the config's order is raised, the
    other echoed; the queued chain starts no step, and the invocation's wall-clock time is kept."""
    config = yaml.safe_load(open(_toy(tmp_path)))
    config["initialisations"] = {"barlow_twins": {"pretrain": str(tmp_path / "missing_barlow.yaml")},
                                 "random": {}, "twist": {"pretrain": str(tmp_path / "missing_twist.yaml")}}
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(config))  # sorted: barlow_twins and random run first, twist is queued
    out, lines = tmp_path / "out", []
    with pytest.raises(TransferError, match=r"^pretrain barlow_twins failed with exit code 2; see "
                       r".*pretrain_barlow_twins.log$"):
        run_benchmark(str(path), str(out), echo=lines.append, jobs=2)
    assert "missing_barlow.yaml" in (out / "logs" / "pretrain_barlow_twins.log").read_text()
    assert not (out / "logs" / "pretrain_twist.log").exists()  # queued behind the failure: never started
    stopped = [line for line in lines if line.startswith("stopped before their next step")]
    assert stopped[0].startswith("stopped before their next step: ") and "twist" in stopped[0]
    assert not (out / "transfer.md").exists()
    assert len(json.loads((out / "wall.json").read_text())) == 1


def test_two_failures_side_by_side_are_both_named(tmp_path):
    config = yaml.safe_load(open(_toy(tmp_path)))
    config["initialisations"] = {"barlow_twins": {"pretrain": str(tmp_path / "missing_barlow.yaml")},
                                 "twist": {"pretrain": str(tmp_path / "missing_twist.yaml")}}
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(config))
    lines = []
    with pytest.raises(TransferError, match=r"^pretrain barlow_twins failed"):
        run_benchmark(str(path), str(tmp_path / "out"), echo=lines.append, jobs=2)
    out = tmp_path / "out"
    assert f"also failed: pretrain twist failed with exit code 2; see {out}/logs/pretrain_twist.log" in lines


def test_an_output_folder_in_use_or_with_a_bad_record_is_refused(tmp_path):
    from twist.engine.run_lock import RunLock

    out = tmp_path / "out"
    out.mkdir()
    lock = RunLock.acquire(str(out))
    try:
        with pytest.raises(TransferError, match=f"^'{out}' is in use by another benchmark"):
            run_benchmark(_toy(tmp_path), str(out), echo=lambda line: None)
    finally:
        lock.release()
    (out / "wall.json").write_text('{"seconds": 3}')
    with pytest.raises(TransferError, match=r"wall.json' holds a dict, expected a list: remove it"):
        run_benchmark(_toy(tmp_path), str(out), echo=lambda line: None, report_only=True)
    (out / "wall.json").write_text("[3.5]")
    with pytest.raises(TransferError, match=r"wall.json': expected each invocation as the keys \['jobs', "
                       r"'protocols', 'rate', 'seconds', 'threads'\], found 3.5"):
        run_benchmark(_toy(tmp_path), str(out), echo=lambda line: None, report_only=True)
    (out / "wall.json").write_text("[")
    with pytest.raises(TransferError, match=r"wall.json' cannot be read"):
        run_benchmark(_toy(tmp_path), str(out), echo=lambda line: None, report_only=True)
    # --report-only on a folder without trials writes the report and nothing else: no scenes, no time
    (out / "wall.json").unlink()
    report = open(run_benchmark(_toy(tmp_path), str(out), echo=lambda line: None, report_only=True)).read()
    assert "no invocation that ran a step" in report
    assert "**Not finished yet:** frozen_segmentation: random, twist; segmentation: random, twist" in report
    assert not (out / "data").exists() and not (out / "wall.json").exists()
