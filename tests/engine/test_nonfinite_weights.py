import pytest
import torch

from twist.engine.checkpoint import nonfinite_tensors


def test_finite_state_has_no_nonfinite_tensors():
    state = {"a": torch.randn(3, 4), "b": torch.tensor([3e38, -3e38]), "steps": torch.tensor([7]),
             "half": torch.full((100_000,), 60000.0, dtype=torch.float16),  # its sum overflows float16
             "empty": torch.zeros(0), "epoch": 3, "name": "x"}
    assert nonfinite_tensors(state) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_each_nonfinite_tensor_is_named_once(dtype, bad):
    poisoned = torch.randn(5, 5).to(dtype)
    poisoned[2, 3] = bad
    state = {"model": {"conv.weight": torch.randn(2, 2), "fc.bias": poisoned.t()},  # a non-contiguous view
             "optimizer": {"state": {0: {"momentum_buffer": torch.full((3,), bad)}}},
             "rng": torch.ByteTensor([1, 2, 3])}
    assert nonfinite_tensors(state) == ["model.fc.bias", "optimizer.state.0.momentum_buffer"]


def test_nan_beside_inf_in_one_tensor_and_lists_are_searched():
    state = {"groups": [torch.ones(2), torch.tensor([float("nan"), float("inf")])]}
    assert nonfinite_tensors(state) == ["groups.1"]


def _diverged_backbone(path):
    from twist.models.backbones import build_backbone

    state = build_backbone("resnet18").module.state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    state["fc.weight"] = torch.full((2, 512), float("inf"))  # a classifier: dropped, so not reported
    torch.save({"backbone": state, "epoch": 3}, path)


def test_loading_backbone_weights_refuses_nonfinite_tensors_naming_them(tmp_path):
    from twist.engine.checkpoint import CheckpointError
    from twist.models.pretrained import load_backbone_weights

    _diverged_backbone(tmp_path / "diverged.pth")
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(str(tmp_path / "diverged.pth"))
    message = str(err.value)
    assert "diverged.pth" in message and "layer2.0.conv1.weight" in message and "NaN or inf" in message
    assert "fc.weight" not in message and "\n" not in message


def test_the_description_gives_the_count_and_the_first_names():
    from twist.engine.checkpoint import describe_tensors

    assert describe_tensors(["a"]) == "1 tensor (a)"
    assert describe_tensors(list("abcdefg")) == "7 tensors (a, b, c and 4 more)"
