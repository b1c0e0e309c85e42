"""tfcompress.metrics: parameters, sparsity and MACs of Keras models and TFLite files.

MACs are checked three independent ways: formulas written out here with NumPy; for
valid-padded convolutions and dense layers, the output sum of a layer whose kernel and
input are all ones (each multiply-accumulate then adds exactly 1); and the published
MobileNetV2 0.35 @ 224 figure (59M Mult-Adds, Sandler et al. 2018, Table 6 / TF-slim).
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress.errors import TfcompressError
from tfcompress.export.tflite_file import load_tflite
from tfcompress.metrics import ModelSummary, summarize, summarize_tflite
from tfcompress.models import lenet5_caffe, residual_cnn


def conv_out(size: int, kernel: int, stride: int = 1, padding: str = "valid", dilation: int = 1) -> int:
    effective = dilation * (kernel - 1) + 1
    if padding == "same":
        return -(-size // stride)
    return (size - effective) // stride + 1


def rows(summary: ModelSummary) -> dict:
    return {r.name: r for r in summary.layers}


def ones_sum_macs(layer: keras.layers.Layer, input_shape: tuple[int, ...]) -> int:
    """Run ``layer`` (no bias, linear) on ones with all-ones weights: the output sum is its MAC count."""
    model = keras.Sequential([keras.Input(input_shape), layer])
    for w in layer.weights:
        w.assign(np.ones(w.shape, dtype="float32"))
    out = model.predict(np.ones((1, *input_shape), dtype="float32"), verbose=0)
    return int(round(float(out.sum())))


def convert_batch1(model: keras.Model) -> bytes:
    """Float TFLite with a static batch of 1 (as tfcompress.export.to_tflite exports)."""
    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    # The converter freezes the variables of the trackable object it is given.
    holder = tf.Module()
    holder.variables_to_freeze = [v.value for v in model.variables]
    return tf.lite.TFLiteConverter.from_concrete_functions([function], holder).convert()


def test_lenet5_caffe_params_and_macs_by_hand():
    summary = summarize(lenet5_caffe())
    # conv1 20@5x5 valid: 28 -> 24; pool 2 -> 12; conv2 50@5x5: 12 -> 8; pool -> 4.
    h1 = conv_out(28, 5)
    p1 = h1 // 2
    h2 = conv_out(p1, 5)
    p2 = h2 // 2
    expected_params = {
        "conv1": 5 * 5 * 1 * 20 + 20,
        "conv2": 5 * 5 * 20 * 50 + 50,
        "fc1": p2 * p2 * 50 * 500 + 500,
        "logits": 500 * 10 + 10,
    }
    expected_macs = {
        "conv1": h1 * h1 * 20 * (5 * 5 * 1),
        "pool1": p1 * p1 * 20 * 4,
        "conv2": h2 * h2 * 50 * (5 * 5 * 20),
        "pool2": p2 * p2 * 50 * 4,
        "flatten": 0,
        "fc1": p2 * p2 * 50 * 500,
        "logits": 500 * 10,
    }
    assert expected_macs["conv1"] == 288_000
    by_name = rows(summary)
    for name, params in expected_params.items():
        assert by_name[name].params == params, name
    for name, macs in expected_macs.items():
        assert by_name[name].macs == macs, name
    assert summary.params == sum(expected_params.values()) == 431_080
    assert summary.macs == sum(expected_macs.values())
    assert summary.linear_macs == 288_000 + 1_600_000 + 400_000 + 5_000
    assert by_name["conv2"].output_shape == (None, 8, 8, 50)
    assert summary.unknown_macs == []


@pytest.mark.parametrize(
    "layer, input_shape",
    [
        (keras.layers.Conv2D(4, 3, strides=2, use_bias=False), (15, 13, 3)),
        (keras.layers.Conv2D(4, 3, dilation_rate=2, use_bias=False), (15, 15, 3)),
        (keras.layers.Conv2D(6, (3, 2), groups=2, use_bias=False), (9, 9, 4)),
        (keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False), (10, 10, 3)),
        (keras.layers.Conv1D(5, 3, strides=2, use_bias=False), (20, 4)),
        (keras.layers.Dense(7, use_bias=False), (5, 6, 3)),
    ],
    ids=["conv_stride", "conv_dilation", "conv_groups", "depthwise_dm2", "conv1d", "dense_3d"],
)
def test_macs_equal_output_sum_of_all_ones_layer(layer, input_shape):
    expected = ones_sum_macs(layer, input_shape)
    model = keras.Sequential([keras.Input(input_shape), layer])
    assert summarize(model).macs == expected > 0


def test_conv_same_padding_stride_and_depthwise_by_formula():
    inputs = keras.Input((15, 13, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(5, strides=1, padding="same", depth_multiplier=3, name="dw")(x)
    model = keras.Model(inputs, x)
    by_name = rows(summarize(model))
    oh, ow = conv_out(15, 3, 2, "same"), conv_out(13, 3, 2, "same")
    assert (oh, ow) == (8, 7)
    assert by_name["conv"].macs == oh * ow * 8 * 3 * 3 * 3
    assert by_name["conv"].params == 3 * 3 * 3 * 8 + 8
    assert by_name["dw"].macs == oh * ow * (8 * 3) * 5 * 5
    assert by_name["dw"].params == 5 * 5 * 8 * 3 + 8 * 3
    assert by_name["dw"].output_shape == (None, 8, 7, 24)


def test_separable_conv_is_depthwise_plus_pointwise():
    shape = (12, 12, 4)
    sep = keras.Sequential([keras.Input(shape), keras.layers.SeparableConv2D(6, 3, depth_multiplier=2, strides=2)])
    split = keras.Sequential(
        [
            keras.Input(shape),
            keras.layers.DepthwiseConv2D(3, depth_multiplier=2, strides=2, use_bias=False),
            keras.layers.Conv2D(6, 1),
        ]
    )
    out = conv_out(12, 3, 2)
    expected = out * out * 4 * 2 * 9 + out * out * (4 * 2) * 6
    assert summarize(sep).macs == expected == summarize(split).macs
    assert summarize(sep).params == 9 * 4 * 2 + 4 * 2 * 6 + 6 == summarize(split).params


def test_pooling_bn_add_concat_conventions_on_residual_cnn():
    by_name = rows(summarize(residual_cnn()))
    assert by_name["stem_bn"].macs == 32 * 32 * 8  # one multiply-add per output element
    assert by_name["res_add"].macs == 32 * 32 * 8  # two inputs: one add per element
    assert by_name["concat"].macs == 0
    assert by_name["pool"].macs == 16 * 16 * 16 * 2 * 2  # output elements x window
    assert by_name["gap"].macs == 16 * 16 * 16  # input elements
    assert by_name["res_dw"].macs == 32 * 32 * 8 * 9
    assert by_name["stem_bn"].kind == "norm" and by_name["res_dw"].kind == "conv"
    # BN: gamma, beta, moving mean, moving variance (all count, as in count_params).
    assert by_name["stem_bn"].params == 4 * 8


def test_nested_models_rows_shared_calls_and_shape_propagation():
    inner = keras.Sequential(
        [keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3, name="conv"), keras.layers.GlobalAveragePooling2D(name="gap")],
        name="inner",
    )
    mid_in = keras.Input((10, 10, 3))
    mid = keras.Model(mid_in, keras.layers.Dense(5, name="fc")(inner(mid_in)), name="mid")

    a = keras.Input((10, 10, 3), name="a")
    b = keras.Input((10, 10, 3), name="b")
    merged = keras.layers.Add(name="add")([mid(a), mid(b)])  # `mid` is shared: two calls
    outer = keras.Model([a, b], keras.layers.Dense(2, name="head")(merged), name="outer")

    summary = summarize(outer)
    by_name = rows(summary)
    assert set(by_name) == {"mid/inner/conv", "mid/inner/gap", "mid/fc", "add", "head"}
    conv = by_name["mid/inner/conv"]
    # The inner model was built for any size; the outer call fixes 10x10 -> 8x8.
    assert conv.output_shape == (None, 8, 8, 4)
    assert conv.calls == 2
    assert conv.macs == 2 * (8 * 8 * 4 * 27)
    assert conv.params == 27 * 4 + 4  # shared weights counted once
    assert by_name["mid/fc"].macs == 2 * 4 * 5
    assert summary.params == outer.count_params()
    assert summary.unknown_macs == []


def test_nested_sequential_with_fixed_shapes_matches_flat_model():
    block = keras.Sequential(
        [keras.Input((8, 8, 2)), keras.layers.Conv2D(3, 3, padding="same", name="c"), keras.layers.BatchNormalization(name="bn")],
        name="block",
    )
    inputs = keras.Input((8, 8, 2))
    nested = keras.Model(inputs, keras.layers.Flatten()(block(inputs)))
    flat = keras.Sequential(
        [keras.Input((8, 8, 2)), keras.layers.Conv2D(3, 3, padding="same"), keras.layers.BatchNormalization(), keras.layers.Flatten()]
    )
    s_nested, s_flat = summarize(nested), summarize(flat)
    assert [r.name for r in s_nested.layers][:2] == ["block/c", "block/bn"]
    assert (s_nested.params, s_nested.macs) == (s_flat.params, s_flat.macs)


def test_sparsity_after_zeroing_half_a_kernel():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="fc")])
    layer = model.get_layer("fc")
    kernel = np.random.default_rng(0).normal(size=(6, 4)).astype("float32") + 5.0  # no zeros
    kernel[:3] = 0.0  # 12 of 24 entries
    layer.set_weights([kernel, np.ones(4, dtype="float32")])
    summary = summarize(model)
    row = rows(summary)["fc"]
    assert row.params == 28
    assert row.nonzero_params == 28 - 12
    assert row.sparsity == pytest.approx(12 / 28)
    assert summary.sparsity == pytest.approx(12 / 28)


@keras.saving.register_keras_serializable(package="tfcompress_tests")
class MaskedDense(keras.layers.Layer):
    """A test layer using the metrics protocol: effective weights are kernel * mask."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="ones")
        self.mask = self.add_weight(shape=(input_shape[-1], self.units), initializer="ones", trainable=False)

    def call(self, x):
        return keras.ops.matmul(x, self.kernel * self.mask)

    def tfcompress_effective_weights(self):
        return [keras.ops.convert_to_numpy(self.kernel * self.mask)]

    def tfcompress_macs(self, input_shape, output_shape):
        nonzero = int(np.count_nonzero(self.tfcompress_effective_weights()[0]))
        return int(np.prod(input_shape[1:-1])) * nonzero  # a sparse kernel skips the zeros

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_layer_protocol_for_effective_weights_and_macs():
    model = keras.Sequential([keras.Input((3, 4)), MaskedDense(5, name="masked")])
    layer = model.get_layer("masked")
    mask = np.ones((4, 5), dtype="float32")
    mask[0] = 0.0
    layer.mask.assign(mask)
    row = rows(summarize(model))["masked"]
    assert row.params == 20  # the mask is not counted as parameters
    assert row.nonzero_params == 15
    assert row.macs == 3 * 15


