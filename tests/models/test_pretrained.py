"""Reading backbone weights from any checkpoint layout: search order, prefixes, architecture, safety."""
import argparse

import pytest
import torch

from twist.engine.checkpoint import CheckpointError
from twist.models.backbones import build_backbone
from twist.models.pretrained import (
    detect_architecture,
    load_backbone_weights,
    load_into,
    locate_backbone,
    read_checkpoint,
    strip_prefixes,
)


def _state(name, small_input=False, image_size=224):
    with torch.device("meta"):  # shapes only: no memory for the 375 M parameters of a ResNet-50w4
        return build_backbone(name, small_input, image_size=image_size).module.state_dict()


@pytest.mark.parametrize("name, small_input, image_size", [
    ("resnet18", False, 224), ("resnet34", False, 224), ("resnet50", False, 224), ("resnet50w2", False, 224),
    ("resnet50w4", False, 224), ("resnet18", True, 32), ("resnet50", True, 32),
    ("deit_small", False, 224), ("vit_base", False, 224), ("deit_small", True, 32),
])
def test_architecture_is_recognised_from_names_and_shapes(name, small_input, image_size):
    arch = detect_architecture(_state(name, small_input, image_size))
    assert (arch.name, arch.small_input) == (name, small_input)
    assert arch.family == ("vit" if name in ("deit_small", "vit_base") else "resnet")
    assert arch.image_size == (image_size if arch.family == "vit" else 0)


def test_unknown_layouts_are_named():
    state = _state("resnet50")
    deeper = {**state, **{k.replace("layer3.0.", "layer3.9."): v for k, v in state.items() if "layer3.0." in k}}
    with pytest.raises(CheckpointError, match=r"bottleneck blocks \[3, 4, 10, 3\]"):
        detect_architecture(deeper)
    with pytest.raises(CheckpointError, match="not a recognised backbone.*found 2 keys"):
        detect_architecture({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)})


def _tensor_dict(prefix, n=3):
    return {f"{prefix}conv1.weight": torch.zeros(1), f"{prefix}layer1.0.conv1.weight": torch.ones(1)} | {
        f"{prefix}fc.weight": torch.zeros(n)}


@pytest.mark.parametrize("checkpoint, teacher, where", [
    ({"backbone": _tensor_dict(""), "model": _tensor_dict("backbone."), "state_dict": _tensor_dict("")}, False,
     "backbone"),
    ({"state_dict": _tensor_dict("module."), "model": _tensor_dict("backbone.")}, False, "state_dict"),
    ({"model": {**_tensor_dict("backbone."), "head.0.weight": torch.zeros(1)}}, False, "model (backbone.*)"),
    ({"model": {**_tensor_dict("features.backbone."), "classifier.weight": torch.zeros(1)}}, False,
     "model (features.backbone.*)"),
    (_tensor_dict(""), False, "the file itself (a plain state dict)"),
    ({"backbone": _tensor_dict(""), "teacher_backbone": _tensor_dict(""), "teacher": _tensor_dict("backbone.")},
     True, "teacher_backbone"),
    ({"backbone": _tensor_dict(""), "teacher": {**_tensor_dict("backbone."), "head.w": torch.zeros(1)}}, True,
     "teacher (backbone.*)"),
])
def test_search_order(checkpoint, teacher, where):
    state, found = locate_backbone(checkpoint, "ckpt.pth", teacher)
    assert found == where
    assert any(k.endswith("conv1.weight") for k in state)


def test_teacher_requested_but_absent_is_an_error():
    with pytest.raises(CheckpointError, match="has no teacher weights.*drop --teacher"):
        locate_backbone({"backbone": _tensor_dict("")}, "ckpt.pth", teacher=True)


@pytest.mark.parametrize("prefix, stripped", [
    ("module.", ["module."]), ("backbone.", ["backbone."]), ("encoder.", ["encoder."]),
    ("module.encoder_q.", ["module.encoder_q."]), ("module.backbone.", ["module.backbone."]),
    ("module.module.", ["module.", "module."]), ("", []),
])
def test_prefixes_are_stripped(prefix, stripped):
    state = _tensor_dict(prefix)
    if prefix == "module.encoder_q.":  # MoCo: the key encoder and the queue are not the backbone
        state |= _tensor_dict("module.encoder_k.") | {"module.queue": torch.zeros(4)}
    out, removed = strip_prefixes(state)
    assert removed == stripped
    assert set(out) == {"conv1.weight", "layer1.0.conv1.weight", "fc.weight"}


def test_a_whole_resnet_checkpoint_round_trips_and_drops_the_classifier(tmp_path):
    net = build_backbone("resnet18").module
    state = {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}
    state["module.encoder_q.fc.weight"] = torch.zeros(10, 512)
    torch.save({"state_dict": state}, tmp_path / "moco.pth")
    weights = load_backbone_weights(str(tmp_path / "moco.pth"))
    assert weights.architecture.name == "resnet18" and weights.dropped_keys == ["fc.weight"]
    fresh = build_backbone("resnet18").module
    load_into(fresh, weights.state_dict, "moco.pth")
    for key, value in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_mismatched_weights_list_missing_unexpected_and_misshapen_keys():
    net = build_backbone("resnet18").module
    state = dict(net.state_dict())
    del state["layer4.1.bn2.bias"]
    state["layer9.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(CheckpointError) as err:
        load_into(net, state, "w.pth")
    text = str(err.value)
    assert "missing (1): ['layer4.1.bn2.bias']" in text and "unexpected (1): ['layer9.weight']" in text
    assert "conv1.weight: (64, 3, 3, 3) in the file, (64, 3, 7, 7) in the model" in text


def test_a_pickled_object_is_refused_without_trust_and_loaded_with_it(tmp_path, capsys):
    path = tmp_path / "authors.pth"
    torch.save({"backbone": build_backbone("resnet18").module.state_dict(),
                "args": argparse.Namespace(lr=0.5)}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        read_checkpoint(str(path))
    obj, trusted = read_checkpoint(str(path), trust=True)
    assert trusted and obj["args"].lr == 0.5
    assert "full unpickling" in capsys.readouterr().err
    assert load_backbone_weights(str(path), trust=True).architecture.name == "resnet18"


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_garbage_and_truncated_files_are_clear_errors(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"'.*bad.pth' is truncated or not a torch checkpoint"):
        read_checkpoint(str(path))


def test_a_truncated_real_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"backbone": build_backbone("resnet18").module.state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a torch checkpoint"):
        read_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(str(tmp_path / "absent.pth"))
