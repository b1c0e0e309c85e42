"""KLAnnealing and VariationalPruning (VCP Algorithm 1) on tiny models."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress.callbacks.kl_annealing import KLAnnealing, bayesian_layers
from tfcompress.callbacks.variational_pruning import VariationalPruning
from tfcompress.errors import TfcompressError
from tfcompress.layers.dirichlet import DirichletSwitch
from tfcompress.layers.variational_bn import VariationalBatchNormalization


def nested_model(n: int = 32) -> keras.Model:
    """A VBN in the outer model and a DirichletSwitch inside a nested model."""
    inner_in = keras.Input((6,))
    inner = keras.Model(inner_in, DirichletSwitch(dataset_size=n, estimator="mean")(inner_in))
    inputs = keras.Input((6,))
    hidden = VariationalBatchNormalization(dataset_size=n, name="vbn")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1)(inner(hidden)))


def data(n: int = 32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype("float32"), rng.normal(size=(n, 1)).astype("float32")


def reference_weight(t, start, warmup, schedule, max_weight):
    p = 1.0 if warmup == 0 and t >= start else min(max((t - start) / warmup, 0.0), 1.0) if warmup else 0.0
    if schedule == "cosine":
        p = (1 - math.cos(math.pi * p)) / 2
    return max_weight * p


@pytest.mark.parametrize(
    ("start", "warmup", "schedule", "max_weight"),
    [(0, 4, "linear", 1.0), (2, 3, "cosine", 0.5), (1, 0, "linear", 2.0)],
)
def test_kl_annealing_follows_the_schedule_per_epoch(start, warmup, schedule, max_weight):
    model = nested_model()
    layers = bayesian_layers(model)
    assert sorted(type(layer).__name__ for layer in layers) == [
        "DirichletSwitch",
        "VariationalBatchNormalization",
    ]
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append([float(layer.kl_weight.numpy()) for layer in layers])
    )
    model.compile("sgd", "mse")
    x, y = data()
    annealing = KLAnnealing(start, warmup, schedule, max_weight)
    history = model.fit(x, y, epochs=7, batch_size=16, verbose=0, callbacks=[annealing, record])
    expected = [reference_weight(epoch, start, warmup, schedule, max_weight) for epoch in range(7)]
    np.testing.assert_allclose(history.history["kl_weight"], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.array(seen), np.array([expected, expected]).T, rtol=1e-6, atol=1e-7)


def test_kl_annealing_per_step_and_the_loss_sees_the_weight():
    model = nested_model()
    vbn = model.get_layer("vbn")
    steps_seen = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: steps_seen.append(float(vbn.kl_weight.numpy()))
    )
    model.compile("sgd", "mse")
    x, y = data()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[KLAnnealing(0, 2, per_step=True), record])
    np.testing.assert_allclose(steps_seen, [(e + b / 4) / 2 for e in range(2) for b in range(4)], rtol=1e-6)
    # The KL enters the loss scaled by kl_weight / N.
    vbn.kl_weight.assign(0.0)
    model(x)
    assert float(sum(vbn.losses)) == 0.0
    vbn.kl_weight.assign(2.0)
    model(x)
    np.testing.assert_allclose(float(sum(vbn.losses)), 2.0 * float(vbn.kl_divergence()) / 32, rtol=1e-5)


def test_kl_annealing_config_and_errors():
    callback = KLAnnealing(start_epoch=1, warmup_epochs=3, schedule="cosine", max_weight=0.7, per_step=True)
    clone = KLAnnealing.from_config(callback.get_config())
    assert clone.get_config() == callback.get_config()
    assert keras.saving.get_registered_object("tfcompress>KLAnnealing") is KLAnnealing
    with pytest.raises(TfcompressError, match="schedule"):
        KLAnnealing(schedule="exp")
    with pytest.raises(TfcompressError, match=">= 0"):
        KLAnnealing(warmup_epochs=-1)
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    plain.compile("sgd", "mse")
    with pytest.raises(TfcompressError, match="no Bayesian layer"):
        plain.fit(np.zeros((4, 2)), np.zeros((4, 1)), verbose=0, callbacks=[KLAnnealing()])


def test_variational_pruning_masks_exactly_the_rule(tmp_path):
    model = nested_model()
    vbn = model.get_layer("vbn")
    vbn.gamma.assign([0.01, -0.02, 0.01, 0.8, 0.03, -0.5])
    vbn.log_sigma.assign(np.log([0.05, 0.01, 0.9, 0.01, 0.3, 0.01]))
    # Learning rate 0 keeps mu and sigma where we set them.
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x, y = data()
    callback = VariationalPruning(tau=0.05, theta=0.2, log_dir=str(tmp_path / "tb"))
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback])
    np.testing.assert_array_equal(vbn.mask.numpy(), [0, 0, 1, 1, 1, 1])
    assert history.history["vcp_pruned_channels"] == [2, 2]
    assert history.history["vcp_pruned/vbn"] == [2, 2]
    assert np.all(np.asarray(model.layers[1](x))[:, :2] == 0.0)
    tags = {}
    for path in (tmp_path / "tb").iterdir():
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    assert tags["vcp_pruned_channels"] == [2.0, 2.0]
    assert tags["vcp_pruned/vbn"] == [2.0, 2.0]


def test_variational_pruning_config_and_errors():
    callback = VariationalPruning(tau=0.1, theta=0.3, log_dir="/tmp/x", verbose=1)
    assert VariationalPruning.from_config(callback.get_config()).get_config() == callback.get_config()
    with pytest.raises(TfcompressError, match="tau"):
        VariationalPruning(tau=-1.0, theta=0.1)
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    plain.compile("sgd", "mse")
    with pytest.raises(TfcompressError, match="VariationalBatchNormalization"):
        plain.fit(np.zeros((4, 2)), np.zeros((4, 1)), verbose=0, callbacks=[VariationalPruning(0.1, 0.1)])


def test_kl_annealing_layer_scales_weigh_chosen_layers():
    model = nested_model()
    switch = next(layer for layer in bayesian_layers(model) if isinstance(layer, DirichletSwitch))
    vbn = model.get_layer("vbn")
    model.compile("sgd", "mse")
    x, y = data()
    annealing = KLAnnealing(0, 2, max_weight=3.0, layer_scales={"vbn": 0.25})
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[annealing])
    assert float(vbn.kl_weight.numpy()) == 0.0  # epoch 0 of the warm-up
    model.fit(x, y, epochs=3, initial_epoch=2, batch_size=16, verbose=0, callbacks=[annealing])
    assert float(vbn.kl_weight.numpy()) == pytest.approx(0.75)
    assert float(switch.kl_weight.numpy()) == pytest.approx(3.0)
    clone = KLAnnealing.from_config(annealing.get_config())
    assert clone.layer_scales == {"vbn": 0.25}
    with pytest.raises(TfcompressError, match="layer_scales"):
        KLAnnealing(layer_scales={"vbn": -1.0})
    with pytest.raises(TfcompressError, match="not Bayesian layers"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[KLAnnealing(layer_scales={"dense": 2.0})])


def test_kl_annealing_cost_scales_follow_the_pruned_model():
    from tfcompress import bayesian
    from tfcompress.models import lenet5_caffe

    rng = np.random.default_rng(0)
    x, y = rng.random((16, 28, 28, 1)).astype("float32"), rng.integers(0, 10, 16)
    model = bayesian.convert(lenet5_caffe(), "vcp", dataset_size=16)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    annealing = KLAnnealing(0, 0, max_weight=2.0, layer_scales="cost")
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[annealing])
    full = bayesian.cost_scales(model)
    for name, scale in full.items():
        assert model.get_layer(name).kl_weight.numpy() == pytest.approx(2.0 * scale)
        assert history.history[f"kl_scale/{name}"] == [pytest.approx(scale)]
    bayesian.prune_to(model, {"conv1": 5, "conv2": 15, "fc1": 45})
    model.fit(x, y, epochs=1, verbose=0, callbacks=[annealing])
    small = bayesian.cost_scales(model)
    assert small != pytest.approx(full)  # cut to 5-15-45, the dense layer's units are dearer
    assert small["fc1_bn"] > 2 * full["fc1_bn"]
    for name, scale in small.items():
        assert model.get_layer(name).kl_weight.numpy() == pytest.approx(2.0 * scale)
    assert KLAnnealing.from_config(annealing.get_config()).layer_scales == "cost"
    with pytest.raises(TfcompressError, match="unknown layer_scales"):
        KLAnnealing(layer_scales="flops")
