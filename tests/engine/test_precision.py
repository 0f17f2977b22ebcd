import pytest
import torch

from twist.config import ConfigError, load_config
from twist.engine.trainer import autocast_dtype, optimizer_step, train


def _toy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x = torch.randn(16, 6)
    return model, x


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_optimizer_step_clips_the_global_norm_in_any_precision(dtype, clip):
    model, x = _toy()
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        loss = model(x).float().pow(2).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    norm = torch.sqrt(sum(g.double().pow(2).sum() for g in grads))
    factor = min(1.0, clip / (norm.item() + 1e-6)) if clip > 0 else 1.0
    assert norm.item() > 0.05  # so that clipping really changes the step

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    optimizer_step(loss, model, optimizer, scaler, clip)
    for p, p0, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), p0 - factor * g, rtol=1e-5, atol=1e-6)


def test_fp16_needs_cuda_and_bf16_runs_on_cpu(tmp_path, tiny_overrides):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        autocast_dtype("fp16", torch.device("cpu"))
    cfg = load_config(None, tiny_overrides + ["train.precision=bf16", "optim.clip_grad_norm=1.0", "train.epochs=1",
                                          "data.image_size=32"])
    result = train(cfg, str(tmp_path))
    assert result["finished"]
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
