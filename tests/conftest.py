import pytest

from twist.config import load_config

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
