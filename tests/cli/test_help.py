"""Every console script, and every twist-eval protocol, prints its --help (argparse formats help
strings with %, so a stray percent sign breaks them)."""
import os
import subprocess
import sys

import pytest

COMMANDS = [["twist-train"], ["twist-convert"], ["twist-trials"], ["twist-eval"]] + [
    ["twist-eval", protocol] for protocol in ("linear", "knn", "semisup", "cluster")]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_prints_and_exits_zero(command):
    executable = os.path.join(os.path.dirname(sys.executable), command[0])  # installed beside this interpreter
    assert os.path.exists(executable), f"{command[0]} is not installed (pip install -e .)"
    result = subprocess.run([executable, *command[1:], "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "Traceback" not in result.stderr
