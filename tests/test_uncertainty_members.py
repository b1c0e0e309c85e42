"""Members of a posterior (tfcompress.uncertainty): cyclical SG-MCMC / snapshot / deep ensembles
(collect.py), BatchEnsemble and MIMO (batch_ensemble.py), variational draws (variational.py);
each checked against the paper's formula or an explicit NumPy computation."""

from __future__ import annotations

import doctest

import keras
import numpy as np
import pytest
from layer_harness import assert_keras_roundtrip, run_layer_test
from numpy.lib.stride_tricks import sliding_window_view

import tfcompress.layers as L
from tfcompress.errors import TfcompressError
from tfcompress.uncertainty import TileMembers, collect, ensemble, from_stacked, variational
from tfcompress.uncertainty import batch_ensemble as be
from tfcompress.uncertainty.collect import CyclicalSGMCMC, SnapshotEnsemble, train_deep_ensemble
from tfcompress.uncertainty.samplers import SGLD

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 4)).astype("float32")
Y = (X[:, 0] > 0).astype("int64") + (X[:, 1] > 0)


@pytest.mark.parametrize("module", [collect, be, variational], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


# ------------------------------------------------------------------ cyclical SG-MCMC, snapshots


def classifier(optimizer):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)],
                             name="net")
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class Recorder(keras.callbacks.Callback):
    """What the optimizer holds at each batch (placed after the sampler in the callback list)."""

    def __init__(self):
        super().__init__()
        self.lr, self.temperature, self.weights = [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.lr.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        temperature = getattr(self.model.optimizer, "temperature", None)
        self.temperature.append(None if temperature is None else float(temperature.numpy()))

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append([w.copy() for w in self.model.get_weights()])


def eq1(k, total_steps, cycles, alpha0):
    """Zhang et al. 2020, eq. 1, written from K and M."""
    length = int(np.ceil(total_steps / cycles))
    return alpha0 / 2 * (np.cos(np.pi * ((k - 1) % length) / length) + 1)


def test_cyclical_sgmcmc_follows_eq_1_and_collects_distinct_samples(tmp_path):
    K, M, beta, thinning, T = 16, 2, 0.5, 2, 0.7
    model = classifier(SGLD(0.05, dataset_size=32, temperature=1.0, seed=1))
    sampler = CyclicalSGMCMC(cycles=M, steps_per_cycle=8, initial_learning_rate=0.05, exploration=beta,
                             thinning=thinning, temperature=T)
    recorder = Recorder()
    model.fit(X, Y, batch_size=8, epochs=4, shuffle=False, callbacks=[sampler, recorder], verbose=0)
    steps = np.arange(1, K + 1)
    np.testing.assert_allclose(recorder.lr, eq1(steps, K, M, 0.05), rtol=1e-6)
    position = (steps - 1) % 8 / 8
    np.testing.assert_allclose(recorder.temperature, np.where(position >= beta, T, 0.0), rtol=1e-6)
    expected = [k for k in steps if position[k - 1] >= beta and (7 - (k - 1) % 8) % thinning == 0]
    assert sampler.sample_steps == expected == [6, 8, 14, 16]
    for step, sample in zip(sampler.sample_steps, sampler.samples, strict=True):
        for a, b in zip(sample, recorder.weights[step - 1], strict=True):
            np.testing.assert_array_equal(a, b)
    for i in range(len(sampler.samples)):
        for j in range(i):
            assert not np.allclose(sampler.samples[i][0], sampler.samples[j][0])
    members = sampler.members()
    outputs = [m(X).numpy() for m in members]
    assert len({round(float(o.sum()), 5) for o in outputs}) == 4
    assert len({layer.name for m in members for layer in m.layers}) == 4 * 2  # distinct names
    reference = keras.models.clone_model(model)
    reference.set_weights(sampler.samples[2])
    np.testing.assert_allclose(outputs[2], reference(X).numpy(), atol=1e-6)
    assert_keras_roundtrip(members[0], X, tmp_path)
    assert ensemble(members).predict(X)["probs"].shape == (32, 3)  # the lead's posterior takes them


def test_burn_in_and_samples_per_cycle_select_the_collected_steps():
    sampler = CyclicalSGMCMC(cycles=3, steps_per_cycle=10, initial_learning_rate=0.1, exploration=0.6,
                             thinning=2, samples_per_cycle=2, burn_in=1)
    assert [k for k in range(1, 31) if sampler.collects(k)] == [18, 20, 28, 30]
    assert [sampler.is_sampling(k) for k in (6, 7, 10, 11)] == [False, True, True, False]
    snapshots = SnapshotEnsemble(cycles=3, steps_per_cycle=10, initial_learning_rate=0.1, burn_in=1)
    assert [k for k in range(1, 41) if snapshots.collects(k)] == [20, 30, 40]
    np.testing.assert_allclose([sampler.learning_rate(k) for k in range(1, 31)],
                               eq1(np.arange(1, 31), 30, 3, 0.1), rtol=1e-12)


def test_snapshot_ensemble_with_sgd():
    model = classifier(keras.optimizers.SGD(0.2, momentum=0.9))
    snapshots = SnapshotEnsemble(cycles=3, steps_per_cycle=4, initial_learning_rate=0.2)
    recorder = Recorder()
    model.fit(X, Y, batch_size=8, epochs=3, shuffle=False, callbacks=[snapshots, recorder], verbose=0)
    np.testing.assert_allclose(recorder.lr, eq1(np.arange(1, 13), 12, 3, 0.2), rtol=1e-6)
    assert snapshots.sample_steps == [4, 8, 12]
    first, second, third = (m.get_weights()[0] for m in snapshots.members())
    assert not np.allclose(first, second) and not np.allclose(second, third)


def test_the_schedule_resumes_after_a_keras_round_trip(tmp_path):
    config = {"cycles": 2, "steps_per_cycle": 8, "initial_learning_rate": 0.05, "exploration": 0.75}
    model = classifier(SGLD(0.05, dataset_size=32, seed=2))
    model.fit(X, Y, batch_size=8, epochs=2, shuffle=False, callbacks=[CyclicalSGMCMC(**config)], verbose=0)
    model.save(tmp_path / "halfway.keras")
    reloaded = keras.saving.load_model(tmp_path / "halfway.keras")
    original = CyclicalSGMCMC(**config)
    sampler = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(original))
    assert type(sampler) is CyclicalSGMCMC and sampler.get_config() == original.get_config()
    recorder = Recorder()
    reloaded.fit(X, Y, batch_size=8, epochs=2, shuffle=False, callbacks=[sampler, recorder], verbose=0)
    np.testing.assert_allclose(recorder.lr, eq1(np.arange(9, 17), 16, 2, 0.05), rtol=1e-6)
    assert sampler.sample_steps == [15, 16]  # the second cycle's sampling stage (r >= 0.75)


