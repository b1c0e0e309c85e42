"""One test harness for tfcompress layers, in the spirit of Keras' ``TestCase.run_layer_test``.

:func:`run_layer_test` puts one layer through construction, config, ``.keras`` and training
checks; :func:`assert_keras_roundtrip` is the save / reload / compare part alone, for a whole
model; :func:`assert_reload_in_fresh_process` loads saved models in a new process that imports
only ``tfcompress``. They raise ``AssertionError`` with a message naming the layer and the check.

Strictness, for a layer whose ``get_config`` loses or garbles an ``__init__`` argument:

* every named parameter of the layer class's ``__init__`` and every key of ``init_kwargs``
  must be a key of ``get_config()`` (a missing key fails at once);
* the layer rebuilt with ``from_config(get_config())`` under the same seed must start in the
  same state (initial weights equal) and, after the same ``prepare``, compute the same
  inference and training-mode outputs, added losses, gradients (input and weights), state
  updates and protocol results (``keep_mask()``, ``tfcompress_effective_weights()``, ...): a
  key present with a wrong value fails when the value changes any of these;
* so must the layer reloaded from a ``.keras`` file, whose variables must be equal too.

Give the arguments that change behaviour non-default values in ``init_kwargs``, and use
``prepare`` to put the layer in a state where they matter (e.g. weights near a threshold): a
default value, or one that changes nothing in the state tested, survives a lost argument.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

import tfcompress  # noqa: F401  (registers every tfcompress class with Keras)


@dataclass
class LayerTestResult:
    """What :func:`run_layer_test` built, for extra assertions by the caller."""

    layer: keras.layers.Layer  #: the layer inside ``model`` (after the training step and calls)
    model: keras.Model  #: the Functional model around it
    loaded: keras.Model  #: ``model`` reloaded from its ``.keras`` file
    loaded_layer: keras.layers.Layer  #: ``layer``'s counterpart in ``loaded``
    x: np.ndarray  #: the input batch


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _numpy(value) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value))


def _scope(custom_objects: Mapping[str, Any] | None):
    return keras.saving.custom_object_scope(dict(custom_objects)) if custom_objects \
        else contextlib.nullcontext()


def _call(layer, x, call_kwargs: Mapping[str, Any], training: bool | None):
    kwargs = dict(call_kwargs)
    if training is not None:
        kwargs["training"] = training
    return layer(x, **kwargs)


def _init_parameters(cls: type) -> list[str]:
    """The named parameters of ``cls.__init__`` (not self, *args, **kwargs)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self"
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


def _nested_configs(config: Mapping[str, Any]):
    """``config`` and the configs of the layers serialized in it (wrappers' inner layers)."""
    yield config
    for value in config.values():
        if isinstance(value, Mapping) and isinstance(value.get("config"), Mapping) \
                and "class_name" in value:
            yield from _nested_configs(value["config"])


def _config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    keys = sorted(set(a) | set(b))
    return "; ".join(f"{k}: {a.get(k, '<missing>')!r} != {b.get(k, '<missing>')!r}"
                     for k in keys if a.get(k, "<missing>") != b.get(k, "<missing>"))


def _lists(value):
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _lists(v) for k, v in value.items()}
    return value


