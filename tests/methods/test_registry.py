"""The method registry: each method owns its config sections, the schema holds exactly them, and no
code outside the registry branches on the method's name."""
import glob
import re

import pytest
import torch

from twist.config import DEFAULTS, load_config
from twist.methods import METHODS, build_method
from twist.sections import section_defaults

TINY = ["device=cpu", "data.dataset=synthetic", "data.image_size=16", "model.backbone=resnet18",
        "train.batch_size=8", "wmse.w_size=8", "wmse.out_dim=4"]


def test_only_the_registry_reads_the_method_key():
    readers = [f"{path}:{number}" for path in glob.glob("twist/**/*.py", recursive=True)
               for number, line in enumerate(open(path, encoding="utf-8"), 1)
               if re.search(r"""\[["']method["']\]""", line) and "baseline" not in line]
    assert readers == ["twist/methods/__init__.py:16"], readers


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_section_is_in_the_schema_with_its_defaults(name):
    for path, section in METHODS[name].sections.items():
        tree = DEFAULTS
        for part in path.split("."):
            tree = tree[part]
        assert tree == section_defaults(section), path
        for key in list(METHODS[name].ranges) + list(METHODS[name].choices) + list(METHODS[name].list_shapes):
            assert any(key.startswith(p + ".") for p in METHODS[name].sections), key


@pytest.mark.parametrize("name, views", [("twist", 2), ("barlow_twins", 2), ("wmse", 4)])
def test_a_method_built_from_a_config_gives_its_head_and_a_finite_loss(name, views):
    cfg = load_config(None, TINY + [f"method={name}", "wmse.num_samples=4"])
    method = build_method(cfg)
    assert method.global_views() == views
    head = method.build_head(16, "resnet").double()
    torch.manual_seed(0)
    features = [torch.randn(8, 16, dtype=torch.float64) for _ in range(views)]
    outputs = head(features) if METHODS[name].views_apart else list(head(torch.cat(features)).chunk(views))
    terms = method.loss(outputs, 0, torch.arange(8))
    assert torch.isfinite(terms["loss"]) and terms["loss"].requires_grad