def test_wrapper_counts_as_its_inner_layer():
    model = keras.Sequential(
        [keras.Input((4, 6)), keras.layers.TimeDistributed(keras.layers.Dense(3), name="td")]
    )
    assert rows(summarize(model))["td"].macs == 4 * 6 * 3


def test_unknown_layers_are_listed_not_guessed():
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4, name="lstm")])
    summary = summarize(model)
    assert rows(summary)["lstm"].macs is None
    assert summary.unknown_macs == ["lstm"]
    assert "lstm" in summary.table()


def test_to_dict_is_json_and_table_is_aligned():
    summary = summarize(lenet5_caffe())
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["params"] == 431_080
    assert data["layers"][0]["output_shape"] == [None, 24, 24, 20]
    assert data["linear_macs"] == summary.linear_macs
    table = str(summary)
    lines = table.splitlines()
    total_line = next(line for line in lines if line.startswith("Total"))
    assert "431,080" in total_line and "2,307,720" in total_line
    header = lines[1]
    conv_line = next(line for line in lines if line.startswith("conv1 "))
    # Right-aligned numeric columns end at the same place as their headers.
    assert conv_line.index("288,000") + len("288,000") == header.index("MACs") + len("MACs")


def test_bad_input_errors():
    with pytest.raises(TfcompressError, match="keras.Model"):
        summarize(keras.layers.Dense(3))
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(TfcompressError, match="not built"):
        summarize(unbuilt)


