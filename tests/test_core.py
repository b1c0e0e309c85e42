"""The graph core: trace / rebuild, the layer registry, users' own layers through every step."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfcompress
from tfcompress.core import (
    ChannelwiseHandler,
    OpaqueHandler,
    UnknownLayerError,
    handler_for,
    iter_layers,
    rebuild,
    register_layer,
    trace,
    unregister_layer,
)
from tfcompress.errors import TfcompressError
from tfcompress.export import to_tflite
from tfcompress.export.runtime import ModelRunner
from tfcompress.pruning import ConstantSparsity, prune, strip, update_masks


def inputs_for(model, n=8, seed=0):
    shapes = [tuple(t.shape[1:]) for t in model.inputs]
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, *s)).astype("float32") for s in shapes]
    return xs[0] if len(xs) == 1 else xs


def same(a, b, x, atol=1e-5):
    out_a, out_b = a.predict(x, verbose=0), b.predict(x, verbose=0)
    if isinstance(out_a, list):
        for u, v in zip(out_a, out_b, strict=True):
            np.testing.assert_allclose(u, v, atol=atol)
    else:
        np.testing.assert_allclose(out_a, out_b, atol=atol)


# ------------------------------------------------------------------------------ trace / rebuild


def test_rebuild_keeps_names_kwargs_ops_nested_shared_and_multi_io():
    keras.utils.set_random_seed(0)
    shared = keras.layers.Dense(5, name="shared")
    inner = keras.Sequential([keras.Input((5,)), keras.layers.Dense(5, activation="relu", name="inner_fc")],
                             name="inner")
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    ha, hb = shared(a), shared(b)
    h = keras.layers.Add(name="merge")([ha, hb])
    h = inner(h)
    h = (h + 3.0) * (1.0 / 6.0)  # keras.ops operations, as MobileNetV3's hard-sigmoid
    h = keras.layers.Dropout(0.5, name="drop")(h, training=False)
    out1 = keras.layers.Dense(2, name="head1")(h)
    out2 = keras.layers.Dense(3, name="head2")(h)
    model = keras.Model([a, b], [out1, out2])
    graph = trace(model)
    names = [node.name for node in graph.nodes]
    assert names.count("shared") == 2 and "inner_fc" in names and "inner" not in names
    assert graph.shared_layers()[0].name == "shared"
    drop = next(node for node in graph.nodes if node.name == "drop")
    assert drop.kwargs == {"training": False}
    copy = rebuild(graph)
    assert [t.name for t in copy.inputs] == ["a", "b"]
    assert {layer.name for layer in copy.layers} >= {"shared", "merge", "inner_fc", "drop", "head1", "head2"}
    # the shared layer stays one layer called twice
    assert sum(layer.name == "shared" for layer in copy.layers) == 1
    same(copy, model, inputs_for(model))
    assert copy.get_layer("shared") is not model.get_layer("shared")


def test_iter_layers_walks_nested_models_and_shared_layers_once():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, name="fc")], name="inner")
    shared = keras.layers.Dense(3, name="shared")
    x = keras.Input((3,))
    model = keras.Model(x, keras.layers.Dense(1, name="head")(shared(inner(shared(x)))))
    names = [layer.name for layer in iter_layers(model, models=False)]
    assert sorted(names) == ["fc", "head", "input_layer", "shared"] or sorted(names) == sorted(set(names))
    assert names.count("shared") == 1 and names.count("fc") == 1
    assert "inner" in [layer.name for layer in iter_layers(model)]


# ------------------------------------------------------------------------------ users' layers


@keras.saving.register_keras_serializable(package="tfcompress_tests")
class ChannelScale(keras.layers.Layer):
    """A user's per-channel scale (what a custom normalization or a learned gate looks like)."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


