"""The data-pipeline and memory benchmarks keep working (they are run by hand, so nothing else would
notice them breaking). Their figures are not checked here: benchmarks, not timed tests."""
import subprocess
import sys


def _run(*args):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_data_pipeline_benchmark_prints_both_pipelines_and_the_workers_needed():
    out = _run("bench/data_pipeline.py", "--images", "4", "--rounds", "1", "--local-crops", "2", "--batch-size", "4",
               "--step-rate", "100", "200")
    assert "two views, 2 x 224" in out and "multi-crop, 2 x 224 + 2 x 96" in out
    assert "a step at 100 images/s needs" in out and "a step at 200 images/s needs" in out
    assert "with augment.on_device" in out


def test_data_pipeline_benchmark_measures_the_step_rate_of_the_configs_model(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text("model:\n  backbone: resnet18\n  head:\n    hidden_dim: 32\n    num_classes: 16\n"
                      "data:\n  image_size: 32\naugment:\n  pipeline: barlow\n  local_size: 16\n")
    out = _run("bench/data_pipeline.py", "--config", str(config), "--images", "4", "--rounds", "1",
               "--local-crops", "2", "--batch-size", "4", "--measure-step", "--step-batch-size", "4")
    assert "two views, 2 x 32" in out and "multi-crop, 2 x 32 + 2 x 16" in out
    rates = out.split("batch 4: ")[1].split(" images/s")[0]
    assert all(float(rate) > 0 for rate in rates.split(", ")), rates
    assert "a step at" in out and "worker cores" in out


def test_memory_benchmark_prints_per_image_figures_for_both_settings():
    out = _run("bench/memory.py", "--image-size", "16", "--local-size", "8", "--local-crops", "2",
               "--hidden-dim", "16", "--num-classes", "8", "--batches", "4", "8")
    rows = [line for line in out.splitlines() if line.startswith("2 x 16")]
    assert len(rows) == 2 and all(len(row.split()) >= 4 for row in rows)