def test_mobilenet_v2_035_224_matches_published_macs():
    # Sandler et al. 2018 / TF-slim table: MobileNetV2 0.35 at 224x224 has 59M multiply-adds.
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(224, 224, 3), weights=None)
    summary = summarize(model)
    assert abs(summary.linear_macs - 59e6) < 0.5e6
    assert summary.params == model.count_params()
    assert summary.unknown_macs == []


def test_tflite_summary_macs_equal_keras_linear_macs(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    lenet = lenet5_caffe()
    # Non-zero biases, then half of fc1's kernel zeroed: the zeros of the float export must be
    # exactly those 200,000.
    for layer in lenet.layers:
        for w in layer.weights:
            w.assign(rng.uniform(0.1, 1.0, w.shape).astype("float32"))
    fc1_kernel = lenet.get_layer("fc1").kernel
    fc1_kernel.assign(np.where(np.arange(800)[:, None] < 400, 0.0, fc1_kernel.numpy()).astype("float32"))
    results = {}
    for model in (lenet, residual_cnn()):
        data = convert_batch1(model)
        path = tmp_path / f"{model.name}.tflite"
        path.write_bytes(data)
        keras_summary = summarize(model)
        tfl = summarize_tflite(path)
        assert tfl["size_bytes"] == len(data)
        assert 0 < tfl["gzip_size_bytes"] < len(data) + 100
        assert tfl["macs"] == keras_summary.linear_macs
        assert tfl["macs_exact"]
        by_kind = keras_summary.macs_by_kind()
        tfl_conv = tfl["macs_by_op"].get("CONV_2D", 0) + tfl["macs_by_op"].get("DEPTHWISE_CONV_2D", 0)
        assert tfl_conv == by_kind["conv"]
        assert tfl["macs_by_op"]["FULLY_CONNECTED"] == by_kind["dense"]
        assert tfl["num_ops"] == sum(tfl["ops"].values())
        assert summarize_tflite(data)["macs"] == tfl["macs"]  # bytes work too
        results[model.name] = (keras_summary, tfl)
    lenet_keras, lenet_tfl = results["lenet5_caffe"]
    # Float export keeps every kernel and bias (plus a few int32 shape constants).
    assert lenet_keras.params - lenet_keras.nonzero_params == 400 * 500
    assert lenet_tfl["weight_elements"] >= lenet_keras.params
    # weight_zeros also counts zeros of int32 shape/index constants: check the float ones exactly.
    assert 400 * 500 <= lenet_tfl["weight_zeros"] <= 400 * 500 + 8
    tfl_model = load_tflite(tmp_path / "lenet5_caffe.tflite")
    float_zeros = sum(
        int(np.count_nonzero(tfl_model.constant_values(t) == 0))
        for t in tfl_model.tensors[0]
        if t.constant and t.dtype == "FLOAT32"
    )
    assert float_zeros == 400 * 500
    # BatchNormalization folds into the convolutions: no BN op, same conv MACs.
    _, residual_tfl = results["residual_cnn"]
    assert residual_tfl["ops"]["DEPTHWISE_CONV_2D"] == 1
    assert residual_tfl["ops"]["CONV_2D"] == 4


def test_tflite_macs_of_dynamic_batch_export_are_flagged():
    # Dense on a 3-D input with a dynamic batch: TFLite reshapes to [-1, 6] and stores 1 for -1.
    model = keras.Sequential([keras.Input((5, 6)), keras.layers.Dense(7)])
    dynamic = summarize_tflite(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    assert not dynamic["macs_exact"]
    static = summarize_tflite(convert_batch1(model))
    assert static["macs_exact"]
    assert static["macs"] == summarize(model).linear_macs == 5 * 6 * 7


def test_tflite_summary_rejects_corrupted_file(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(TfcompressError, match="TFL3"):
        summarize_tflite(bad)


def test_int8_export_summary_matches_keras(trained_lenet, lenet_int8_path):
    tfl = summarize_tflite(lenet_int8_path)
    keras_summary = summarize(trained_lenet)
    assert tfl["macs"] == keras_summary.linear_macs == 2_293_000
    assert tfl["int8_coverage"] == 1.0
    # int8 weights: a quarter of the float32 parameter bytes, plus int32 biases and metadata.
    assert tfl["size_bytes"] < 0.3 * 4 * keras_summary.params


def test_functional_ops_and_subclassed_models():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="fc")(inputs)
    outputs = keras.ops.relu((hidden + hidden) * 2.0)
    by_name = rows(summarize(keras.Model(inputs, outputs)))
    elementwise = [r for r in by_name.values() if r.kind == "elementwise"]
    assert sorted(r.class_name for r in elementwise) == ["Add", "Multiply"]
    assert all(r.macs == 3 for r in elementwise)  # one op per output element each

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(name="sub")
            self.conv = keras.layers.Conv2D(4, 3, name="conv")
            self.pool = keras.layers.GlobalAveragePooling2D(name="gap")
            self.fc = keras.layers.Dense(2, name="fc")

        def call(self, x):
            return self.fc(self.pool(self.conv(x)))

    model = Subclassed()
    model(np.zeros((2, 8, 8, 3), dtype="float32"))
    sub_rows = rows(summarize(model))
    assert sub_rows["conv"].macs == 6 * 6 * 4 * 27
    assert sub_rows["conv"].output_shape == (None, 6, 6, 4)
    assert sub_rows["fc"].macs == 4 * 2
    assert summarize(model).params == model.count_params()