def test_collector_errors():
    with pytest.raises(TfcompressError, match="burn_in"):
        CyclicalSGMCMC(cycles=2, steps_per_cycle=4, initial_learning_rate=0.1, burn_in=2)
    with pytest.raises(TfcompressError, match="exploration"):
        CyclicalSGMCMC(cycles=2, steps_per_cycle=4, initial_learning_rate=0.1, exploration=0.0)
    model = classifier(keras.optimizers.SGD(0.1))
    with pytest.raises(TfcompressError, match="no temperature"):
        model.fit(X, Y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[CyclicalSGMCMC(cycles=2, steps_per_cycle=2, initial_learning_rate=0.1)])
    with pytest.raises(TfcompressError, match="no sample"):
        CyclicalSGMCMC(cycles=2, steps_per_cycle=4, initial_learning_rate=0.1).members(model)


def test_deep_ensemble_members_are_independent_and_reproducible():
    def build():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    members = train_deep_ensemble(build, 2, X, Y, seeds=[3, 4], epochs=1, batch_size=8, verbose=0)
    again = train_deep_ensemble(build, 1, X, Y, seeds=[4], epochs=1, batch_size=8, verbose=0)
    assert not np.allclose(members[0].get_weights()[0], members[1].get_weights()[0])
    np.testing.assert_allclose(again[0].get_weights()[0], members[1].get_weights()[0], atol=1e-6)
    with pytest.raises(TfcompressError, match="compiled"):
        train_deep_ensemble(lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]), 2, X, Y)
    with pytest.raises(TfcompressError, match="seeds"):
        train_deep_ensemble(build, 2, X, Y, seeds=[1, 1])


# ------------------------------------------------------------------ BatchEnsemble, MIMO


def randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.normal(size=tuple(w.shape)).astype("float32"))


@pytest.mark.parametrize("cls, kwargs, shape", [
    (be.BatchEnsembleDense, {"units": 3, "members": 2, "activation": "relu", "kernel_initializer": "he_normal",
                             "bias_initializer": "ones",
                             "fast_weight_initializer": {"class_name": "RandomNormal",
                                                         "config": {"mean": 1.0, "stddev": 0.3}}}, (4, 5)),
    (be.BatchEnsembleConv2D, {"filters": 3, "kernel_size": 3, "members": 2, "strides": 2, "padding": "same",
                              "activation": "relu", "bias_initializer": "ones"}, (4, 6, 6, 2)),
    (be.BatchEnsembleConv2D, {"filters": 2, "kernel_size": (3, 2), "members": 3, "dilation_rate": 2,
                              "use_bias": False}, (3, 7, 7, 2)),
], ids=["dense", "conv_strided", "conv_dilated"])
def test_batch_ensemble_layers_through_the_harness(cls, kwargs, shape, tmp_path):
    result = run_layer_test(cls, kwargs, shape, tmp_path=tmp_path, prepare=randomize,
                            expected_num_trainable_weights=4 if kwargs.get("use_bias", True) else 3)
    assert result.layer.members == kwargs["members"]


def test_stack_members_through_the_harness(tmp_path):
    result = run_layer_test(be.StackMembers, {"members": 2}, (4, 3), expected_output_shape=(2, 2, 3),
                            expected_num_trainable_weights=0, supports_training=False, tmp_path=tmp_path)
    x = result.x
    np.testing.assert_array_equal(result.layer(x).numpy(), x.reshape(2, 2, 3))


def batch_ensemble_dense(members=3, activation="tanh"):
    x = keras.Input((5,))
    layer = be.BatchEnsembleDense(4, members=members, activation=activation)
    model = keras.Model(x, be.StackMembers(members)(layer(TileMembers(members)(x))))
    randomize(layer, 1)
    return model, layer