def _normalized(value):
    """``value`` with the tuples of nested ``build_config`` entries as lists: Keras writes an
    inner layer's build shape as a tuple and reads it back as a list (not the layer's doing)."""
    if isinstance(value, Mapping):
        return {k: _lists(v) if k == "build_config" else _normalized(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_normalized(v) for v in value)
    return value


def _assert_same_config(original: Mapping[str, Any], other: Mapping[str, Any], what: str) -> None:
    original, other = _normalized(dict(original)), _normalized(dict(other))
    _check(original == other, f"{what}: configs differ ({_config_diff(original, other)})")


def _assert_weights_match(a: keras.layers.Layer, b: keras.layers.Layer, what: str) -> None:
    for kind in ("trainable_weights", "non_trainable_weights"):
        wa, wb = getattr(a, kind), getattr(b, kind)
        _check(len(wa) == len(wb), f"{what}: {len(wa)} {kind} != {len(wb)} "
               f"({[w.path for w in wa]} vs {[w.path for w in wb]})")
        for va, vb in zip(wa, wb, strict=True):
            _check(tuple(va.shape) == tuple(vb.shape) and va.dtype == vb.dtype,
                   f"{what}: weight {va.path} {tuple(va.shape)} {va.dtype} != "
                   f"{vb.path} {tuple(vb.shape)} {vb.dtype}")


def _assert_close(actual, desired, atol: float, what: str) -> None:
    actual, desired = _numpy(actual), _numpy(desired)
    _check(actual.shape == desired.shape, f"{what}: shape {actual.shape} != {desired.shape}")
    np.testing.assert_allclose(actual, desired, rtol=1e-6, atol=atol, err_msg=what)


def _assert_variables_equal(a, b, what: str) -> None:
    """The same variables (order, name, shape, values), seed generator states included."""
    va, vb = a.variables, b.variables
    _check(len(va) == len(vb), f"{what}: {len(va)} variables != {len(vb)}")
    for x, y in zip(va, vb, strict=True):
        _check(x.name == y.name, f"{what}: variable {x.path} != {y.path}")
        np.testing.assert_array_equal(_numpy(y), _numpy(x), err_msg=f"{what}: variable {x.path}")


#: tfcompress's zero-argument layer protocol (pruning decisions, effective weights, int8 ranges):
#: compared between a layer and its rebuilt / reloaded copy where the layer has them
PROTOCOL_METHODS = ("keep_mask", "channel_importance", "channel_scale", "weight_mask",
                    "bit_precision", "tfcompress_effective_weights", "scale_and_zero_point",
                    "kernel_scale")


def _assert_same_protocol(a, b, atol: float, what: str) -> None:
    for method in PROTOCOL_METHODS:
        if not callable(getattr(a, method, None)):
            continue
        va, vb = getattr(a, method)(), getattr(b, method)()
        if isinstance(va, list | tuple):
            _check(isinstance(vb, list | tuple) and len(va) == len(vb),
                   f"{what}: {method}() gave {vb!r}, expected {va!r}")
            for ia, ib in zip(va, vb, strict=True):
                _assert_close(ib, ia, atol, f"{what}: {method}()")
        elif va is None or vb is None:
            _check(va is vb, f"{what}: {method}() gave {vb!r}, expected {va!r}")
        else:
            _assert_close(vb, va, atol, f"{what}: {method}()")


def _assert_same_losses(a, b, atol: float, what: str) -> None:
    """The losses the last calls added (the KL terms of the Bayesian layers)."""
    la, lb = [_numpy(v) for v in a.losses], [_numpy(v) for v in b.losses]
    _check(len(la) == len(lb), f"{what}: {len(lb)} losses, expected {len(la)}")
    for va, vb in zip(la, lb, strict=True):
        _assert_close(vb, va, atol, f"{what}: added losses")


def _training_call(layer, x, call_kwargs, seed: int):
    """Training-mode outputs and the gradients of a fixed random projection of them, plus the
    added losses, with respect to the input and the trainable weights (None where none)."""
    import tensorflow as tf

    inputs = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = _call(layer, inputs, call_kwargs, training=True)
        projection = np.random.default_rng(seed + 2).normal(size=tuple(outputs.shape))
        objective = tf.reduce_sum(tf.cast(outputs, "float32") * projection.astype("float32"))
        for loss in layer.losses:
            objective += tf.reduce_sum(tf.cast(loss, "float32"))
    sources = [inputs, *layer.trainable_weights]
    grads = tape.gradient(objective, sources) if inputs.dtype.is_floating \
        else [None] + tape.gradient(objective, sources[1:])
    names = ["input", *(w.path for w in layer.trainable_weights)]
    return outputs, list(zip(names, grads, strict=True))


def _assert_same_behaviour(reference, other, batches, call_kwargs, atol: float, seed: int,
                           what: str) -> None:
    """``other`` computes what ``reference`` does, given they start in the same state."""
    for i, batch in enumerate(batches):
        _assert_close(_call(other, batch, call_kwargs, training=False),
                      _call(reference, batch, call_kwargs, training=False),
                      atol, f"{what}: inference outputs, batch {i}")
        _assert_same_losses(reference, other, atol, f"{what}, inference, batch {i}")
    _assert_same_protocol(reference, other, atol, what)
    for i, batch in enumerate(batches):
        out_ref, grads_ref = _training_call(reference, batch, call_kwargs, seed)
        out, grads = _training_call(other, batch, call_kwargs, seed)
        _assert_close(out, out_ref, atol, f"{what}: training-mode outputs, call {i + 1}")
        _assert_same_losses(reference, other, atol, f"{what}, training, call {i + 1}")
        for (name, g_ref), (_, g) in zip(grads_ref, grads, strict=True):
            _check((g is None) == (g_ref is None), f"{what}: gradient of {name} is {g}, expected {g_ref}")
            if g is not None:
                _assert_close(g, g_ref, atol, f"{what}: gradient of {name}, call {i + 1}")
        _assert_variables_equal(reference, other, f"{what}: state after training call {i + 1}")


def _shape_matches(expected, actual) -> bool:
    return len(expected) == len(actual) and all(
        e is None or e == a for e, a in zip(expected, actual, strict=True))


def layer_model(layer: keras.layers.Layer, input_shape: tuple, *,
                call_kwargs: Mapping[str, Any] | None = None,
                wrap_model: Callable[[keras.layers.Layer, keras.KerasTensor], Any] | None = None,
                ) -> keras.Model:
    """A Functional model around ``layer`` (``input_shape`` without the batch size)."""
    inputs = keras.Input(shape=tuple(input_shape))
    outputs = wrap_model(layer, inputs) if wrap_model is not None \
        else _call(layer, inputs, dict(call_kwargs or {}), training=None)
    return keras.Model(inputs, outputs)


_FRESH_PROCESS_CHECK = """
import sys
from pathlib import Path

import keras
import numpy as np

import tfcompress  # noqa: F401  (the only registration the saved files may rely on)

failures = []
for path in sorted(Path(sys.argv[1]).glob("*.keras")):
    data = np.load(path.with_suffix(".npz"))
    try:
        model = keras.saving.load_model(path)
        np.testing.assert_allclose(np.asarray(model(data["x"], training=False)), data["y"], rtol=0,
                                   atol=float(sys.argv[2]))
    except Exception as exc:  # report every file, not the first failure only
        failures.append(f"{path.stem}: {type(exc).__name__}: {exc}")
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def assert_reload_in_fresh_process(models: Mapping[str, tuple[keras.Model, np.ndarray]],
                                   tmp_path: str | Path, *, atol: float = 1e-6,
                                   timeout: float = 600) -> None:
    """Save each ``name -> (model, x)`` to ``.keras``; a new Python process that imports only
    ``tfcompress`` loads them all and must reproduce their predictions on ``x`` within ``atol``."""
    import os
    import subprocess
    import sys

    directory = Path(tmp_path) / "fresh_process"
    directory.mkdir(parents=True, exist_ok=True)
    for name, (model, x) in models.items():
        model.save(directory / f"{name}.keras")
        np.savez(directory / f"{name}.npz", x=x, y=np.asarray(model(x, training=False)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS_CHECK, str(directory), str(atol)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    report = done.stdout.strip() or done.stderr.strip()[-3000:]  # stderr: when it crashed
    _check(done.returncode == 0, f"reloading in a fresh process (import tfcompress only) failed:\n{report}")


def assert_keras_roundtrip(model: keras.Model, x, tmp_path: str | Path, *, atol: float = 1e-6,
                           rtol: float = 0.0, custom_objects: Mapping[str, Any] | None = None,
                           name: str = "model") -> keras.Model:
    """Save ``model`` to ``tmp_path / f"{name}.keras"``, reload it and check the copy.

    Checks that the reloaded model has layers of the same types and configs (in order), the
    same variables (values exactly equal) and the same predictions (inference mode) within
    ``atol`` / ``rtol``. Returns the reloaded model.
    """
    path = Path(tmp_path) / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, custom_objects=dict(custom_objects or {}))
    _check(len(loaded.layers) == len(model.layers),
           f"reloaded {name}: {len(loaded.layers)} layers != {len(model.layers)}")
    for original, restored in zip(model.layers, loaded.layers, strict=True):
        _check(type(restored) is type(original),
               f"reloaded {original.name}: {type(restored).__name__} is not {type(original).__name__}")
        _assert_same_config(original.get_config(), restored.get_config(), f"reloaded {original.name}")
    _assert_variables_equal(model, loaded, f"reloaded {name}")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=rtol, atol=atol, err_msg=f"reloaded {name}: predictions")
    return loaded


def run_layer_test(
    layer_cls_or_factory: type | Callable[..., keras.layers.Layer],
    init_kwargs: Mapping[str, Any] | None = None,
    input_shape: tuple | None = None,
    input_data: np.ndarray | None = None,
    *,
    call_kwargs: Mapping[str, Any] | None = None,
    expected_output_shape: tuple | None = None,
    expected_num_trainable_weights: int | None = None,
    expected_num_non_trainable_weights: int | None = None,
    supports_training: bool = True,
    wrap_model: Callable[[keras.layers.Layer, keras.KerasTensor], Any] | None = None,
    prepare: Callable[[keras.layers.Layer], None] | None = None,
    custom_objects: Mapping[str, Any] | None = None,
    atol: float = 1e-6,
    seed: int = 0,
    tmp_path: str | Path,
) -> LayerTestResult:
    """Check one layer: config, build, outputs, ``.keras`` round trip and a training step.

    Args:
        layer_cls_or_factory: the layer class, or a callable taking ``**init_kwargs`` and
            returning a new layer (for wrappers: it makes the inner layer).
        init_kwargs: the arguments; give behaviour-changing ones non-default values.
        input_shape: the input shape *with* the batch size (random normal data), or
        input_data: an input batch (an array, also accepted as the third positional argument).
        call_kwargs: extra arguments of every call (e.g. ``member=1``).
        expected_output_shape: the output shape (batch included; None matches anything).
        expected_num_trainable_weights, expected_num_non_trainable_weights: of the built layer.
        supports_training: run ``fit`` for one step and require a trainable weight to change.
        wrap_model: ``wrap_model(layer, inputs) -> outputs`` to build the Functional model
            around the layer (default: ``layer(inputs)``).
        prepare: called on each built instance, before its state is compared or saved (e.g.
            to set a mask), so non-default state is what gets checked.
        custom_objects: for classes not registered with Keras.
        atol: tolerance of the output comparisons (weights must be exactly equal).
        seed: seeds Keras' global generator before each construction and the input data.
        tmp_path: directory of the ``.keras`` file.

    Raises:
        AssertionError: when a check fails.
    """
    init_kwargs = dict(init_kwargs or {})
    call_kwargs = dict(call_kwargs or {})
    if input_shape is not None and not isinstance(input_shape, tuple | list):
        input_shape, input_data = None, input_shape  # an array passed positionally
    if (input_shape is None) == (input_data is None):
        raise ValueError("pass exactly one of input_shape and input_data")
    if input_data is None:
        x = np.random.default_rng(seed).normal(size=tuple(input_shape)).astype("float32")
    else:
        x = np.asarray(input_data)

    # a second batch, so running statistics (EMA ranges, BN moments) move between calls
    x2 = (np.random.default_rng(seed + 3).normal(size=x.shape) * 2.0 + 0.5).astype(x.dtype) \
        if np.issubdtype(x.dtype, np.floating) else x
    batches = (x, x2)

    def make() -> keras.layers.Layer:
        keras.utils.set_random_seed(seed)
        with _scope(custom_objects):
            return layer_cls_or_factory(**init_kwargs)

    # -- config: every argument is in it, and from_config / deserialize give the same config
    layer = make()
    cls = type(layer)
    label = cls.__name__
    config = layer.get_config()
    _check(isinstance(config, dict), f"{label}.get_config() returned {type(config).__name__}")
    for name in _init_parameters(cls):
        _check(name in config, f"{label}.get_config() misses the __init__ argument {name!r}")
    nested = list(_nested_configs(config))
    for name in init_kwargs:
        if inspect.isclass(layer_cls_or_factory):
            _check(name in config, f"{label}.get_config() misses the argument {name!r}")
        else:
            _check(any(name in c for c in nested),
                   f"{label}.get_config() (or an inner layer's) misses the argument {name!r}")
    with _scope(custom_objects):
        revived = cls.from_config(copy.deepcopy(config))  # Wrapper.from_config pops 'layer'
    _check(type(revived) is cls, f"{label}.from_config gave a {type(revived).__name__}")
    _assert_same_config(config, revived.get_config(), f"{label}.from_config(get_config())")
    serialized = keras.saving.serialize_keras_object(layer)
    try:
        text = json.dumps(serialized)
    except TypeError as exc:
        raise AssertionError(f"{label}: the serialized config is not JSON: {exc}") from exc
    with _scope(custom_objects):
        deserialized = keras.saving.deserialize_keras_object(json.loads(text))
    _check(type(deserialized) is cls, f"{label}: deserialize gave a {type(deserialized).__name__}")
    _assert_same_config(config, deserialized.get_config(), f"{label}: JSON serialize / deserialize")

    # -- eager build; the layer built from its config with the same seed starts in the same
    # state (this sees initializers and initial values, e.g. ``initial_log_sigma2``)
    layer = make()
    _call(layer, x, call_kwargs, training=False)
    _check(layer.built, f"{label} is not built after a call")
    keras.utils.set_random_seed(seed)
    with _scope(custom_objects):
        rebuilt = cls.from_config(copy.deepcopy(layer.get_config()))
    _call(rebuilt, x, call_kwargs, training=False)
    what = f"{label}.from_config(get_config())"
    _assert_same_config(layer.get_config(), rebuilt.get_config(), f"{what} after build")
    _assert_weights_match(layer, rebuilt, what)
    _assert_variables_equal(layer, rebuilt, f"{what}: initial state")
    if prepare is not None:  # deterministic, so both get the same state (or their configs show)
        prepare(layer)
        prepare(rebuilt)

    # -- outputs: shape, weight counts
    y = _numpy(_call(layer, x, call_kwargs, training=False))
    if expected_output_shape is not None:
        _check(_shape_matches(tuple(expected_output_shape), y.shape),
               f"{label}: output shape {y.shape}, expected {tuple(expected_output_shape)}")
    _check(np.all(np.isfinite(y)), f"{label}: non-finite outputs")
    counts = {"trainable_weights": expected_num_trainable_weights,
              "non_trainable_weights": expected_num_non_trainable_weights}
    for kind, expected in counts.items():
        if expected is not None:
            actual = getattr(layer, kind)
            _check(len(actual) == expected,
                   f"{label}: {len(actual)} {kind} ({[w.path for w in actual]}), expected {expected}")

    # -- symbolic call: the output shape the layer declares is the one it computes
    symbolic_layer = make()
    symbolic = _call(symbolic_layer, keras.Input(shape=x.shape[1:]), call_kwargs, training=None)
    _check(_shape_matches(tuple(symbolic.shape), y.shape),
           f"{label}: symbolic output shape {tuple(symbolic.shape)} != eager {y.shape}")
    _assert_weights_match(layer, symbolic_layer, f"{label} built symbolically")

    # -- the rebuilt layer behaves the same: inference, training mode, gradients, state
    _assert_same_behaviour(layer, rebuilt, batches, call_kwargs, atol, seed, what)

    # -- in a Functional model: one training step
    model_layer = make()
    model = layer_model(model_layer, x.shape[1:], call_kwargs=call_kwargs, wrap_model=wrap_model)
    if prepare is not None:
        prepare(model_layer)
    if supports_training:
        target = np.random.default_rng(seed + 1).normal(
            size=_numpy(model(x, training=False)).shape).astype("float32")
        model.compile(optimizer="sgd", loss="mse")
        before = [_numpy(w).copy() for w in model_layer.trainable_weights]
        history = model.fit(x, target, batch_size=len(x), epochs=1, verbose=0)
        loss = history.history["loss"][0]
        _check(math.isfinite(loss), f"{label}: training loss {loss}")
        if before:
            changed = [not np.array_equal(b, _numpy(w))
                       for b, w in zip(before, model_layer.trainable_weights, strict=True)]
            _check(any(changed), f"{label}: no trainable weight changed in a training step "
                   f"({[w.path for w in model_layer.trainable_weights]})")

    # -- .keras round trip (tfcompress classes load by their registration)
    loaded = assert_keras_roundtrip(model, x, tmp_path, atol=atol, custom_objects=custom_objects,
                                    name=label)
    loaded_layer = loaded.get_layer(model_layer.name)
    _check(type(loaded_layer) is cls, f"reloaded {label} is a {type(loaded_layer).__name__}")
    # the noise streams and running statistics are state too: the next training calls agree
    _assert_same_behaviour(model_layer, loaded_layer, batches[::-1], call_kwargs, atol, seed,
                           f"reloaded {label}")
    return LayerTestResult(model_layer, model, loaded, loaded_layer, x)
