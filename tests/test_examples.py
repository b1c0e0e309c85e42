"""The runnable user flows in examples/ run end to end (on a few hundred images, one epoch) and
write what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tfcompress.datasets import FASHION_MNIST_FILES, fashion_mnist_search_path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _have_fashion_mnist() -> bool:
    """A place the loader searches holds all four files (the examples load them in their own process)."""
    return any(all((directory / name).is_file() for name in FASHION_MNIST_FILES.values())
               for _, directory in fashion_mnist_search_path())


pytestmark = pytest.mark.skipif(not _have_fashion_mnist(),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.mark.parametrize("script, extra, outputs", [
    ("export_int8.py", [], ["lenet.tflite", "firmware"]),
    ("prune_and_shrink.py", [], ["dense.tflite", "small.tflite"]),
    ("qat.py", [], ["qat.tflite", "firmware_qat"]),
    ("bayesian_pruning.py", ["--keep", "conv1=6,conv2=13,fc1=55", "--finetune", "1"], ["bayes.tflite"]),
])
def test_example_runs(script, extra, outputs, tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLES / script), "--epochs", "1", "--limit", "512",
                           "--out", str(tmp_path), *extra], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accuracy" in done.stdout
    for name in outputs:
        assert (tmp_path / name).exists(), (name, sorted(p.name for p in tmp_path.iterdir()))
    if script == "bayesian_pruning.py":  # PosteriorPruning reached the chosen sub-architecture
        assert "channels 20-50-500-10 -> 6-13-55-10" in done.stdout, done.stdout[-2000:]
