import os
import shutil
import tempfile

import pytest

from twist.config import load_config

# Disk the suite holds at once, measured over a whole run (2026-12-02). The one-step runs of the shipped
# full-size recipes write the most (ViT-B: a 1.9 GB checkpoint beside two 0.3 GB backbones, 2.5 GB in all):
# they are marked `disk_gb` and skip, saying so, where TMPDIR has less free. Every other test fits in
# SUITE_FLOOR_DISK_GB; below that, tests would fail for the disk rather than for the code, so the suite
# refuses to start.
SUITE_FLOOR_DISK_GB = 1.2


def _free_gb(config) -> tuple[str, float]:
    folder = os.path.abspath(config.option.basetemp or tempfile.gettempdir())
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    return folder, shutil.disk_usage(folder).free / 2**30


def pytest_configure(config):
    config.addinivalue_line("markers", "disk_gb(gb): the test writes about this many GB to TMPDIR at once")


def pytest_sessionstart(session):
    folder, free = _free_gb(session.config)
    if free < SUITE_FLOOR_DISK_GB:
        pytest.exit(f"tests: only {free:.1f} GB free under {folder}; the suite needs {SUITE_FLOOR_DISK_GB} GB (the "
                    "full-size recipes' one-step runs need more, and skip where it is short). Free some space or set "
                    "TMPDIR to a larger disk.",
                    returncode=3)


def pytest_runtest_setup(item):
    marker = item.get_closest_marker("disk_gb")
    if marker is not None:
        folder, free = _free_gb(item.config)
        if free < marker.args[0]:
            pytest.skip(f"needs {marker.args[0]} GB free under {folder} for its checkpoints, {free:.1f} GB there")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item):
    result = yield
    folder = getattr(item, "funcargs", {}).get("tmp_path")
    if folder is not None:  # still there only when the test failed: see pytest.ini
        shutil.rmtree(folder, ignore_errors=True)
    return result


TINY = [
    "seed=0", "device=cpu", "data.dataset=synthetic", "data.num_samples=32", "data.num_classes=4",
    "data.image_size=16", "data.num_workers=0", "model.backbone=resnet18", "model.head.hidden_dim=32",
    "model.head.num_classes=8", "train.batch_size=8", "train.epochs=2", "train.log_every=1",
    "train.progress_bar=false", "optim.warmup_epochs=1", "optim.lr=0.5", "data.train_split=train", "eval.split=val",
]


@pytest.fixture
def tiny_overrides():
    """A run that trains a few steps in about a second: synthetic 16 px images, ResNet-18, tiny head."""
    return list(TINY)


@pytest.fixture
def tiny_config(tiny_overrides):
    return load_config(None, tiny_overrides)
