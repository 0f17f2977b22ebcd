"""This machine's speed in the digits demo's setting, printed by `make demo` after the run's own time.

    python -m twist_tools.machine_speed
"""
from __future__ import annotations

import sys

from twist.engine.machine_speed import DEMO_SETTING, DEMO_SETTING_TEXT, bare_resnet18_rate


def main() -> int:
    rate = bare_resnet18_rate(steps=5, **DEMO_SETTING)
    print(f"this machine: bare ResNet-18 training at {rate:.0f} images/s ({DEMO_SETTING_TEXT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
