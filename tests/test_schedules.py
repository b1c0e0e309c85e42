"""Pruning schedules against tfmot's own schedule objects (run under tf_keras in a subprocess).

tfmot is part of the ``[test]`` extra: when it is missing the reference test fails, never skips.
It is imported only in the subprocess: importing it here would set TF_USE_LEGACY_KERAS=1 for
this whole Keras 3 test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import pytest

from tfcompress.errors import TfcompressError
from tfcompress.schedules import ConstantSparsity, PolynomialDecay

CASES = [
    ("PolynomialDecay", {"initial_sparsity": 0.0, "final_sparsity": 0.9, "begin_step": 10, "end_step": 210,
                         "power": 3, "frequency": 20}),
    ("PolynomialDecay", {"initial_sparsity": 0.25, "final_sparsity": 0.75, "begin_step": 0, "end_step": 97,
                         "power": 1.5, "frequency": 7}),
    ("ConstantSparsity", {"target_sparsity": 0.6, "begin_step": 5, "end_step": 150, "frequency": 13}),
    ("ConstantSparsity", {"target_sparsity": 0.5, "begin_step": 3, "end_step": -1, "frequency": 10}),
]
STEPS = 260

TFMOT_SCRIPT = """
import json, sys
import tensorflow_model_optimization as tfmot
cases, steps = json.loads(sys.argv[1]), int(sys.argv[2])
out = []
for name, kwargs in cases:
    schedule = getattr(tfmot.sparsity.keras, name)(**kwargs)
    rows = []
    for step in range(steps):
        should, sparsity = schedule(step)
        rows.append([bool(should.numpy()), float(sparsity.numpy())])
    out.append(rows)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def tfmot_reference():
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", TFMOT_SCRIPT, json.dumps(CASES), str(STEPS)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    if "No module named 'tensorflow_model_optimization'" in done.stderr or "No module named 'tf_keras'" in done.stderr:
        pytest.fail("tfmot (the reference) is not installed; it is in the [test] extra: pip install -e '.[test]'\n"
                    + done.stderr[-500:])
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", range(len(CASES)))
def test_every_step_matches_tfmot(case, tfmot_reference):
    name, kwargs = CASES[case]
    ours = {"PolynomialDecay": PolynomialDecay, "ConstantSparsity": ConstantSparsity}[name](**kwargs)
    for step, (should, sparsity) in enumerate(tfmot_reference[case]):
        our_should, our_sparsity = ours(step)
        assert our_should == should, (name, step)
        assert our_sparsity == pytest.approx(sparsity, abs=1e-6), (name, step)


def test_polynomial_decay_is_zhu_gupta_eq1():
    s = PolynomialDecay(0.1, 0.8, begin_step=100, end_step=300, power=3)
    for t in (100, 150, 250, 300, 400):
        progress = min(1.0, (t - 100) / 200)
        assert s.sparsity(t) == pytest.approx(0.8 + (0.1 - 0.8) * (1 - progress) ** 3)


def test_serialization_round_trip():
    for schedule in (PolynomialDecay(0.0, 0.9, 0, 1000, power=2, frequency=50), ConstantSparsity(0.5, 10)):
        data = keras.saving.serialize_keras_object(schedule)
        again = keras.saving.deserialize_keras_object(data)
        assert type(again) is type(schedule) and again.get_config() == schedule.get_config()


@pytest.mark.parametrize("make, message", [
    (lambda: PolynomialDecay(0.0, 1.0, 0, 100), "final_sparsity"),
    (lambda: PolynomialDecay(0.0, 0.5, 100, 50), "before begin_step"),
    (lambda: PolynomialDecay(0.0, 0.5, 0, -1), "end_step"),
    (lambda: ConstantSparsity(0.5, 0, frequency=0), "frequency"),
    (lambda: ConstantSparsity(-0.1, 0), "target_sparsity"),
])
def test_bad_parameters_are_clear_errors(make, message):
    with pytest.raises(TfcompressError, match=message):
        make()
