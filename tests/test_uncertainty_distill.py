"""Posterior distillation (tfcompress.uncertainty.distill): each loss against NumPy / SciPy /
tensorflow-probability, the Dirichlet closed forms against Monte Carlo, a tiny ensemble of 3 MLPs
distilled by BDK, GPED and EnD^2, .keras round trips, the int8 export against the closed form,
and the pruning search's Pareto front."""

from __future__ import annotations

import doctest

import keras
import numpy as np
import pytest
import tensorflow_probability as tfp
from scipy.special import digamma, gammaln

from tfcompress.errors import DistillationError
from tfcompress.export import load_tflite, to_tflite
from tfcompress.uncertainty import distill as D
from tfcompress.uncertainty.posterior import run_tflite

CLASSES = 3


def log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def reference_expectations(stack):
    """pbar, E_s H[p_s] and I = H[pbar] - E_s H[p_s] of a [batch, S, C] stack, float64 loops."""
    log_p = log_softmax(stack)
    p = np.exp(log_p)
    mean = p.mean(1)
    data = np.array([np.mean([-(p[b, s] * log_p[b, s]).sum() for s in range(p.shape[1])]) for b in range(len(p))])
    total = -(mean * np.log(mean)).sum(-1)
    return mean, data, total - data


def random_stack(batch=16, members=4, classes=CLASSES, scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=scale, size=(batch, members, classes)).astype("float32"), rng


# --------------------------------------------------------------------------- the losses


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_bdk_loss_is_kl_to_the_predictive_mean(temperature):
    stack, rng = random_stack()
    student = rng.normal(scale=2.0, size=(16, CLASSES)).astype("float32")
    mean = reference_expectations(stack)[0]
    teacher = log_softmax(np.log(mean) / temperature)
    s = log_softmax(student / temperature)
    expected = temperature**2 * (np.exp(teacher) * (teacher - s)).sum(-1).mean()
    got = float(D.bdk_loss(student, stack, temperature=temperature))
    assert got == pytest.approx(expected, rel=1e-4)
    # [S, batch, C] with member_axis=0 is the same stack; the student at log pbar has loss 0
    assert float(D.bdk_loss(student, stack.transpose(1, 0, 2), member_axis=0,
                            temperature=temperature)) == pytest.approx(expected, rel=1e-4)
    assert abs(float(D.bdk_loss(np.log(mean).astype("float32"), stack, temperature=temperature))) < 1e-5


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_gped_loss_matches_numpy(kind):
    stack, rng = random_stack(seed=1)
    logits = rng.normal(size=(16, CLASSES)).astype("float32")
    data_head, knowledge_head = rng.uniform(0, 1, (2, 16, 1)).astype("float32")
    mean, data, knowledge = reference_expectations(stack)
    err = (lambda d: np.abs(d)) if kind == "l1" else np.square
    predictive = (mean * (np.log(mean) - log_softmax(logits))).sum(-1).mean()
    expected = predictive + 0.5 * err(data - data_head[:, 0]).mean() + 2.0 * err(knowledge - knowledge_head[:, 0]).mean()
    loss, terms = D.gped_loss([logits, data_head, knowledge_head], stack, expectation_loss=kind,
                              data_weight=0.5, knowledge_weight=2.0, return_terms=True)
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert float(terms["predictive"]) == pytest.approx(predictive, rel=1e-4)
    # heads at the targets: only the predictive term is left
    exact = D.gped_loss([logits, data[:, None], knowledge[:, None]], stack, expectation_loss=kind)
    assert float(exact) == pytest.approx(predictive, rel=1e-4)


@pytest.mark.parametrize("temperature,smoothing", [(1.0, 0.0), (1.0, 1e-3), (2.5, 1e-4)])
def test_end2_loss_is_the_dirichlet_nll_of_tfp(temperature, smoothing):
    stack, rng = random_stack(seed=2)
    z = rng.normal(size=(16, CLASSES)).astype("float32")
    pi = np.exp(log_softmax(stack.astype(np.float64) / temperature))
    pi = (1 - smoothing) * pi + smoothing / CLASSES
    alpha = np.exp(z.astype(np.float64) / temperature)
    log_prob = tfp.distributions.Dirichlet(alpha[:, None, :]).log_prob(pi).numpy()      # [batch, S]
    expected = -temperature**2 * log_prob.mean()
    assert float(D.end2_loss(z, stack, temperature=temperature, smoothing=smoothing)) == pytest.approx(expected, rel=1e-4)
    # and the density written out with SciPy's log-gamma
    closed = (gammaln(alpha.sum(-1)) - gammaln(alpha).sum(-1))[:, None] + ((alpha[:, None] - 1) * np.log(pi)).sum(-1)
    np.testing.assert_allclose(closed, log_prob, rtol=1e-8)
    # member axis 0; a temperature variable gives the same value
    got = D.end2_loss(z, stack.transpose(1, 0, 2), member_axis=0, temperature=keras.Variable(temperature),
                      smoothing=smoothing)
    assert float(got) == pytest.approx(expected, rel=1e-4)


