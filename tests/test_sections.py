"""The typed sections the run's parts take: each built from a checked config, holding every key of its
section and nothing else, frozen, with lists as tuples."""
import dataclasses

import pytest

from twist.config import load_config
from twist.data import SourceConfig
from twist.data.loader import DataConfig
from twist.data.view_specs import AugmentConfig
from twist.engine.monitors import MonitorConfig
from twist.engine.trainer import RunSections, TrainConfig
from twist.eval.config import EVAL
from twist.models import BackboneConfig
from twist.models.teacher import TeacherConfig
from twist.sections import read_section

CHANGED = ["data.dataset=synthetic", "data.num_samples=40", "data.train_split=val", "data.skip_corrupt=true",
           "augment.crop_scale=[0.3, 0.9]", "augment.local_crops=2", "train.batch_size=16", "train.compile=true",
           "model.backbone=resnet18", "model.drop_path_rate=0.1", "teacher.enabled=true", "monitor.probe=true",
           "seed=7"]


@pytest.fixture
def cfg():
    return load_config(None, CHANGED)


def _as_config(section) -> dict:
    """The section's keys and values as the YAML holds them (tuples back to lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(section).items()}


@pytest.mark.parametrize("section, name", [(TrainConfig, "train"), (AugmentConfig, "augment"),
                                           (TeacherConfig, "teacher"), (MonitorConfig, "monitor")])
def test_a_whole_section_is_read_unchanged(cfg, section, name):
    built = section.from_config(cfg)
    assert _as_config(built) == cfg[name]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, dataclasses.fields(section)[0].name, None)
    with pytest.raises(TypeError):  # a key the section does not declare
        read_section(section, {**cfg[name], "misspelt": 1})
    with pytest.raises(TypeError):  # a key of the section that the dict lacks
        read_section(section, {k: v for k, v in cfg[name].items() if k != dataclasses.fields(section)[0].name})


def test_the_data_section_splits_into_the_source_and_the_loading(cfg):
    data = DataConfig.from_config(cfg)
    as_dict = dataclasses.asdict(data)
    source = as_dict.pop("source")
    assert source.pop("seed") == cfg["seed"] == 7
    assert {**source, **as_dict} == cfg["data"]  # every key of data, each in one of the two
    assert data.train_split == "val" and data.skip_corrupt and data.source.num_samples == 40


def test_the_source_section_reads_an_evaluation_config_too(tmp_path):
    cfg = EVAL.load(None, ["data.dataset=folder", f"data.path={tmp_path}", "seed=3"])
    source = SourceConfig.from_config(cfg)
    assert (source.dataset, source.path, source.seed) == ("folder", str(tmp_path), 3)


def test_the_backbone_section_is_model_but_its_head_and_the_image_size(cfg):
    backbone = BackboneConfig.from_config(cfg)
    model = {k: v for k, v in cfg["model"].items() if k != "head"}
    assert dataclasses.asdict(backbone) == {**model, "image_size": cfg["data"]["image_size"]}


def test_the_run_builds_every_section_once_from_one_config(cfg):
    sections = RunSections.from_config(cfg)
    assert sections.seed == 7 and sections.train.batch_size == 16 and sections.train.compile
    assert sections.optim is sections.schedules.optim and sections.teacher.enabled
    assert sections.augment.crop_scale == (0.3, 0.9) and sections.monitor.probe
    assert sections.backbone.drop_path_rate == 0.1


def test_the_end_of_run_evaluation_reads_eval_and_what_it_needs_of_the_rest():
    from twist.eval.cluster import EndOfRunEval

    cfg = load_config(None, [*CHANGED, "eval.split=train", "eval.batch_size=32", "eval.kmeans_baseline=true",
                             "model.head.num_classes=12", "augment.pipeline=small_gray", "data.num_workers=1"])
    section = EndOfRunEval.from_config(cfg)
    assert (section.split, section.batch_size, section.kmeans_baseline) == ("train", 32, True)
    assert (section.num_clusters, section.pipeline, section.num_workers, section.seed) == (12, "small_gray", 1, 7)
    assert section.source == SourceConfig.from_config(cfg) and section.image_size == cfg["data"]["image_size"]