def test_batch_ensemble_dense_is_eq_1_per_member():
    model, layer = batch_ensemble_dense()
    x = RNG.normal(size=(6, 5)).astype("float32")
    W, s, r, b = (keras.ops.convert_to_numpy(w).astype(np.float64) for w in
                  (layer.kernel, layer.input_scale, layer.output_scale, layer.bias))
    expected = np.stack([np.tanh(((x * s[i]) @ W) * r[i] + b[i]) for i in range(3)], axis=1)
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    # and as a fast-weight matrix W o (s_i r_i^T): the member models
    members = be.batch_ensemble_members(model)
    for i, member in enumerate(members):
        assert [type(layer).__name__ for layer in member.layers] == ["InputLayer", "Dense"]
        np.testing.assert_allclose(member.get_weights()[0], W * np.outer(s[i], r[i]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(member(x).numpy(), expected[:, i], rtol=1e-5, atol=1e-5)


def test_batch_ensemble_conv_is_eq_1_per_member_and_exports_as_one_int8_graph(tmp_path):
    S = 2
    x_in = keras.Input((6, 6, 2))
    conv = be.BatchEnsembleConv2D(3, 3, members=S, activation="relu")
    h = keras.layers.Flatten()(conv(TileMembers(S)(x_in)))
    head = be.BatchEnsembleDense(4, members=S)
    model = keras.Model(x_in, be.StackMembers(S)(head(h)))
    randomize(conv, 2)
    randomize(head, 3)
    x = RNG.normal(size=(5, 6, 6, 2)).astype("float32")
    W, s, r, b = (keras.ops.convert_to_numpy(w).astype(np.float64) for w in
                  (conv.kernel, conv.input_scale, conv.output_scale, conv.bias))
    hw, hs, hr, hb = (keras.ops.convert_to_numpy(w).astype(np.float64) for w in
                      (head.kernel, head.input_scale, head.output_scale, head.bias))
    expected = []
    for i in range(S):
        patches = sliding_window_view(x * s[i], (3, 3), axis=(1, 2))  # [B, 4, 4, C, 3, 3]
        y = np.maximum(np.einsum("bhwcij,ijcf->bhwf", patches, W) * r[i] + b[i], 0.0)
        expected.append(((y.reshape(len(x), -1) * hs[i]) @ hw) * hr[i] + hb[i])
    expected = np.stack(expected, axis=1)
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-4, atol=1e-4)
    for i, member in enumerate(be.batch_ensemble_members(model)):
        np.testing.assert_allclose(member(x).numpy(), expected[:, i], rtol=1e-4, atol=1e-4)
    assert_keras_roundtrip(model, x, tmp_path, atol=1e-5)
    calibration = RNG.normal(size=(64, 6, 6, 2)).astype("float32")
    report = from_stacked(model).to_tflite(tmp_path / "batch_ensemble.tflite", calibration, compare_single=False)
    assert report.int8_coverage == 1.0 and report.subgraphs == 1 and report.members == S


def test_batch_ensemble_members_errors():
    with pytest.raises(TfcompressError, match="no BatchEnsemble layer"):
        be.batch_ensemble_members(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    x = keras.Input((5,))
    mixed = keras.Model(x, be.StackMembers(2)(be.BatchEnsembleDense(4, members=3)(TileMembers(3)(x))))
    with pytest.raises(TfcompressError, match="disagree"):
        be.batch_ensemble_members(mixed)


def mimo(members=3, channels=2, classes=4):
    keras.utils.set_random_seed(0)
    x = keras.Input((members * channels,))
    backbone = keras.Model(x, keras.layers.Dense(8, activation="relu")(x), name="backbone")
    model = be.mimo_model(backbone, members, classes)
    for layer in (backbone.layers[-1], model.get_layer("mimo_head")):
        randomize(layer, 4)
    return model, backbone


def test_mimo_heads_read_the_concatenated_inputs(tmp_path):
    model, backbone = mimo()
    wb, bb = backbone.layers[-1].get_weights()
    wh, bh = model.get_layer("mimo_head").get_weights()
    xs = [RNG.normal(size=(5, 2)).astype("float32") for _ in range(3)]

    def reference(inputs):
        features = np.maximum(np.concatenate(inputs, axis=1) @ wb + bb, 0.0)
        return np.stack([features @ wh[:, 4 * m:4 * m + 4] + bh[4 * m:4 * m + 4] for m in range(3)], axis=1)

    np.testing.assert_allclose(model(np.concatenate(xs, axis=1)).numpy(), reference(xs), rtol=1e-5, atol=1e-5)
    inference = be.mimo_inference_model(model)
    expected = reference([xs[0]] * 3)
    np.testing.assert_allclose(inference(xs[0]).numpy(), expected, rtol=1e-5, atol=1e-5)
    members = be.mimo_members(model)
    for m, member in enumerate(members):
        np.testing.assert_allclose(member(xs[0]).numpy(), expected[:, m], rtol=1e-5, atol=1e-5)
    assert_keras_roundtrip(inference, xs[0], tmp_path, name="mimo_inference")
    assert_keras_roundtrip(members[1], xs[0], tmp_path, name="mimo_member")
    assert from_stacked(inference).members == 3
    with pytest.raises(TfcompressError, match="members x channels"):
        be.mimo_model(backbone, 4, 4)


def test_mimo_inputs_are_independent_permutations_with_repetition():
    x = np.arange(200, dtype="float32").reshape(100, 2)
    y = np.arange(100)
    xs, ys = be.mimo_inputs(x, y, 3, seed=0)
    assert xs.shape == (100, 6) and ys.shape == (100, 3)
    for m in range(3):
        assert sorted(ys[:, m]) == list(range(100))  # a permutation per member
        np.testing.assert_array_equal(xs[:, 2 * m:2 * m + 2], x[ys[:, m]])  # labels follow the inputs
    assert np.mean(ys[:, 0] == ys[:, 1]) < 0.1
    _, repeated = be.mimo_inputs(x, y, 3, repetition=1.0)
    assert np.all(repeated == repeated[:, :1])
    _, half = be.mimo_inputs(np.zeros((4000, 1)), np.arange(4000), 2, repetition=0.5, seed=1)
    share = np.mean(half[:, 0] == half[:, 1])
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / 4000)


# ------------------------------------------------------------------ variational posterior samples


def built(layer, shape):
    layer.build(shape)
    return layer


def assert_moments(samples, mean, var):
    """Sample mean / variance within 5 Monte Carlo standard errors (estimated from the samples)."""
    n = len(samples)
    centered = samples - samples.mean(0)
    se_mean = samples.std(0) / np.sqrt(n)
    se_var = (centered**2).std(0) / np.sqrt(n)
    assert np.all(np.abs(samples.mean(0) - mean) <= 5 * se_mean + 1e-12), (samples.mean(0), mean)
    assert np.all(np.abs(samples.var(0) - var) <= 5 * se_var + 1e-12), (samples.var(0), var)


N_DRAWS = 20000


def test_sparse_vd_and_bc_draws_match_their_posteriors():
    vd = built(L.VariationalDense(3, dataset_size=10), (None, 4))
    vd.log_sigma2.assign(np.linspace(-6, 1, 12).reshape(4, 3).astype("float32"))
    theta = keras.ops.convert_to_numpy(vd.kernel).astype(np.float64)
    alpha = np.exp(np.clip(keras.ops.convert_to_numpy(vd.log_sigma2) - np.log(theta**2 + 1e-8), -8, 8))
    assert_moments(variational.posterior_samples(vd, N_DRAWS, 0)["kernel"], theta, alpha * theta**2)

    bc = built(L.BCConv2D(3, 2, dataset_size=10), (None, 5, 5, 2))
    bc.z_mu.assign([1.0, 0.5, -0.8])
    bc.z_log_sigma2.assign(np.log([0.04, 0.25, 0.01]).astype("float32"))
    bc.kernel_log_sigma2.assign(np.full(bc.kernel.shape, np.log(0.09), "float32"))
    draws = variational.posterior_samples(bc, N_DRAWS, 1)
    mu_z, var_z = np.array([1.0, 0.5, -0.8]), np.array([0.04, 0.25, 0.01])
    mu_w, var_w = keras.ops.convert_to_numpy(bc.kernel).astype(np.float64), 0.09
    assert_moments(draws["z"], mu_z, var_z)
    # w = z w~ with independent factors (Louizos et al. 2017, sec. 3.1)
    assert_moments(draws["kernel"], mu_z * mu_w, (mu_z**2 + var_z) * (mu_w**2 + var_w) - mu_z**2 * mu_w**2)


def test_vbn_dirichlet_and_sbp_draws_match_their_posteriors():
    bn = built(L.VariationalBatchNormalization(dataset_size=10), (None, 3))
    bn.gamma.assign([0.5, -1.0, 2.0])
    bn.log_sigma.assign(np.log([0.1, 0.3, 0.05]).astype("float32"))
    assert_moments(variational.posterior_samples(bn, N_DRAWS, 2)["gamma"], [0.5, -1.0, 2.0],
                   np.array([0.1, 0.3, 0.05]) ** 2)

    switch = built(L.DirichletSwitch(dataset_size=10), (None, 4))
    phi = np.array([0.1, 3.0, 1.0, 9.0])
    switch.log_concentration.assign(np.log(phi).astype("float32"))
    draws = variational.posterior_samples(switch, N_DRAWS, 3)["switch"]
    np.testing.assert_allclose(draws.sum(1), 1.0, atol=1e-12)
    total = phi.sum()
    assert_moments(draws, switch.posterior_mean(), phi * (total - phi) / (total**2 * (total + 1)))

    sbp = built(L.LogNormalDropout(dataset_size=10), (None, 3))
    sbp.mu.assign([-0.5, -3.0, -0.1])
    sbp.log_sigma.assign(np.log([0.1, 3.0, 0.3]).astype("float32"))
    draws = variational.posterior_samples(sbp, N_DRAWS, 4)["noise"]
    assert draws.min() >= np.exp(-20.0) and draws.max() <= 1.0
    mean = sbp.expected_noise()  # the layer's closed form E[theta] (Neklyudov et al. 2017, sec. 4.3)
    assert_moments(draws, mean, (mean / sbp.snr()) ** 2)


def bayesian_net():
    keras.utils.set_random_seed(0)
    x = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="d1")(x)
    h = L.LogNormalDropout(dataset_size=50, name="sbp")(h)
    h = L.VariationalDense(8, dataset_size=50, activation="relu", name="vd")(h)
    h = L.BCDense(8, dataset_size=50, activation="relu", name="bc")(h)
    h = keras.layers.Dense(6, activation="relu", name="d2")(h)
    h = L.DirichletSwitch(dataset_size=50, name="switch")(h)
    h = keras.layers.Dense(5, name="d3")(h)
    h = L.VariationalBatchNormalization(dataset_size=50, name="vbn")(h)
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(h))
    rng = np.random.default_rng(5)
    model.get_layer("sbp").mu.assign(rng.uniform(-1.0, 0.0, 8).astype("float32"))
    model.get_layer("sbp").log_sigma.assign(np.full(8, np.log(0.3), "float32"))
    model.get_layer("vd").log_sigma2.assign(rng.uniform(-4, -1, (8, 8)).astype("float32"))
    bc = model.get_layer("bc")
    bc.z_log_sigma2.assign(np.full(8, np.log(0.05), "float32"))
    bc.z_mu.assign(np.r_[np.full(6, 1.0), 0.02, 1.0].astype("float32"))  # group 6: log alpha 4.8 > 3
    bc.bias.assign(rng.normal(size=8).astype("float32"))
    bc.mask.assign(np.r_[np.ones(7), 0.0].astype("float32"))  # group 7 masked
    model.get_layer("switch").log_concentration.assign(np.log(rng.uniform(0.5, 5, 6)).astype("float32"))
    vbn = model.get_layer("vbn")
    vbn.log_sigma.assign(np.full(5, np.log(0.2), "float32"))
    vbn.moving_mean.assign(rng.normal(size=5).astype("float32"))
    vbn.moving_variance.assign(rng.uniform(0.5, 2.0, 5).astype("float32"))
    vbn.beta.assign(rng.normal(size=5).astype("float32"))
    return model


