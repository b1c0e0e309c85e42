"""Lottery-ticket weight rewinding, learning-rate rewinding, SET and RigL."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress.callbacks.pruning import UpdatePruning
from tfcompress.callbacks.rewinding import LearningRateRewinding, WeightRewinding, pruning_end_step
from tfcompress.callbacks.sparse_training import SparseTraining, erk_densities
from tfcompress.errors import TfcompressError
from tfcompress.pruning import prune, pruning_wrappers, strip
from tfcompress.schedules import ConstantSparsity, PolynomialDecay


def make(schedule, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu", name="fc1"),
                              keras.layers.Dense(3, name="out")])
    pruned = prune(model, schedule)
    pruned.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.random((160, 12), dtype=np.float32)
    y = (x[:, :4].sum(1) > x[:, 4:8].sum(1)).astype("int64") + (x[:, 8] > 0.5)
    return pruned, x, y


class Probe(keras.callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, None

    def on_train_batch_begin(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(pruning_wrappers(self.model)[0].pruning_step)) - 1
        if step == self.at:
            self.seen = [keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables]
        self.lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def test_weight_rewinding_resets_survivors_to_step_k_times_mask():
    model, x, y = make(PolynomialDecay(0.0, 0.75, begin_step=0, end_step=12, frequency=4))
    assert pruning_end_step(model) == 12
    rewind = WeightRewinding(rewind_step=2)
    early = Probe(at=2)
    after = Probe(at=13)  # the rewind happens at the end of step 12, the last mask update
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0,
              callbacks=[UpdatePruning(), early, rewind, after])
    assert rewind.rewound
    masks = {id(w.kernel_variable): keras.ops.convert_to_numpy(w.mask) for w in pruning_wrappers(model)}
    for variable, k, now in zip(model.trainable_variables, early.seen, after.seen, strict=True):
        expected = k * masks[id(variable)] if id(variable) in masks else k
        np.testing.assert_array_equal(now, expected)
    # the learning rate survives the optimizer reset (only the moments are zeroed)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(1e-2)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 30


def test_rewind_step_after_pruning_end_is_an_error():
    model, x, y = make(PolynomialDecay(0.0, 0.5, 0, 4, frequency=2))
    with pytest.raises(TfcompressError, match="not before the end of pruning"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[UpdatePruning(), WeightRewinding(rewind_step=10)])


def test_learning_rate_rewinding_replays_the_schedule():
    model, x, y = make(PolynomialDecay(0.0, 0.5, begin_step=0, end_step=6, frequency=3))
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([4, 8], [0.1, 0.01, 0.001])
    callback = LearningRateRewinding(schedule, rewind_step=0)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(round(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)), 6))

    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
              callbacks=[UpdatePruning(), callback, Record()])
    # steps 0..6 follow the schedule; after the last mask update (step 6) it starts again at 0
    expected = [0.1] * 5 + [0.01] * 2 + [0.1] * 5 + [0.01] * 4 + [0.001] * 4
    assert seen == expected[: len(seen)] and len(seen) == 20
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(callback))
    assert again.rewind_step == 0


def test_erk_densities_keep_the_budget():
    shapes = [(5, 5, 1, 20), (5, 5, 20, 50), (800, 500), (500, 10)]
    densities = erk_densities(shapes, 0.1)
    sizes = [np.prod(s) for s in shapes]
    assert sum(d * n for d, n in zip(densities, sizes, strict=True)) == pytest.approx(0.1 * sum(sizes))
    assert all(0 < d <= 1 for d in densities)
    assert densities[0] > densities[2]  # small layers stay denser


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_sparse_training_keeps_the_budget_and_rewires(method):
    model, x, y = make(ConstantSparsity(0.8, begin_step=0, end_step=0))
    callback = SparseTraining(method, update_freq=5, drop_fraction=0.3, total_steps=30, data=(x, y), batch_size=64)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
    first = [keras.ops.convert_to_numpy(w.mask).copy() for w in pruning_wrappers(model)]
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[callback])
    assert callback.updates >= 2
    for w, before in zip(pruning_wrappers(model), first, strict=True):
        mask = keras.ops.convert_to_numpy(w.mask)
        assert mask.sum() == before.sum() == round(0.2 * mask.size)  # fixed parameter budget
        stripped = strip(model).get_layer(w.layer.name).kernel.numpy()
        assert np.count_nonzero(stripped) <= mask.sum()
    assert any((keras.ops.convert_to_numpy(w.mask) != b).any() for w, b in zip(pruning_wrappers(model), first, strict=True))


def test_rigl_dense_gradient_equals_the_gradient_of_the_plain_model():
    model, x, y = make(ConstantSparsity(0.7, begin_step=0, end_step=0))
    callback = SparseTraining("rigl", total_steps=10, data=(x, y), batch_size=len(x))
    callback.set_model(model)
    callback.on_train_begin()
    grads = callback._dense_gradients()
    plain = strip(model)  # same effective weights, no masks
    with tf.GradientTape() as tape:
        loss = plain.compute_loss(x=x, y=y, y_pred=plain(x, training=False))
    kernels = [plain.get_layer("fc1").kernel, plain.get_layer("out").kernel]
    reference = tape.gradient(loss, [k.value for k in kernels])
    masks = [keras.ops.convert_to_numpy(w.mask) for w in pruning_wrappers(model)]
    for ours, ref, mask in zip(grads, reference, masks, strict=True):
        np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-5, atol=1e-6)
        assert np.count_nonzero(ours[mask == 0]) > 0  # dense: inactive weights get a gradient too


class Capture(keras.callbacks.Callback):
    """Masks and kernels at the first batch whose pruning step is ``step`` (and, with ``plain``,
    the baked plain model for RigL's reference gradient)."""

    def __init__(self, step, plain=False):
        super().__init__()
        self.step, self.plain, self.state, self.model_copy = step, plain, None, None

    def on_train_batch_begin(self, batch, logs=None):
        wrappers = pruning_wrappers(self.model)
        if self.state is None and int(keras.ops.convert_to_numpy(wrappers[0].pruning_step)) == self.step:
            self.state = [(keras.ops.convert_to_numpy(w.mask).reshape(-1).copy(),
                           keras.ops.convert_to_numpy(w.kernel_variable).reshape(-1).copy()) for w in wrappers]
            if self.plain:
                self.model_copy = strip(self.model)


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_one_update_drops_the_smallest_and_grows_the_largest_dense_gradients(method):
    """Evci et al. 2020, Alg. 1: drop the k = f_decay(t) * |active| active weights of smallest |w|;
    RigL grows the k weights of largest |dL/dW| (dense gradient) outside the kept set (a dropped
    one may return, keeping its value), SET k random previously inactive ones (Mocanu et al.
    2018); new connections start at 0."""
    model, x, y = make(ConstantSparsity(0.7, begin_step=0, end_step=0))
    update_at, total, alpha, end_fraction = 4, 20, 0.3, 0.75
    callback = SparseTraining(method, update_freq=update_at, drop_fraction=alpha, end_fraction=end_fraction,
                              total_steps=total, data=(x, y), batch_size=len(x))
    # SparseTraining updates at step 4, then advances the step: before it the step reads 4, after it 5
    before, after = Capture(update_at, plain=method == "rigl"), Capture(update_at + 1)
    model.fit(x[:96], y[:96], batch_size=16, epochs=1, shuffle=False, verbose=0,
              callbacks=[before, callback, after])  # 6 steps: one update, at step 4
    assert callback.updates == 1
    fraction = alpha * (1 + np.cos(np.pi * update_at / (end_fraction * total))) / 2
    if method == "rigl":
        plain = before.model_copy  # effective weights at the update, no masks: the dense gradient
        with tf.GradientTape() as tape:
            loss = plain.compute_loss(x=x, y=y, y_pred=plain(x, training=False))
        kernels = [plain.get_layer(name).kernel for name in ("fc1", "out")]
        dense = [g.numpy().reshape(-1) for g in tape.gradient(loss, [k.value for k in kernels])]
    for i, ((mask0, w0), (mask1, w1)) in enumerate(zip(before.state, after.state, strict=True)):
        active, inactive = np.flatnonzero(mask0), np.flatnonzero(mask0 == 0)
        k = min(int(fraction * active.size), inactive.size)
        assert k > 0
        # NumPy reference of the drop set: the k smallest |w| among the active weights
        drop = active[np.argsort(np.abs(w0[active]), kind="stable")[:k]]
        kept = np.setdiff1d(active, drop)
        if method == "rigl":
            g = np.abs(dense[i])
            candidates = np.setdiff1d(np.arange(mask0.size), kept)
            grow = candidates[np.argsort(-g[candidates], kind="stable")[:k]]
            assert g[grow].min() >= g[np.setdiff1d(candidates, grow)].max()
        else:
            grow = np.flatnonzero((mask0 == 0) & (mask1 == 1))
            assert grow.size == k and np.all(mask0[grow] == 0)  # random, among the inactive
        np.testing.assert_array_equal(np.flatnonzero(mask1), np.union1d(kept, grow))
        assert mask1.sum() == mask0.sum()  # the sparsity is fixed
        new = np.setdiff1d(grow, active)
        regrown = np.intersect1d(grow, drop)
        assert np.all(w1[new] == 0)  # new connections start at zero
        assert np.all(w1[np.setdiff1d(drop, grow)] == 0)
        np.testing.assert_array_equal(w1[regrown], w0[regrown])  # a regrown weight keeps its value
