import re

from twist.engine.machine_speed import bare_resnet18_rate
from twist_tools.machine_speed import main


def test_the_rate_is_that_of_the_fastest_timed_step(monkeypatch):
    clock = iter([10.0, 11.0, 20.0, 20.5, 30.0, 32.0])  # three timed steps of 1, 0.5 and 2 s
    monkeypatch.setattr("twist.engine.machine_speed.time.perf_counter", lambda: next(clock))
    assert bare_resnet18_rate(steps=3, batch=4, size=16) == 8.0


def test_make_demo_prints_the_machines_rate_in_the_demos_setting(capsys):
    assert main() == 0
    line = capsys.readouterr().out.strip()
    match = re.fullmatch(r"this machine: bare ResNet-18 training at (\d+) images/s "
                         r"\(24 px, batch 512: the demo's step\)", line)
    assert match and int(match.group(1)) > 0
