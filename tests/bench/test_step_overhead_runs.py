"""The benchmark script keeps working (it is run by hand, so nothing else would notice it breaking)."""
import subprocess
import sys


def test_step_overhead_benchmark_prints_both_rates_and_the_ratio():
    proc = subprocess.run([sys.executable, "bench/step_overhead.py", "--image-size", "16", "--batch-size", "8",
                           "--hidden-dim", "32", "--num-classes", "16", "--rounds", "1", "--steps", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "bare backbone" in proc.stdout and "TWIST" in proc.stdout
    ratio = float(proc.stdout.split("ratio TWIST / bare:")[1].split()[0])
    assert 0 < ratio < 10