def numpy_forward(model, draws, i, x):
    """The network with the i-th draws, written from the layers' training-mode formulas."""
    def w(name):
        return [keras.ops.convert_to_numpy(v).astype(np.float64) for v in model.get_layer(name).weights]

    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    k1, b1 = w("d1")
    h = relu(x @ k1 + b1) * draws["sbp"]["noise"][i]
    h = relu(h @ draws["vd"]["kernel"][i] + w("vd")[2])  # [kernel, log_sigma2, bias, mask, kl_weight]
    bc = model.get_layer("bc")
    mask = keras.ops.convert_to_numpy(bc.mask)
    kept = keras.ops.convert_to_numpy(bc.group_gate()) != 0
    assert kept.tolist() == [True] * 6 + [False, False]
    h = relu((h @ draws["bc"]["kernel"][i]) * mask + keras.ops.convert_to_numpy(bc.bias) * kept) * mask
    k2, b2 = w("d2")
    h = relu(h @ k2 + b2) * 6 * draws["switch"]["switch"][i]
    k3, b3 = w("d3")
    h = h @ k3 + b3
    vbn = model.get_layer("vbn")
    x_hat = (h - keras.ops.convert_to_numpy(vbn.moving_mean)) / np.sqrt(
        keras.ops.convert_to_numpy(vbn.moving_variance) + vbn.epsilon)
    h = draws["vbn"]["gamma"][i] * (x_hat + keras.ops.convert_to_numpy(vbn.beta))
    k4, b4 = w("logits")
    return h @ k4 + b4


def test_sample_members_are_plain_models_computing_the_draws(tmp_path):
    model = bayesian_net()
    before = [w.copy() for w in model.get_weights()]
    members = variational.sample_members(model, 2, seed=7)
    draws = variational.draw(model, 2, seed=7)
    assert set(draws) == {"sbp", "vd", "bc", "switch", "vbn"}
    x = np.random.default_rng(8).normal(size=(10, 6)).astype("float32")
    outputs = []
    for i, member in enumerate(members):
        assert {type(layer).__module__.split(".")[0] for layer in member.layers} == {"keras"}
        outputs.append(member(x).numpy())
        np.testing.assert_allclose(outputs[-1], numpy_forward(model, draws, i, x), rtol=1e-4, atol=1e-4)
    assert not np.allclose(outputs[0], outputs[1])
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the Bayesian model is untouched
    again = variational.sample_members(model, 1, seed=7)[0]
    np.testing.assert_allclose(again(x).numpy(), outputs[0], atol=1e-6)
    assert_keras_roundtrip(members[1], x, tmp_path, atol=1e-5)
    assert ensemble(members).members == 2
    with pytest.raises(TfcompressError, match="no variational layer"):
        variational.sample_members(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), 2)
