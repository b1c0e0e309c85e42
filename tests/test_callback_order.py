"""Interrupt and resume with BackupAndRestore, in both callback orders: the resumed run's pruning
steps, masks and weights equal an uninterrupted run's (issue 20)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfcompress
from tfcompress.callbacks import UpdatePruning
from tfcompress.pruning import PolynomialDecay, pruning_wrappers


class Crash(keras.callbacks.Callback):
    """Stops training with an exception at one global batch, as a kill would (no on_train_end)."""

    def __init__(self, at: int | None = None, after_epoch: int | None = None):
        super().__init__()
        self.at, self.after_epoch, self.seen = at, after_epoch, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise KeyboardInterrupt("simulated kill")

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after_epoch:  # after BackupAndRestore saved the finished epoch
            raise KeyboardInterrupt("simulated kill")


def fresh_pruned():
    keras.utils.set_random_seed(0)
    x = keras.Input((6,))
    h = keras.layers.Dense(16, activation="relu", name="fc1")(x)
    model = keras.Model(x, keras.layers.Dense(3, name="out")(h))
    pruned = tfcompress.prune(model, PolynomialDecay(0.0, 0.8, begin_step=0, end_step=40, frequency=4))
    pruned.compile(keras.optimizers.SGD(0.05), "mse")
    return pruned


def run(order, backup_dir, crash_at=None, crash_after_epoch=None, save_freq=1):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)).astype("float32"), rng.normal(size=(64, 3)).astype("float32")
    model = fresh_pruned()
    backup = keras.callbacks.BackupAndRestore(str(backup_dir), save_freq=save_freq)
    callbacks = [UpdatePruning(), backup] if order == "pruning_first" else [backup, UpdatePruning()]
    if crash_at is not None or crash_after_epoch is not None:
        callbacks.append(Crash(crash_at, crash_after_epoch))
    try:
        model.fit(x, y, batch_size=8, epochs=6, shuffle=False, verbose=0, callbacks=callbacks)
    except KeyboardInterrupt:
        return None
    return model


@pytest.mark.parametrize("order", ["pruning_first", "backup_first"])
def test_resume_after_a_kill_equals_an_uninterrupted_run(order, tmp_path):
    reference = run(order, tmp_path / "reference", save_freq="epoch")
    # killed after epoch 2 of 6 was saved
    assert run(order, tmp_path / "resumed", crash_after_epoch=1, save_freq="epoch") is None
    resumed = run(order, tmp_path / "resumed", save_freq="epoch")
    for a, b in zip(pruning_wrappers(reference), pruning_wrappers(resumed), strict=True):
        assert int(a.pruning_step.numpy()) == int(b.pruning_step.numpy()) == 48
        np.testing.assert_array_equal(a.mask.numpy(), b.mask.numpy())
    assert int(resumed.optimizer.iterations.numpy()) == 48
    for a, b in zip(reference.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("order", ["pruning_first", "backup_first"])
def test_resume_mid_epoch_keeps_the_pruning_step_on_the_optimizer_step(order, tmp_path):
    """Keras resumes a killed epoch from its start (the batches after the last epoch are done
    again); the pruning schedule then follows the optimizer's step, whatever the order."""
    assert run(order, tmp_path / "resumed", crash_at=19) is None  # mid-epoch 3
    resumed = run(order, tmp_path / "resumed")
    steps = {int(w.pruning_step.numpy()) for w in pruning_wrappers(resumed)}
    assert steps == {int(resumed.optimizer.iterations.numpy())}
    sparsity = [1 - w.mask.numpy().mean() for w in pruning_wrappers(resumed)]
    np.testing.assert_allclose(sparsity, 0.8, atol=0.02)
