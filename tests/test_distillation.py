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
