"""The two regularisers at work (the paper's Table 8), on the real digits at their native 8x8 size:
without the sharpness term the class distributions collapse to near-uniform; with both terms a short
run keeps them sharp and spread over the classes."""
import math
import os

import torch

from tests.parts import twin_model
from twist.config import load_config
from twist.data import EvalDataset, SourceConfig, build_source
from twist.data.transforms import eval_transform
from twist.engine.trainer import train

NUM_CLASSES = 10
# With NBS every class logit has unit variance over the batch, which caps how confident a softmax
# can be: ten perfectly separated, balanced clusters still have a mean entropy of about 0.39 log C.
SHARP = 0.75
UNIFORM = 0.95


def _val_loader(cfg):
    dataset = EvalDataset(build_source(SourceConfig.from_config(cfg), cfg["eval"]["split"]),
                          eval_transform(cfg["augment"]["pipeline"], cfg["data"]["image_size"]))
    return torch.utils.data.DataLoader(dataset, batch_size=256)


def _trained_distributions(tmp_path, extra):
    cfg = load_config("configs/demo/digits.yaml", [
        "data.image_size=8", "train.epochs=6", "optim.warmup_epochs=1", "train.progress_bar=false",
        "eval.enabled=false", *extra,
    ])
    train(cfg, str(tmp_path))
    model = twin_model(cfg)
    model.load_state_dict(torch.load(os.path.join(tmp_path, "checkpoint.pth"), weights_only=True)["model"])
    model.eval()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model([images])[0], dim=1) for images, _, _ in _val_loader(cfg)])
    per_sample_entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1).mean().item()
    mean = probs.mean(0)
    entropy_of_mean = -(mean * mean.clamp_min(1e-12).log()).sum().item()
    return per_sample_entropy / math.log(NUM_CLASSES), entropy_of_mean / math.log(NUM_CLASSES), \
        probs.argmax(1).unique().numel()


def test_without_sharpness_the_outputs_collapse_to_uniform(tmp_path):
    # lam1 = -1 makes the sharpness weight (1 + lam1) zero.
    per_sample, _, _ = _trained_distributions(tmp_path, ["loss.lam1=-1.0"])
    assert per_sample > UNIFORM


def test_with_both_regularisers_the_outputs_stay_sharp_and_diverse(tmp_path):
    per_sample, of_mean, used = _trained_distributions(tmp_path, [])  # the demo weights: 2 and 1
    assert per_sample < SHARP
    assert of_mean > 0.9
    assert used >= NUM_CLASSES // 2
