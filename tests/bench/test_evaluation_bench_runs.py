"""The evaluation benchmark keeps working (it is run by hand, so nothing else would notice it breaking)."""
import subprocess
import sys


def test_evaluation_benchmark_prints_metric_times_and_the_extraction_ratio():
    proc = subprocess.run([sys.executable, "bench/evaluation.py", "--samples", "500", "--classes", "20",
                           "--loop-rows", "2", "--image-size", "16", "--batch-size", "4", "--batches", "2",
                           "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "nmi + ami + ari + acc" in proc.stdout and "reference K x K loop" in proc.stdout
    ratio = float(proc.stdout.split("ratio extraction / bare:")[1].split()[0])
    assert 0 < ratio < 10
