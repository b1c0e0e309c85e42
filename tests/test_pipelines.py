"""iterative_prune: rising sparsity, nested masks, lottery-ticket and learning-rate rewinding, save/load."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from layer_harness import assert_keras_roundtrip

import tfcompress
from tfcompress.callbacks.pruning import UpdatePruning
from tfcompress.errors import TfcompressError
from tfcompress.pipelines import iterative_prune
from tfcompress.pruning import pruning_wrappers, strip


def small_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(6, 3, name="conv")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(10, activation="relu", name="fc")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="out")(h))


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 8, 8, 1), dtype=np.float32)
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype("int64") + (x[:, 0, 0, 0] > 0.5)
    return x, y


def compile_(model, lr=1e-2):
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def np_(v):
    return np.array(keras.ops.convert_to_numpy(v))


def masks(model):
    return {w.layer.name: np_(w.mask) for w in pruning_wrappers(model)}


def test_sparsity_rises_to_each_target_and_masks_are_nested():
    x, y = data()
    targets = [0.5, 0.75, 0.9]
    seen = []

    def train_fn(model, k):
        start = masks(model)
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[UpdatePruning()])
        assert all((masks(model)[n] == m).all() for n, m in start.items())  # fit keeps the round's mask
        baked = strip(model)
        kernels = {w.layer.name: baked.get_layer(w.layer.name).get_weights()[0] for w in pruning_wrappers(model)}
        seen.append((start, kernels))
        return k

    pruned, history = iterative_prune(compile_(small_cnn()), targets, train_fn)
    assert [r["round"] for r in history] == [0, 1, 2] and [r["train"] for r in history] == [0, 1, 2]
    for k, (record, (mask, _)) in enumerate(zip(history, seen, strict=True)):
        assert record["target"] == targets[k]
        for name, m in mask.items():
            assert record["layers"][name] == pytest.approx(round(targets[k] * m.size) / m.size)
        assert record["sparsity"] == pytest.approx(targets[k], abs=0.01)
        if k:
            previous, previous_kernels = seen[k - 1]
            for name, m in mask.items():
                assert np.all(m <= previous[name])  # nested: pruned once, pruned for good
                # NumPy reference: keep the largest |w| of the previous round's trained survivors
                scores = np.abs(previous_kernels[name]).reshape(-1)
                scores[previous[name].reshape(-1) == 0] = -1.0
                reference = np.ones(scores.size)
                reference[np.argsort(scores, kind="stable")[: round(targets[k] * scores.size)]] = 0
                np.testing.assert_array_equal(m.reshape(-1), reference)
    # weights pruned in round k are still exactly zero at the end
    final = strip(pruned)
    for name, m in seen[0][0].items():
        assert np.all(final.get_layer(name).get_weights()[0][m == 0] == 0)


def test_rewind_weights_resets_survivors_to_init_times_mask():
    model = small_cnn(seed=1)
    init = {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers}
    x, y = data()
    compile_(model).fit(x, y, batch_size=32, epochs=1, verbose=0)  # trained: current weights != theta_0
    trained = {layer.name: np.abs(layer.get_weights()[0]) for layer in model.layers if layer.get_weights()}
    checked = []

    def train_fn(pruned, k):
        optimizer = pruned.optimizer
        assert int(np_(optimizer.iterations)) == 0  # the optimizer starts afresh every round
        for w in pruning_wrappers(pruned):
            kernel, bias = w.layer.get_weights()
            theta0_kernel, theta0_bias = init[w.layer.name]
            np.testing.assert_array_equal(kernel, theta0_kernel * np_(w.mask))  # theta_0 * m
            np.testing.assert_array_equal(bias, theta0_bias)
        for a, b in zip(pruned.get_layer("bn").trainable_weights, init["bn"][:2], strict=True):
            np.testing.assert_array_equal(np_(a), b)
        if optimizer.built:  # moments zeroed
            slots = [np_(v) for v in optimizer.variables if "momentum" in v.path or "velocity" in v.path]
            assert slots and all(not s.any() for s in slots)
        checked.append(masks(pruned))
        pruned.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[UpdatePruning()])

    pruned, history = iterative_prune(model, [0.3, 0.6], train_fn, rewind="weights",
                                      initial_weights=[w for layer in model.layers for w in init[layer.name]])
    assert len(checked) == 2 and history[-1]["sparsity"] == pytest.approx(0.6, abs=0.01)
    # round 0's mask was chosen on the trained weights, not on theta_0
    for name, m in checked[0].items():
        reference = np.ones(m.size)
        reference[np.argsort(trained[name].reshape(-1), kind="stable")[: round(0.3 * m.size)]] = 0
        np.testing.assert_array_equal(m.reshape(-1), reference)
    with pytest.raises(TfcompressError, match="initial_weights do not fit"):
        iterative_prune(model, [0.5], train_fn, rewind="weights", initial_weights=[np.zeros(3)])


def test_rewind_weights_defaults_to_the_weights_at_call_time_and_keeps_the_kernel_choice():
    model = compile_(small_cnn(seed=2))
    theta0 = {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers}
    x, y = data()
    after_round = []

    def train_fn(pruned, k):
        for w in pruning_wrappers(pruned):
            np.testing.assert_array_equal(w.layer.get_weights()[0], theta0[w.layer.name][0] * np_(w.mask))
        pruned.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[UpdatePruning()])
        after_round.append({w.layer.name: np.abs(w.masked_kernel_numpy()) for w in pruning_wrappers(pruned)})

    pruned, _ = iterative_prune(model, [0.0, 0.5], train_fn, rewind="weights")
    # round 1's mask was chosen on round 0's trained (dense) weights, then rewound to theta_0
    for w in pruning_wrappers(pruned):
        scores = after_round[0][w.layer.name].reshape(-1)
        reference = np.ones(scores.size)
        reference[np.argsort(scores, kind="stable")[: round(0.5 * scores.size)]] = 0
        np.testing.assert_array_equal(np_(w.mask).reshape(-1), reference)


def test_learning_rate_rewinding_keeps_weights_and_restarts_the_optimizer():
    x, y = data()
    ends = []

    def train_fn(pruned, k):
        optimizer = pruned.optimizer
        if k:
            assert int(np_(optimizer.iterations)) == 0
            assert float(np_(optimizer.learning_rate)) == pytest.approx(1e-2)  # restored
            for w in pruning_wrappers(pruned):  # weights kept (not rewound), newly pruned ones zero
                np.testing.assert_array_equal(w.layer.get_weights()[0], ends[-1][w.layer.name] * np_(w.mask))
        pruned.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[UpdatePruning()])
        optimizer.learning_rate = 1e-5  # as a decay callback would leave it
        ends.append({w.layer.name: w.masked_kernel_numpy() for w in pruning_wrappers(pruned)})

    iterative_prune(compile_(small_cnn()), [0.4, 0.7], train_fn, rewind="learning_rate")
    assert len(ends) == 2


def test_channel_rounds_global_scope_save_and_load(tmp_path):
    x, y = data()

    def train_fn(pruned, k):
        pruned.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[UpdatePruning()])

    pruned, history = iterative_prune(compile_(small_cnn()), [0.25, 0.5], train_fn, granularity="channel",
                                      scope="global", min_keep_fraction=0.2)
    assert [r["target"] for r in history] == [0.25, 0.5]
    channels = {w.layer.name: w.channel_mask_numpy() for w in pruning_wrappers(pruned)}
    assert set(channels) == {"conv", "fc"}  # the output layer is left alone for channel pruning
    assert sum(int((c == 0).sum()) for c in channels.values()) == round(0.5 * 16)
    # the BN after the conv is masked with it
    np.testing.assert_array_equal(np_(pruned.get_layer("masked_bn").channel_mask), channels["conv"])
    again = assert_keras_roundtrip(pruned, x, tmp_path, atol=1e-6, name="pruned")
    for name, m in masks(pruned).items():
        np.testing.assert_array_equal(masks(again)[name], m)
    schedule = again.get_layer("prune_low_magnitude_conv").pruning_schedule
    assert schedule.target_sparsity == 0.5
    # the loaded model keeps its masks when trained further with UpdatePruning
    compile_(again).fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[UpdatePruning()])
    for name, m in masks(pruned).items():
        np.testing.assert_array_equal(masks(again)[name], m)
    np.testing.assert_allclose(strip(again).predict(x, verbose=0), again.predict(x, verbose=0), atol=1e-5)


def test_bad_arguments_and_lazy_export():
    assert tfcompress.iterative_prune is iterative_prune
    model = small_cnn()

    def train_fn(m, k):
        return None

    for kwargs, message in (({"sparsities": [0.5, 0.3]}, "must not decrease"),
                            ({"sparsities": []}, "empty"),
                            ({"sparsities": [1.0]}, "not in"),
                            ({"granularity": "2:4"}, "fixed sparsity"),
                            ({"rewind": "everything"}, "unknown rewind"),
                            ({"initial_weights": model.get_weights()}, "only used with rewind='weights'")):
        arguments = {"sparsities": [0.5], **kwargs}
        with pytest.raises(TfcompressError, match=message):
            iterative_prune(model, arguments.pop("sparsities"), train_fn, **arguments)
    with pytest.raises(TfcompressError, match="not callable"):
        iterative_prune(model, [0.5], None)