def test_dirichlet_closed_forms_match_monte_carlo():
    rng = np.random.default_rng(3)
    z = np.stack([rng.normal(0.0, 2.0, CLASSES), np.log([20.0, 1.0, 0.5]), np.log([0.3, 0.2, 0.4])]).astype("float32")
    out = {k: np.asarray(v, np.float64) for k, v in D.dirichlet_uncertainty(z).items()}
    pi = tfp.distributions.Dirichlet(np.exp(z.astype(np.float64))).sample(200_000, seed=7).numpy()   # [n, 3, C]
    pi = np.clip(pi, 1e-300, 1.0)
    entropy = -(pi * np.log(pi)).sum(-1)                                   # H[pi] per sample
    mean = pi.mean(0)
    np.testing.assert_allclose(out["probs"], mean, atol=3e-3)
    np.testing.assert_allclose(out["total"], -(mean * np.log(mean)).sum(-1), atol=3e-3)
    se = entropy.std(0) / np.sqrt(len(entropy))
    assert np.all(np.abs(out["data"] - entropy.mean(0)) < 5 * se + 1e-4), (out["data"], entropy.mean(0), se)
    np.testing.assert_allclose(out["knowledge"], out["total"] - out["data"], atol=1e-6)
    assert np.all(out["knowledge"] > 0)


def test_int8_head_is_the_closed_form_within_its_bound():
    # g(u) = psi(e^u + 1) - u over a wide range, against SciPy's digamma
    u = np.linspace(-16, 20, 4001).astype("float32")
    g = digamma(np.exp(u.astype(np.float64)) + 1) - u
    gap = np.asarray(D.DirichletHead.digamma_gap(u), np.float64)
    assert np.abs(gap - g).max() < 0.0022
    # the head on concentrations from 1e-3 to 1e4: total exact, knowledge within 2 x 0.0021
    z = np.random.default_rng(4).uniform(-7, 9, size=(500, 5)).astype("float32")
    exact = {k: np.asarray(v) for k, v in D.dirichlet_uncertainty(z).items()}
    head = {k: np.asarray(v) for k, v in D.DirichletHead(log_precision=True)(z).items()}
    np.testing.assert_allclose(head["total"], exact["total"], atol=1e-5)
    assert np.abs(head["knowledge"] - exact["knowledge"]).max() < 0.0045
    np.testing.assert_allclose(head["data"] + head["knowledge"], head["total"], atol=1e-5)
    np.testing.assert_allclose(head["log_precision"], np.log(np.exp(z.astype(np.float64)).sum(-1)), atol=1e-4)


def test_expectation_head_matches_numpy():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, CLASSES)).astype("float32")
    data, knowledge = rng.uniform(size=(2, 4, 1)).astype("float32")
    out = D.ExpectationHead()([logits, data, knowledge])
    log_p = log_softmax(logits)
    np.testing.assert_allclose(out["total"], -(np.exp(log_p) * log_p).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(out["log_probs"], log_p, atol=1e-5)
    np.testing.assert_allclose(out["knowledge"], knowledge[:, 0])


def test_transfer_dataset_noise_is_fresh_each_epoch_and_seeded():
    x = np.zeros((6, 2), "float32")
    data = D.transfer_dataset(x, np.arange(6), aux_x=np.ones((2, 2), "float32"), noise_std=0.5, batch_size=8,
                              shuffle=False, seed=3)
    first, second = (next(iter(data)) for _ in range(2))
    assert not np.allclose(first[0], second[0])                       # new noise each pass
    assert np.std(first[0].numpy()) == pytest.approx(0.5, rel=0.6)
    again = next(iter(D.transfer_dataset(x, np.arange(6), aux_x=np.ones((2, 2), "float32"), noise_std=0.5,
                                         batch_size=8, shuffle=False, seed=3)))
    np.testing.assert_allclose(again[0], first[0])                    # same seed, same first pass
    assert first[2].numpy().tolist() == [1.0] * 6 + [0.0] * 2          # aux rows carry no label


# --------------------------------------------------------------------------- a tiny posterior


def mlp(units, seed, name=None):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(units, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, name="out")(hidden), name=name)


