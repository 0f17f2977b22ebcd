import pytest
import torch
from torchvision.models import resnet18, resnet50

from tests.parts import twin_model
from twist.config import load_config
from twist.models import build_backbone


def test_resnet50_keys_are_torchvision_minus_fc():
    backbone = build_backbone("resnet50")
    reference = {k: v.shape for k, v in resnet50().state_dict().items() if not k.startswith("fc.")}
    ours = {k: v.shape for k, v in backbone.module.state_dict().items()}
    assert ours == reference
    assert backbone.feature_dim == 2048
    resnet50_no_fc = resnet50()
    resnet50_no_fc.fc = torch.nn.Identity()
    resnet50_no_fc.load_state_dict(backbone.module.state_dict(), strict=True)


def test_small_input_stem():
    backbone = build_backbone("resnet18", small_input=True)
    assert backbone.module.conv1.weight.shape == (64, 3, 3, 3)
    assert backbone.module.conv1.stride == (1, 1)
    assert isinstance(backbone.module.maxpool, torch.nn.Identity)
    assert set(backbone.module.state_dict()) == {k for k in resnet18().state_dict() if not k.startswith("fc.")}
    assert backbone.module(torch.randn(2, 3, 16, 16)).shape == (2, 512)


@pytest.mark.parametrize("name,widen", [("resnet50w2", 2), ("resnet50w4", 4)])
def test_swav_widened_resnet_widens_the_stem_too(name, widen):
    backbone = build_backbone(name, small_input=True)
    state = backbone.module.state_dict()
    assert state["conv1.weight"].shape == (64 * widen, 3, 3, 3)
    assert state["layer1.0.conv1.weight"].shape == (64 * widen, 64 * widen, 1, 1)
    assert state["layer1.0.conv2.weight"].shape == (64 * widen, 64 * widen, 3, 3)  # inner width widened as well
    assert state["layer4.2.conv3.weight"].shape == (2048 * widen, 512 * widen, 1, 1)
    assert backbone.feature_dim == 2048 * widen
    # Same key set as torchvision's ResNet-50: converters can treat both alike.
    assert set(state) == {k for k in resnet50().state_dict() if not k.startswith("fc.")}


def test_resnet50w2_standard_stem_shape():
    assert build_backbone("resnet50w2").module.conv1.weight.shape == (128, 3, 7, 7)


@pytest.mark.parametrize("name,dim", [("deit_small", 384), ("vit_base", 768)])
def test_vits_give_the_cls_feature(name, dim):
    backbone = build_backbone(name, drop_path_rate=0.1, image_size=32, small_input=True)
    assert backbone.family == "vit" and backbone.feature_dim == dim
    assert not any(k.startswith("head.") for k in backbone.module.state_dict())
    out = backbone.module(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, dim)
    assert backbone.module.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)


def test_drop_path_is_refused_for_resnets():
    with pytest.raises(ValueError, match="ViT backbones only"):
        build_backbone("resnet18", drop_path_rate=0.1)


def test_twin_model_runs_backbone_per_resolution_and_head_once():
    cfg = load_config(None, ["data.dataset=synthetic", "model.backbone=resnet18", "model.head.hidden_dim=32",
                             "model.head.num_classes=8", "data.image_size=32"])
    model = twin_model(cfg)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16)]
    out = model(views)
    assert [o.shape for o in out] == [(4, 8)] * 3
    assert calls == [(8, 3, 32, 32), (4, 3, 16, 16)]
