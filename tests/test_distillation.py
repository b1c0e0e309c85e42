"""Knowledge distillation (Hinton et al. 2015): the loss against a NumPy reference, frozen
teacher, a Bayesian student's KL kept at full weight, save/load, bad arguments."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfcompress import bayesian
from tfcompress.distillation import Distiller, soft_target_loss


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _reference_soft(teacher_logits, student_logits, temperature):
    """T^2 * mean KL(softmax(t/T) || softmax(s/T)), in float64 NumPy."""
    t = _log_softmax(teacher_logits.astype(np.float64) / temperature)
    s = _log_softmax(student_logits.astype(np.float64) / temperature)
    return temperature**2 * (np.exp(t) * (t - s)).sum(axis=-1).mean()


def _mlp(units: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(units, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(hidden))


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    y = (np.digitize(x[:, 0] + 0.5 * x[:, 1], [-0.5, 0.5])).astype("int64")
    teacher = _mlp(64, seed=1)
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x, y, epochs=30, batch_size=64, verbose=0)
    return x, y, teacher


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
def test_soft_target_loss_matches_numpy(temperature):
    rng = np.random.default_rng(1)
    teacher_logits = rng.normal(scale=5.0, size=(64, 10)).astype("float32")
    student_logits = rng.normal(scale=5.0, size=(64, 10)).astype("float32")
    got = float(soft_target_loss(teacher_logits, student_logits, temperature))
    np.testing.assert_allclose(got, _reference_soft(teacher_logits, student_logits, temperature), rtol=1e-4)
    # equal logits: zero divergence; probabilities in, same value as their logits
    assert abs(float(soft_target_loss(teacher_logits, teacher_logits, temperature))) < 1e-5
    probs = lambda z: np.exp(_log_softmax(z))  # noqa: E731
    got_probs = float(soft_target_loss(probs(teacher_logits), probs(student_logits), temperature, from_logits=False))
    np.testing.assert_allclose(got_probs, got, rtol=1e-3)


def test_distiller_loss_is_the_weighted_sum(task):
    x, y, teacher = task
    student = _mlp(4, seed=2)
    distiller = Distiller(student, teacher, temperature=3.0, alpha=0.3)
    distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = distiller.evaluate(x, y, batch_size=len(x), verbose=0)
    s, t = student.predict(x, verbose=0), teacher.predict(x, verbose=0)
    hard = -_log_softmax(s.astype(np.float64))[np.arange(len(y)), y].mean()
    np.testing.assert_allclose(loss, 0.3 * hard + 0.7 * _reference_soft(t, s, 3.0), rtol=1e-4)


def test_distillation_trains_student_only_and_roundtrips(task, tmp_path):
    x, y, teacher = task
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    student = _mlp(4, seed=3)
    before = [w.copy() for w in student.get_weights()]
    distiller = Distiller(student, teacher, temperature=4.0, alpha=0.1)
    distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    distiller.fit(x, y, epochs=3, batch_size=64, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(teacher_weights, teacher.get_weights(), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(before, student.get_weights(), strict=True))
    np.testing.assert_array_equal(distiller.predict(x, verbose=0), student.predict(x, verbose=0))

    path = tmp_path / "distiller.keras"
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Distiller)
    assert (loaded.temperature, loaded.alpha, loaded.from_logits) == (4.0, 0.1, True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0), atol=1e-6)
    # the optimizer state comes back too, so a resumed distillation continues where it stopped
    assert int(loaded.optimizer.iterations) == int(distiller.optimizer.iterations) > 0


def test_bayesian_student_keeps_its_kl_at_full_weight(task):
    """alpha weights only the label term: the student's add_loss (a Bayesian KL) is added as is."""
    x, y, teacher = task
    student = bayesian.convert(_mlp(16, seed=4), "sbp", dataset_size=len(x))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    distiller = Distiller(student, teacher, temperature=2.0, alpha=0.25)
    distiller.compile(optimizer="adam", loss=loss_fn)
    y_pred = distiller(x, training=False)
    kl = float(sum(float(np.sum(loss)) for loss in distiller.losses))
    assert kl > 0
    # the student's channels are reported through the distiller too
    assert bayesian.structure(distiller) == bayesian.structure(student) != {}
    total = float(distiller.compute_loss(x=x, y=y, y_pred=y_pred, training=False))
    hard = float(loss_fn(y, y_pred))
    soft = _reference_soft(teacher.predict(x, verbose=0), np.asarray(y_pred), 2.0)
    np.testing.assert_allclose(total, 0.25 * hard + 0.75 * soft + kl, rtol=1e-4)