def body(units, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    return keras.Model(inputs, keras.layers.Dense(units, activation="relu", name="hidden")(inputs))


def outputs(model, x):
    """The model's outputs as NumPy (a direct call: predict() traces a function per model)."""
    out = model(x, training=False)
    return [np.asarray(o) for o in out] if isinstance(out, list | tuple) else np.asarray(out)


def nll(probs, y):
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1)).mean())


def softmax(z):
    return np.exp(log_softmax(z))


@pytest.fixture(scope="module")
def posterior():
    """3 MLP members trained from different seeds on bootstrap resamples (in one fit), overlapping classes."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 8)).astype("float32")
    score = x[:, 0] + 0.5 * x[:, 1] + 0.7 * rng.normal(size=700)
    y = np.digitize(score, [-0.6, 0.6]).astype("int64")
    members = [mlp(24, seed + 10, name=f"member_{seed}") for seed in range(3)]
    inputs = keras.Input((8,))
    joint = keras.Model(inputs, [m(inputs) for m in members])
    joint.compile(keras.optimizers.Adam(0.03), [keras.losses.SparseCategoricalCrossentropy(from_logits=True)] * 3)
    bootstrap = [rng.poisson(1.0, 500).astype("float32") for _ in members]     # each member's resample
    joint.fit(x[:500], [y[:500]] * 3, sample_weight=bootstrap, epochs=6, batch_size=125, verbose=0)
    stack = np.stack([outputs(m, x[500:]) for m in members], axis=1)
    return x, y, members, stack


def test_distilled_students_move_to_the_ensemble(posterior):
    x, y, members, stack = posterior
    x_train, x_val, y_val = x[:500], x[500:], y[500:]
    mean, data, knowledge = reference_expectations(stack)
    assert 1e-3 < knowledge.mean() < data.mean()                 # the members disagree a little
    target = nll(mean, y_val)
    data_train = D.transfer_dataset(x_train, noise_std=0.05, batch_size=50, seed=1)

    def kl_to_ensemble(probs):
        return float((mean * (np.log(mean) - np.log(probs))).sum(-1).mean())

    # BDK: a Distiller with the members' averaged probabilities as teacher
    student = mlp(12, 1)
    before = softmax(outputs(student, x_val))
    bdk = D.bayesian_dark_knowledge(student, members)
    bdk.compile(keras.optimizers.Adam(0.03), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bdk.fit(data_train, epochs=4, verbose=0)
    after = softmax(outputs(student, x_val))
    assert abs(nll(after, y_val) - target) < 0.5 * abs(nll(before, y_val) - target)
    assert kl_to_ensemble(after) < 0.2 * kl_to_ensemble(before)

    # GPED: the expectation heads learn E[H p] and I
    gped = D.PosteriorExpectationDistiller(D.gped_student(body(16, 2), CLASSES), members)
    gped.compile(keras.optimizers.Adam(0.03))
    start = outputs(gped.student, x_val)
    gped.fit(data_train, epochs=4, verbose=0)
    logits, d, k = outputs(gped.student, x_val)
    assert abs(nll(softmax(logits), y_val) - target) < 0.5 * abs(nll(softmax(start[0]), y_val) - target)
    assert np.abs(d[:, 0] - data).mean() < 0.5 * np.abs(start[1][:, 0] - data).mean()
    assert np.abs(k[:, 0] - knowledge).mean() < 0.5 * np.abs(start[2][:, 0] - knowledge).mean()
    assert np.corrcoef(d[:, 0], data)[0, 1] > 0.7                  # it ranks the inputs as the ensemble does
    assert np.all(d >= 0) and np.all(k >= 0) and np.all(d <= np.log(CLASSES))

    # EnD^2 with an annealed temperature: the Dirichlet's mean moves to the ensemble's
    student = mlp(12, 3)
    before = softmax(outputs(student, x_val))
    end2 = D.EnsembleDistributionDistiller(student, members, temperature=2.0)
    end2.compile(keras.optimizers.Adam(0.03))
    train_stack = np.stack([outputs(m, x_train) for m in members], axis=1)
    loss_before = float(D.end2_loss(outputs(student, x_train), train_stack))
    history = end2.fit(data_train, epochs=4, verbose=0,
                       callbacks=[D.TemperatureAnnealing(2.0, hold_epochs=0, decay_epochs=2)])
    assert history.history["temperature"] == pytest.approx([2.0, 1.5, 1.0, 1.0])
    assert float(D.end2_loss(outputs(student, x_train), train_stack)) < loss_before - 1.0   # eq. (8) on its data
    z = outputs(student, x_val)
    after = softmax(z)
    assert abs(nll(after, y_val) - target) < 0.5 * abs(nll(before, y_val) - target)
    assert kl_to_ensemble(after) < 0.25 * kl_to_ensemble(before)


def test_distillers_and_heads_survive_a_keras_round_trip(posterior, tmp_path):
    x, _, members, stack = posterior
    xb, sb, labels = x[500:532], stack[:32], np.zeros(32, "int64")
    end2 = D.EnsembleDistributionDistiller(mlp(6, 3), members, temperature=2.0, smoothing=1e-3)
    end2.set_temperature(1.5)                                        # as an annealing run leaves it
    gped = D.PosteriorExpectationDistiller(D.gped_student(body(6), CLASSES), members, temperature=2.0,
                                           expectation_loss="l2", data_weight=0.5)
    bdk = D.bayesian_dark_knowledge(mlp(6, 4), members, temperature=2.0, alpha=0.3)
    offline = D.EnsembleDistributionDistiller(mlp(6, 5))                   # trained on a precomputed stack
    bdk.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bdk.optimizer.build(bdk.trainable_variables)                     # its state is saved and restored
    # the offline distiller reads the stack from y: its loss is end2_loss of the stack
    assert float(offline.compute_loss(xb, sb, offline(xb))) == pytest.approx(
        float(D.end2_loss(offline(xb), sb, smoothing=1e-4)), rel=1e-5)
    for name, model, y in (("end2", end2, None), ("gped", gped, None), ("bdk", bdk, labels),
                           ("offline", offline, sb)):
        path = tmp_path / f"{name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert type(loaded) is type(model)
        for a, b in zip(keras.tree.flatten(outputs(model, xb)), keras.tree.flatten(outputs(loaded, xb)), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
        loss = float(model.compute_loss(xb, y, model(xb)))
        assert float(loaded.compute_loss(xb, y, loaded(xb))) == pytest.approx(loss, rel=1e-5)
    assert keras.saving.load_model(tmp_path / "end2.keras").temperature == 1.5
    assert keras.saving.load_model(tmp_path / "gped.keras").get_config()["expectation_loss"] == "l2"
    wrapped = D.uncertainty_model(end2.student, "end2", log_precision=True)
    wrapped.save(tmp_path / "head.keras")
    again = keras.saving.load_model(tmp_path / "head.keras")
    np.testing.assert_allclose(again(xb)["knowledge"], wrapped(xb)["knowledge"])
    callback = D.TemperatureAnnealing(4.0, 1.5, 2, 3)
    for cb in (callback, D.StudentPruning()):
        copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cb))
        assert type(copy) is type(cb) and copy.get_config() == cb.get_config()
    assert callback.value(4) == pytest.approx(4.0 - 2.5 * 2 / 3) and callback.value(5) == 1.5


def spread(model, scale=3.0):
    """Scale the last layer so the outputs (and the uncertainties) cover a wide range."""
    layer = model.layers[-1] if not isinstance(model.layers[-1], keras.layers.Rescaling) else None
    if layer is not None:
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * scale, bias + np.linspace(-1, 1, bias.size).astype("float32")])
    return model


def test_students_export_to_int8_builtins(posterior, tmp_path):
    x, _, _, _ = posterior
    calibration, check = x[:300], x[500:600]
    end2_student = spread(mlp(12, 6))
    z = outputs(end2_student, check)
    exact = {k: np.asarray(v) for k, v in D.dirichlet_uncertainty(z).items()}
    assert exact["knowledge"].max() > 0.3 and exact["knowledge"].min() < 0.05     # in- and out-of-"domain" rows
    for kind, model, reference in (("end2", end2_student, exact),
                                   ("gped", D.gped_student(body(12, 7), CLASSES), None)):
        wrapped = D.uncertainty_model(model, kind)
        path = tmp_path / f"{kind}.tflite"
        to_tflite(wrapped, path, "int8", calibration, io_dtype="float32")
        parsed = load_tflite(path)
        ops = set(parsed.op_counts())
        assert parsed.int8_coverage() == 1.0 and not ops & {"EXP", "LOG", "SUM"}, ops
        out = run_tflite(path, check)
        if reference is None:
            reference = {k: np.asarray(v) for k, v in wrapped(check).items()}
        for name in ("total", "data", "knowledge"):
            error = np.abs(out[name] - reference[name])
            assert error.mean() < 0.04 and error.max() < 0.15, (kind, name, error.mean(), error.max())
        assert np.abs(out["probs"] - reference["probs"]).max() < 0.03
        assert np.corrcoef(out["knowledge"], reference["knowledge"])[0, 1] > 0.95


def test_pruning_search_returns_the_pareto_front(posterior):
    x, y, members, _ = posterior
    student = D.gped_student(body(16), CLASSES)
    train_stack = np.stack([outputs(m, x[:500]) for m in members], axis=1)

    def make(s):
        distiller = D.PosteriorExpectationDistiller(s)          # no teacher: fit(x, stack) on the stack
        distiller.compile(keras.optimizers.Adam(0.03))
        return distiller

    result = D.distillation_pareto(student, make, (x[:500], train_stack), (x[500:], y[500:]), [0.5, 0.75],
                                   epochs=1, batch_size=125, members=members)
    assert [p.model.get_layer("hidden").units for p in result.points] == [8, 4]   # 16 -> 8 -> 4, nested
    assert student.get_layer("hidden").units == 16                      # the given student is not changed
    params = [p.params for p in result.points]
    assert params == [8 * u + u + (u + 1) * (CLASSES + 2) for u in (8, 4)]
    assert result.points[0].macs > result.points[1].macs
    assert all(np.isfinite(p.nll) and 0 <= p.accuracy <= 1 for p in result.points)
    # the front: exactly the points no other point beats on both params and NLL
    for cost in ("params", "macs"):
        front = {p.sparsity for p in result.front(cost)}
        assert front == {p.sparsity for p in result.points if not any(
            getattr(q, cost) <= getattr(p, cost) and q.nll <= p.nll and q is not p
            and (getattr(q, cost), q.nll) != (getattr(p, cost), p.nll) for q in result.points)}
    report = result.to_dict()
    assert [p["sparsity"] for p in report["points"]] == [0.5, 0.75] and "model" not in report["points"][0]
    assert sorted(report["front"]["params"]) == sorted(p.sparsity for p in result.front("params"))
    assert report["ensemble_nll"] == pytest.approx(nll(reference_expectations(
        np.stack([outputs(m, x[500:]) for m in members], axis=1))[0], y[500:]), rel=1e-5)
    # each level's student is a plain Keras model (no pruning wrapper left)
    assert all(type(layer).__module__.startswith("keras") for layer in result.points[-1].model.layers)


# --------------------------------------------------------------------------- errors and docs


def test_bad_inputs_say_what_where_and_how():
    stack, _ = random_stack()
    z = np.zeros((16, CLASSES), "float32")
    cases = [
        (lambda: D.end2_loss(z, stack[0]), "not 3-D"),
        (lambda: D.end2_loss(np.zeros((16, 4), "float32"), stack), "4 outputs"),
        (lambda: D.bdk_loss(z, stack, member_axis=2), "member_axis"),
        (lambda: D.bdk_loss(z, stack, temperature=0.0), "temperature"),
        (lambda: D.bdk_loss(z, [mlp(4, 0), mlp(4, 1)]), "without inputs"),
        (lambda: D.gped_loss([z], stack), "[logits, data, knowledge]"),
        (lambda: D.gped_loss([z, z, z], stack, expectation_loss="huber"), "expectation_loss"),
        (lambda: D.PosteriorExpectationDistiller(mlp(4, 0)), "[logits, data, knowledge]"),
        (lambda: D.EnsembleDistributionDistiller(mlp(4, 0), mlp(4, 1)), "not [batch, members, classes]"),
        (lambda: D.uncertainty_model(mlp(4, 0), "bayes"), "unknown kind"),
        (lambda: D.TemperatureAnnealing(2.0, decay_epochs=0), "decay_epochs"),
        (lambda: D.distillation_pareto(mlp(4, 0), None, (z,), (z, z), [0.5, 0.2]), "increasing"),
        (lambda: D.transfer_dataset(z, np.zeros(3)), "labels"),
    ]
    for call, words in cases:
        with pytest.raises(DistillationError) as info:
            call()
        assert words in str(info.value) and info.value.where, (words, str(info.value))
    with pytest.raises(DistillationError, match="no teacher"):
        D.EnsembleDistributionDistiller(mlp(4, 0)).teacher_logits(z)


def test_docstring_examples_run():
    result = doctest.testmod(D, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 40 and result.failed == 0

