import math

import pytest
import torch

from tests.parts import twin_model
from twist.config import load_config
from twist.engine.optim import momentum_schedule
from twist.models.teacher import EMATeacher


def test_ema_update_matches_float64_formula():
    torch.manual_seed(0)
    student, teacher_net = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    teacher = EMATeacher(teacher_net, student)
    assert all(torch.equal(a, b) for a, b in zip(teacher.model.parameters(), student.parameters()))
    expected = [p.detach().double().clone() for p in teacher.model.parameters()]
    for m in (0.9, 0.996, 0.5):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p))
        teacher.update(student, m)
        expected = [m * e + (1 - m) * s.detach().double() for e, s in zip(expected, student.parameters())]
    for t, e in zip(teacher.model.parameters(), expected):
        torch.testing.assert_close(t.double(), e, rtol=1e-6, atol=1e-7)
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_momentum_schedule_covers_the_run_and_ends_at_end():
    schedule = momentum_schedule(0.996, 1.0, total_steps=1000)
    assert len(schedule) == 1000
    assert schedule[0] == pytest.approx(0.996) and schedule[-1] == pytest.approx(1.0)
    assert all(a <= b + 1e-15 for a, b in zip(schedule, schedule[1:]))
    assert schedule[500] == pytest.approx(1.0 + 0.5 * (0.996 - 1.0) * (1 + math.cos(math.pi * 500 / 999)))


def test_teacher_has_no_stochastic_depth():
    cfg = load_config(None, ["model.backbone=deit_small", "model.small_input=true", "data.image_size=16",
                             "data.dataset=synthetic", "model.drop_path_rate=0.2", "model.head.hidden_dim=32",
                             "model.head.num_classes=8"])
    student, teacher = twin_model(cfg), EMATeacher(twin_model(cfg), twin_model(cfg))
    assert student.backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    assert all(getattr(m, "drop_prob", 0.0) == 0.0 for m in teacher.modules())
