"""Masks of the pruning benchmark's configurations and the QAT graph of the reference models, written
to one file so two versions of tfcompress can be compared (did a refactor change any benchmark row?).

    git worktree add /tmp/old REV
    PYTHONPATH=/tmp/old python benchmarks/reproduce_masks.py /tmp/old.npz
    python benchmarks/reproduce_masks.py /tmp/new.npz
    python benchmarks/reproduce_masks.py --compare /tmp/old.npz /tmp/new.npz
"""

from __future__ import annotations

import sys

import keras
import numpy as np

import tfcompress
from tfcompress.models import lenet5_caffe, mobilenet_v2_tiny, residual_cnn
from tfcompress.pruning import pruning_wrappers, update_masks
from tfcompress.schedules import ConstantSparsity  # the old path: both versions have it

CONFIGS = [("magnitude90", {"granularity": "weight"}, 0.9), ("global90", {"scope": "global"}, 0.9),
           ("2:4", {"granularity": "2:4"}, 0.5), ("channels50", {"granularity": "channel"}, 0.5),
           ("channels60", {"granularity": "channel"}, 0.6), ("channels70", {"granularity": "channel"}, 0.7),
           ("global_channels70", {"granularity": "channel", "scope": "global"}, 0.7)]


def collect() -> dict[str, np.ndarray]:
    out = {}
    for name, settings, sparsity in CONFIGS:
        keras.utils.set_random_seed(0)
        pruned = tfcompress.prune(lenet5_caffe(), ConstantSparsity(sparsity, 0), **settings)
        update_masks(pruned, 0)
        for w in pruning_wrappers(pruned):
            out[f"mask/{name}/{w.layer.name}"] = keras.ops.convert_to_numpy(w.mask)
    rng = np.random.default_rng(0)
    for build in (lenet5_caffe, residual_cnn, mobilenet_v2_tiny):
        keras.utils.set_random_seed(0)
        model = build()
        qat = tfcompress.quantize(model)
        x = rng.uniform(0, 1, (16, *model.input_shape[1:])).astype("float32")
        qat(x, training=True)
        # layer types and names, but not the input's automatic name (a global counter)
        out[f"qat/{build.__name__}/layers"] = np.array([
            type(layer).__name__ if layer.name.startswith(("keras_tensor", "quantize_keras_tensor"))
            else f"{layer.name}:{type(layer).__name__}" for layer in qat.layers])
        out[f"qat/{build.__name__}/predictions"] = qat.predict(x, verbose=0)
    return out


def compare(a_path: str, b_path: str) -> int:
    a, b = np.load(a_path), np.load(b_path)
    differ = sorted(k for k in set(a.files) | set(b.files)
                    if k not in a.files or k not in b.files or not np.array_equal(a[k], b[k]))
    print(f"{len(a.files)} arrays compared; {len(differ)} differ" + (": " + ", ".join(differ) if differ else ""))
    return 1 if differ else 0


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    np.savez(sys.argv[1], **collect())
