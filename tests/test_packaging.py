"""Packaging (issue 23): dependency ranges whose ends are the constraint files, an SPDX license, the
supported Python versions, and a core that needs neither tensorflow-probability nor tf-keras."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the copy pip carries
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def constraints(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            package, _, pinned = line.partition("==")
            pins[package.strip().lower()] = pinned.strip()
    return pins


def requirements(extra: str | None = None) -> dict[str, Requirement]:
    listed = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return {(r := Requirement(text)).name.lower(): r for text in listed}


def test_dependencies_are_ranges_whose_ends_are_the_constraint_files():
    core = requirements()
    assert set(core) == {"tensorflow", "keras", "ai-edge-litert", "numpy"}  # no tfp, no tf-keras
    oldest, newest = constraints("constraints-oldest.txt"), constraints("constraints-newest.txt")
    ranges = {**core, "tensorflow-probability": requirements("tfp")["tensorflow-probability"]}
    for name, requirement in ranges.items():
        assert not any(s.operator == "==" for s in requirement.specifier), requirement
        lower = [s for s in requirement.specifier if s.operator == ">="]
        assert len(lower) == 1 and any(s.operator == "<" for s in requirement.specifier), requirement
        # the lower bound is the oldest tested version; both tested versions are in the range
        assert Version(oldest[name]).release[:len(Version(lower[0].version).release)] == \
            Version(lower[0].version).release, (name, oldest[name], requirement)
        assert requirement.specifier.contains(oldest[name]) and requirement.specifier.contains(newest[name]), name
    assert set(oldest) == set(newest)


def test_installed_versions_are_in_range():
    for name, requirement in {**requirements(), **requirements("tfp")}.items():
        assert requirement.specifier.contains(version(name), prereleases=True), (name, version(name))


def test_spdx_license_and_the_declared_python_versions():
    assert PROJECT["license"] == "Apache-2.0"  # an SPDX expression, not the deprecated table
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]  # PEP 639
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+)", r) and int(r.split(">=")[1]) >= 77 for r in build)
    pythons = SpecifierSet(PROJECT["requires-python"])
    assert pythons.contains(f"{sys.version_info.major}.{sys.version_info.minor}")
    declared = sorted(Version(c.rsplit("::", 1)[1].strip()) for c in PROJECT["classifiers"]
                      if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert declared == [Version(f"3.{minor}") for minor in range(declared[0].minor, declared[-1].minor + 1)]
    assert all(pythons.contains(str(v)) for v in declared)
    assert not pythons.contains(f"3.{declared[0].minor - 1}") and not pythons.contains(f"3.{declared[-1].minor + 1}")
    # the oldest declared Python is the one scripts/check_oldest.sh runs
    assert f"python3.{declared[0].minor}" in (ROOT / "scripts" / "check_oldest.sh").read_text()


def test_the_core_runs_without_tensorflow_probability_or_tf_keras():
    """Importing tfcompress and training a Bayesian (SBP) model loads neither package."""
    code = """
import sys, keras, numpy as np, tfcompress
from tfcompress import bayesian
x = keras.Input((6,))
model = keras.Model(x, keras.layers.Dense(2, name="out")(keras.layers.Dense(8, activation="relu", name="fc")(x)))
sbp = bayesian.convert(model, "sbp", dataset_size=16, verbose=0)
sbp.compile("adam", "mse")
sbp.fit(np.ones((16, 6)), np.ones((16, 2)), verbose=0)
loaded = [name for name in ("tensorflow_probability", "tf_keras") if name in sys.modules]
print("loaded:", loaded)
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "loaded: []"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_ndtr_equals_tensorflow_probability(dtype):
    """The stable log Phi the SBP layer uses (no TFP at run time) against TFP's, values and slopes."""
    import tensorflow as tf
    import tensorflow_probability as tfp

    from tfcompress.layers.lognormal import _log_ndtr

    x = tf.constant(np.concatenate([np.linspace(-40.0, 12.0, 1041), [-20.0, -10.0, 5.0, 8.0]]).astype(dtype))
    normal = tfp.distributions.Normal(tf.zeros([], x.dtype), tf.ones([], x.dtype))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, theirs = _log_ndtr(x), normal.log_cdf(x)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6 if dtype == "float32" else 1e-12, atol=0)
    slopes = tape.gradient(ours, x).numpy()
    assert np.isfinite(slopes).all()
    np.testing.assert_allclose(slopes, tape.gradient(theirs, x).numpy(), rtol=1e-5, atol=1e-30)