def test_bad_arguments_are_explained(task):
    _, _, teacher = task
    with pytest.raises(ValueError, match="alpha"):
        Distiller(_mlp(4, seed=5), teacher, alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        Distiller(_mlp(4, seed=5), teacher, temperature=0.0)
    inputs = keras.Input((8,))
    five_classes = keras.Model(inputs, keras.layers.Dense(5)(inputs))
    with pytest.raises(ValueError, match="same classes"):
        Distiller(five_classes, teacher)


def _conv_net(filters: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(filters, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(filters, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def _reference_hint(student_feature, teacher_feature, kernel, bias):
    """FitNets eq. 3 with the mean: 1/2 mean((u - r(v))^2), r a 1x1 convolution / dense, in float64."""
    regressed = np.einsum("...c,cd->...d", student_feature.astype(np.float64), kernel.reshape(-1, kernel.shape[-1]))
    return 0.5 * np.mean((teacher_feature.astype(np.float64) - regressed - bias) ** 2)


def _features(model, name, x):
    return keras.Model(model.input, model.get_layer(name).output).predict(x, verbose=0)


def test_hint_loss_matches_numpy_for_maps_and_vectors():
    """FitNets hints (Romero et al. 2015, eq. 3): a 1x1 convolution regressor on feature maps, a
    dense one on vectors, averaged over hints; the total adds hint_weight times it."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(32, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, size=32)
    student, teacher = _conv_net(3, seed=1), _conv_net(8, seed=2)
    distiller = Distiller(student, teacher, temperature=2.0, alpha=0.4,
                          hints={"conv": "conv", "hidden": "hidden"}, hint_weight=0.7)
    conv_regressor, dense_regressor = distiller.regressors
    assert conv_regressor.kernel.shape == (1, 1, 3, 8) and dense_regressor.kernel.shape == (3, 8)
    expected = np.mean([
        _reference_hint(_features(student, name, x), _features(teacher, name, x), *regressor.get_weights())
        for name, regressor in (("conv", conv_regressor), ("hidden", dense_regressor))])
    np.testing.assert_allclose(float(distiller.hint_loss(x)), expected, rtol=1e-5)

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    distiller.compile(optimizer="adam", loss=loss_fn)
    s, t = student.predict(x, verbose=0), teacher.predict(x, verbose=0)
    total = float(distiller.compute_loss(x=x, y=y, y_pred=s, training=False))
    hard = -_log_softmax(s.astype(np.float64))[np.arange(len(y)), y].mean()
    np.testing.assert_allclose(total, 0.4 * hard + 0.6 * _reference_soft(t, s, 2.0) + 0.7 * expected, rtol=1e-4)


def test_hints_train_the_student_and_regressors_and_roundtrip(tmp_path):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(256, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) > 0).astype("int64")
    student, teacher = _conv_net(3, seed=3), _conv_net(8, seed=4)
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    distiller = Distiller(student, teacher, hints={"conv": "conv"}, hint_weight=5.0)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = float(distiller.hint_loss(x))
    distiller.fit(x, y, epochs=5, batch_size=32, verbose=0)
    assert float(distiller.hint_loss(x)) < 0.5 * before
    assert all(np.array_equal(a, b) for a, b in zip(teacher_weights, teacher.get_weights(), strict=True))
    # the regressor belongs to the distiller: the student keeps its own weights only
    assert len(student.get_weights()) == len(_conv_net(3, seed=3).get_weights())

    path = tmp_path / "hinted.keras"
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert (loaded.hints, loaded.hint_weight) == ({"conv": "conv"}, 5.0)
    np.testing.assert_allclose(loaded.regressors[0].get_weights()[0], distiller.regressors[0].get_weights()[0])
    np.testing.assert_allclose(float(loaded.hint_loss(x)), float(distiller.hint_loss(x)), rtol=1e-5)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), student.predict(x, verbose=0), atol=1e-6)


def test_bad_hints_are_explained():
    student, teacher = _conv_net(3, seed=5), _conv_net(8, seed=6)
    with pytest.raises(ValueError, match="no layer 'conv9'.*its layers are"):
        Distiller(student, teacher, hints={"conv9": "conv"})
    with pytest.raises(ValueError, match="same spatial size"):
        Distiller(student, teacher, hints={"conv": "hidden"})
    with pytest.raises(ValueError, match="hint_weight"):
        Distiller(student, teacher, hints={"conv": "conv"}, hint_weight=-1.0)


def test_update_pruning_prunes_a_distillers_student():
    # UpdatePruning on fit(Distiller): the masks live on the (Functional) student inside the
    # subclassed Distiller; the frozen teacher is left alone
    import tfcompress
    from tfcompress.callbacks import UpdatePruning
    from tfcompress.distillation import Distiller
    from tfcompress.pruning import ConstantSparsity, pruning_wrappers

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
    student = tfcompress.prune(keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                                 keras.layers.Dense(2)]), ConstantSparsity(0.75, 0))
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    distiller = Distiller(student, teacher)
    distiller.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = distiller.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[UpdatePruning()])
    kernel = np.asarray(pruning_wrappers(student)[0].layer.kernel) * np.asarray(pruning_wrappers(student)[0].mask)
    assert (kernel == 0).mean() == pytest.approx(0.75, abs=0.01)
    assert history.history["sparsity"][-1] == pytest.approx(0.75, abs=0.01)
    assert int(np.asarray(pruning_wrappers(student)[0].pruning_step)) == 8
    for before, after in zip(teacher_weights, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
