"""Pruning state survives: .keras save/load mid-schedule, BackupAndRestore, MirroredStrategy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tfcompress.callbacks.pruning import UpdatePruning
from tfcompress.pruning import prune, pruning_summary, pruning_wrappers
from tfcompress.schedules import PolynomialDecay

BATCHES_PER_EPOCH = 6


def setup(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(12, activation="relu", name="fc"),
        keras.layers.Dense(3, name="out"),
    ])
    pruned = prune(model, PolynomialDecay(0.0, 0.8, begin_step=0, end_step=20, frequency=2))
    pruned.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.random((32 * BATCHES_PER_EPOCH, 8, 8, 1), dtype=np.float32)
    y = (x.mean(axis=(1, 2, 3)) * 3).astype("int64") % 3
    return pruned, x, y


def masks(model):
    return {w.layer.name: keras.ops.convert_to_numpy(w.mask) for w in pruning_wrappers(model)}


def fit(model, x, y, epochs, initial_epoch=0, callbacks=()):
    model.fit(x, y, batch_size=32, epochs=epochs, initial_epoch=initial_epoch, shuffle=False, verbose=0,
              callbacks=[*callbacks, UpdatePruning()])


@pytest.fixture(scope="module")
def continuous():
    model, x, y = setup()
    fit(model, x, y, epochs=4)
    return model


def test_keras_save_and_load_mid_schedule_resumes_the_schedule(tmp_path, continuous):
    model, x, y = setup()
    fit(model, x, y, epochs=2)
    mid = pruning_summary(model)
    assert {v["step"] for v in mid.values()} == {2 * BATCHES_PER_EPOCH}
    assert 0 < mid["fc"]["sparsity"] < 0.8  # mid-schedule
    model.save(tmp_path / "mid.keras")
    resumed = keras.saving.load_model(tmp_path / "mid.keras")
    assert pruning_summary(resumed) == mid
    for name, mask in masks(model).items():
        np.testing.assert_array_equal(masks(resumed)[name], mask)
    fit(resumed, x, y, epochs=4, initial_epoch=2)
    final = pruning_summary(resumed)
    assert {v["step"] for v in final.values()} == {4 * BATCHES_PER_EPOCH}
    assert final == pruning_summary(continuous)
    for name, mask in masks(continuous).items():
        np.testing.assert_array_equal(masks(resumed)[name], mask)


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_masks_and_step(tmp_path, continuous):
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    model, x, y = setup()
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(model, x, y, epochs=4, callbacks=[backup, Interrupt()])
    fresh, _, _ = setup()  # a new process would start from scratch like this
    assert {v["step"] for v in pruning_summary(fresh).values()} == {0}
    fit(fresh, x, y, epochs=4, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    assert pruning_summary(fresh) == pruning_summary(continuous)
    for name, mask in masks(continuous).items():
        np.testing.assert_array_equal(masks(fresh)[name], mask)


MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_pruning_state import setup, fit, masks

    def run(strategy):
        with strategy.scope():
            model, x, y = setup()
        fit(model, x, y, epochs=2)
        return model

    single = run(tf.distribute.get_strategy())
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored = run(strategy)
    out = {"replicas": strategy.num_replicas_in_sync,
           "same_masks": all(np.array_equal(a, masks(mirrored)[k]) for k, a in masks(single).items()),
           "sparsity": {k: float(1 - v.mean()) for k, v in masks(mirrored).items()},
           "max_weight_diff": max(float(np.abs(a - b).max()) for a, b in
                                  zip(single.get_weights(), mirrored.get_weights()))}
    print(json.dumps(out))
""")


def test_mirrored_strategy_two_devices_gives_the_single_device_masks():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    here = os.path.dirname(__file__)
    done = subprocess.run([sys.executable, "-c", MIRRORED, here], capture_output=True, text=True,
                          env=env, timeout=600, check=False, cwd=here)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["same_masks"], result
    assert result["sparsity"]["fc"] > 0.3
    assert result["max_weight_diff"] < 1e-4
