"""The optimiser benchmark keeps working (it is run by hand, so nothing else would notice it breaking)."""
import subprocess
import sys


def test_optimizer_benchmark_prints_lars_sgd_and_the_pass_floor():
    proc = subprocess.run([sys.executable, "bench/optimizer.py", "--hidden-dim", "32", "--num-classes", "16",
                           "--rounds", "1", "--steps", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "LARS (twist.engine.optim)" in proc.stdout and "one pass p += 0*g" in proc.stdout
    ratio = float(proc.stdout.split("ratio LARS / SGD:")[1].split()[0])
    assert 0 < ratio < 100