@keras.saving.register_keras_serializable(package="tfcompress_tests")
class Unregistered(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


@pytest.fixture
def channel_scale_registered():
    register_layer(ChannelScale, ChannelwiseHandler(
        per_channel=("scale",), constant=lambda layer, c: c * keras.ops.convert_to_numpy(layer.scale)))
    yield
    unregister_layer(ChannelScale)


def scaled_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    x = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(x)
    h = ChannelScale(name="scale1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.Conv2D(8, 3, name="conv2")(h)
    h = ChannelScale(name="scale2")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(x, keras.layers.Dense(4, name="head")(h))
    rng = np.random.default_rng(seed)
    for name in ("scale1", "scale2"):
        layer = model.get_layer(name)
        layer.set_weights([rng.uniform(0.5, 2.0, layer.scale.shape).astype("float32")])
    return model


def test_registered_user_layer_goes_through_prune_shrink_quantize_and_int8(channel_scale_registered, tmp_path):
    model = scaled_cnn()
    assert type(handler_for(model.get_layer("scale1"))).__name__ == "ChannelwiseHandler"
    pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel")
    update_masks(pruned, 0)
    masked = strip(pruned)
    small, report = tfcompress.shrink(pruned, return_report=True)
    assert report.channels["conv1"] == (8, 4) and report.channels["conv2"] == (8, 4)
    assert small.get_layer("scale1").scale.shape == (4,)
    x = inputs_for(model, 16)
    same(small, masked, x)
    assert report.macs_ratio > 1.5
    qat = tfcompress.quantize(small)
    assert any(layer.name == "quantize_scale1" for layer in qat.layers)
    export = to_tflite(qat, tmp_path / "qat.tflite", "int8")
    assert export.int8_coverage == 1.0
    ptq = to_tflite(small, tmp_path / "ptq.tflite", "int8", representative_data=x)
    assert ptq.int8_coverage == 1.0
    # the int8 file computes the shrunk model (coarsely: random weights, int8)
    out = ModelRunner(tmp_path / "ptq.tflite").predict(x)
    ref = small.predict(x, verbose=0)
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.95


def test_unregistered_layer_gets_the_registration_error():
    x = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, name="conv")(x)
    h = Unregistered(name="mystery")(h)
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    for step in (tfcompress.shrink, tfcompress.quantize):
        with pytest.raises(UnknownLayerError) as info:
            step(model)
        message = str(info.value)
        assert "'mystery'" in message and "Unregistered" in message and "register_layer" in message
    # shrink can still keep its channels whole when asked
    small = tfcompress.shrink(model, strict=False)
    same(small, model, inputs_for(model))


def test_opaque_registration_keeps_channels_whole():
    register_layer(Unregistered, OpaqueHandler(barrier=True))
    try:
        x = keras.Input((6, 6, 2))
        h = keras.layers.Conv2D(4, 3, name="conv")(x)
        h = Unregistered(name="mystery")(h)
        model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
        pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel")
        update_masks(pruned, 0)
        # the conv feeds an opaque layer: shrink could not remove its channels, so none is pruned
        assert float(pruned.get_layer("prune_low_magnitude_conv").channel_mask_numpy().min()) == 1.0
        small = tfcompress.shrink(pruned)
        assert small.get_layer("conv").filters == 4
    finally:
        unregister_layer(Unregistered)


def test_lambda_layer_is_reused_not_deserialized(tmp_path):
    keras.utils.set_random_seed(1)
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(x)
    h = keras.layers.Lambda(lambda t: t * 0.5, name="halve")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(x, keras.layers.Dense(3, name="head")(h))
    pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel")
    update_masks(pruned, 0)
    assert float(pruned.get_layer("prune_low_magnitude_conv").channel_mask_numpy().min()) == 1.0
    plain = strip(pruned)
    same(plain, model, inputs_for(model))
    qat = tfcompress.quantize(model)
    same(qat, qat, inputs_for(model))
    assert qat.get_layer("halve") is model.get_layer("halve")
    with pytest.raises(TfcompressError, match="Lambda"):
        tfcompress.shrink(model)
    same(tfcompress.shrink(model, strict=False), model, inputs_for(model))


def test_register_layer_checks_its_arguments():
    with pytest.raises(TfcompressError, match="class"):
        register_layer("Dense", OpaqueHandler())
    with pytest.raises(TfcompressError, match="LayerHandler"):
        register_layer(Unregistered, object())
    with pytest.raises(TfcompressError, match="already registered"):
        register_layer(keras.layers.Dense, OpaqueHandler())


def test_recurrent_layers_are_refused_before_the_int8_calibrator(tmp_path):
    """TF 2.21's int8 calibrator segfaults on an LSTM: the export must stop before it, by name."""
    from tfcompress.errors import ConversionError

    x = keras.Input((6, 3))
    h = keras.layers.LSTM(4, name="lstm")(x)
    model = keras.Model(x, keras.layers.Dense(2)(h))
    data = np.random.default_rng(0).normal(size=(8, 6, 3)).astype("float32")
    for fallback in (False, True):
        with pytest.raises(ConversionError, match="LSTM layer 'lstm'") as info:
            to_tflite(model, tmp_path / "lstm.tflite", "int8", representative_data=data,
                      allow_float_fallback=fallback)
        assert "dynamic" in str(info.value)
    assert not (tmp_path / "lstm.tflite").exists()
    with pytest.raises(TfcompressError, match="recurrent|LSTM"):
        tfcompress.quantize(model)


def test_qat_heads_with_fixed_output_ranges_export_within_one_lsb(tmp_path):
    """Softmax / sigmoid / tanh outputs: TFLite fixes their int8 quantization (1/256 and -128,
    1/128 and 0); QAT simulates exactly that, so the int8 file equals the QAT model."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_qat import lsb_agreement

    keras.utils.set_random_seed(0)
    x = keras.Input((10, 10, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu")(x)
    h = keras.layers.Conv2D(8, 3)(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("swish")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(12, activation="tanh", name="hidden")(h)
    gate = keras.layers.Dense(12, activation="sigmoid", name="gate")(h)
    h = keras.layers.Multiply()([h, gate])
    model = keras.Model(x, keras.layers.Dense(4, activation="softmax", name="head")(h))
    qat = tfcompress.quantize(model)
    head = qat.get_layer("quantize_head")
    assert head.fixed_range == (0.0, 255 / 256)
    assert qat.get_layer("quantize_hidden").fixed_range == (-1.0, 127 / 128)
    data = np.random.default_rng(1).uniform(0, 1, (96, 10, 10, 1)).astype("float32")
    labels = np.random.default_rng(2).integers(0, 4, 96)
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(data, labels, epochs=2, batch_size=32, verbose=0)
    export = to_tflite(qat, tmp_path / "heads.tflite", "int8")
    assert export.int8_coverage == 1.0
    litert, micro, worst = lsb_agreement(qat, tmp_path / "heads.tflite", data[:48])
    assert litert >= 0.99 and micro >= 0.99, (litert, micro, worst)
    reloaded = keras.saving.load_model(_save(qat, tmp_path))
    np.testing.assert_allclose(reloaded.predict(data[:8], verbose=0), qat.predict(data[:8], verbose=0), atol=1e-6)


def _save(model, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    return path


def test_qat_computes_an_input_rescaling_as_an_exact_depthwise_convolution(tmp_path):
    """MobileNetV3's Rescaling(1/127.5, offset=-1): as MUL / ADD by float constants the converter
    leaves it in float in a QAT graph; as a 1x1 depthwise convolution it is int8 and exact."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_qat import lsb_agreement

    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    h = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescaling")(x)
    h = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(x, keras.layers.Dense(3, name="head")(h))
    qat = tfcompress.quantize(model)
    assert type(qat.get_layer("quant_rescaling").layer).__name__ == "DepthwiseConv2D"
    data = np.random.default_rng(0).uniform(0, 255, (64, 8, 8, 3)).astype("float32")
    plain = model.predict(data, verbose=0)
    for start in range(0, 64, 16):
        qat(data[start : start + 16], training=True)
    export = to_tflite(qat, tmp_path / "rescaled.tflite", "int8")
    assert export.int8_coverage == 1.0
    _, micro, _ = lsb_agreement(qat, tmp_path / "rescaled.tflite", data[:32])
    assert micro >= 0.99
    assert np.corrcoef(qat.predict(data, verbose=0).ravel(), plain.ravel())[0, 1] > 0.95


def test_a_nested_model_reused_in_another_model_still_traces_but_not_twice_in_one():
    import keras

    from tfcompress.core import trace
    from tfcompress.errors import TfcompressError

    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="inner")
    a_in = keras.Input((4,))
    first = keras.Model(a_in, keras.layers.Dense(2)(inner(a_in)))
    b_in = keras.Input((4,))
    second = keras.Model(b_in, keras.layers.ReLU()(inner(b_in)))   # the same model, elsewhere
    assert [n.name for n in trace(first).nodes if n.is_layer][-2:] == [inner.layers[0].name, first.layers[-1].name]
    assert len([n for n in trace(second).nodes if n.is_layer]) >= 2
    c_in = keras.Input((4,))
    twice = keras.Model(c_in, keras.layers.Add()([inner(c_in), inner(c_in)]))
    with pytest.raises(TfcompressError, match="called more than once"):
        trace(twice)
