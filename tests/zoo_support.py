"""The zoo's steps, shared by tests/test_zoo.py and tests/test_zoo_applications.py.

Random weights (``weights=None``), small inputs, BatchNormalization statistics re-estimated on
random data (random nets otherwise shrink their activations to nothing), a few samples. The nets
are split over two test files of similar cost so that ``pytest -n 2 --dist loadfile`` (the
README's test command) runs them side by side; select both with ``pytest -m zoo``.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_qat import tflm_predict

import tfcompress
from tfcompress import bayesian
from tfcompress.batchnorm import recalibrate_batchnorm
from tfcompress.export import edgetpu_report, to_micro, to_tflite
from tfcompress.export.runtime import ModelRunner
from tfcompress.pruning import ConstantSparsity, prune, pruning_summary, strip, update_masks
from tfcompress.quantization import kernel_arithmetic
from tfcompress.zoo import ZOO

NETS = ["resnet8", "ds_cnn", "mobilenet_v1", "fc_autoencoder", "mobilenet_v2", "mobilenet_v3_small",
        "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_b0", "resnet50_v2", "densenet121",
        "nasnet_mobile"]
# the largest nets go through the structural step only (trace, groups, exact shrink), so the zoo
# stays within minutes; benchmarks/survey_zoo.py takes them through every step
HEAVY = {"resnet50_v2", "densenet121", "nasnet_mobile", "mobilenet_v3_large", "efficientnet_v2_b0"}
# inputs in 0..255 for the nets that rescale them themselves
RAW_PIXELS = {"mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_b0"}

_CACHE: dict[str, tuple] = {}


def built(name):
    """(model, calibration data) for ``name``, built once per test session."""
    if name not in _CACHE:
        import keras

        keras.utils.set_random_seed(0)
        model = ZOO[name](**({"input_shape": (96, 96, 3)} if name == "mobilenet_v1" else {}))
        shape = model.input_shape[1:]
        high = 255.0 if name in RAW_PIXELS else 1.0
        x = np.random.default_rng(0).uniform(0, high, (16, *shape)).astype("float32")
        recalibrate_batchnorm(model, x)
        _CACHE[name] = (model, x)
    return _CACHE[name]


def same(a, b, x, atol=1e-5):
    # one eager call each: predict() would trace a tf.function per model, tens of seconds for
    # the large QAT and pruned graphs, to run four samples once
    np.testing.assert_allclose(np.asarray(a(x, training=False)), np.asarray(b(x, training=False)), atol=atol)


def ptq_int8_micro_and_edgetpu(name, tmp_path):
    model, x = built(name)
    path = tmp_path / f"{name}.tflite"
    # the FC autoencoder is all Dense: TFLM's FULLY_CONNECTED rounds twice where LiteRT's
    # reference kernel rounds once, so it is exported with Dense as 1x1 CONV_2D (NOTES.md)
    report = to_tflite(model, path, "int8", representative_data=x, dense_as_conv=name == "fc_autoencoder")
    assert report.int8_coverage == 1.0
    micro = to_micro(path, tmp_path / "micro", name="model", num_samples=2)
    assert micro.identical, micro.op_differences[:3]
    assert micro.arena_total_bytes > 0
    tpu = edgetpu_report(path, compiler="auto")
    assert tpu.tpu_ops + tpu.cpu_ops == report.num_ops


def channel_pruning_and_shrink_are_exact(name, tmp_path):
    model, x = built(name)
    pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel")
    update_masks(pruned, 0)
    summary = pruning_summary(pruned)
    small, report = tfcompress.shrink(pruned, return_report=True)
    same(small, strip(pruned), x[:4])
    assert report.macs_ratio > 1.5, report.text()
    for layer, (before, after) in report.channels.items():
        assert after >= 1, layer
        if layer in summary:
            assert after == before - summary[layer]["removable_channels"], layer
    if name in HEAVY:
        return
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    import keras

    reloaded = keras.saving.load_model(path)
    same(reloaded, pruned, x[:4], atol=1e-6)
    export = to_tflite(small, tmp_path / "small.tflite", "int8", representative_data=x)
    assert export.int8_coverage == 1.0


def two_four_pruning_exports_to_int8(name, tmp_path):
    model, x = built(name)
    pruned = prune(model, ConstantSparsity(0.5, 0), granularity="2:4")
    update_masks(pruned, 0)
    export = to_tflite(strip(pruned), tmp_path / "nm.tflite", "int8", representative_data=x)
    assert export.int8_coverage == 1.0


def qat_with_the_nets_own_head(name, tmp_path):
    model, x = built(name)
    qat = tfcompress.quantize(model)
    qat(x, training=True)  # ranges from one batch of 16 (an eager call costs per op, not per sample)
    path = tmp_path / "qat.tflite"
    export = to_tflite(qat, path, "int8")
    assert export.int8_coverage == 1.0
    # exported exactly: the file's output levels equal the QAT model's on LiteRT's reference
    # kernels and TFLM, and on XNNPACK with the QAT model in XNNPACK's arithmetic
    reference = np.asarray(qat(x[:4], training=False))
    with kernel_arithmetic("xnnpack"):
        xnnpack = np.asarray(qat(x[:4], training=False))
    runner = ModelRunner(path)
    scale = runner.output_details[0]["quantization"][0]
    for kernels, got, expected in (
        ("LiteRT reference", ModelRunner(path, reference_kernels=True).predict(x[:4]), reference),
        ("TFLM", tflm_predict(path, x[:4], arena_size=8_000_000), reference),
        ("LiteRT XNNPACK", runner.predict(x[:4]), xnnpack),
    ):
        lsb = np.abs(got.reshape(expected.shape) - expected) / scale
        # LiteRT's reference FULLY_CONNECTED requantizes in double with one rounding, TFLM's (and
        # the QAT model) in fixed point with two: an all-Dense net is within 1 LSB there (NOTES.md)
        bound = 1.001 if kernels == "LiteRT reference" and name == "fc_autoencoder" else 0.5
        assert (lsb < bound).mean() == 1.0, (kernels, (lsb < 0.5).mean(), lsb.max())
    import keras

    qat.save(tmp_path / "qat.keras")
    reloaded = keras.saving.load_model(tmp_path / "qat.keras")
    same(reloaded, qat, x[:4], atol=1e-6)


def bayesian_prune_to_and_shrink(name):
    model, x = built(name)
    converted = bayesian.convert(model, "dirichlet", dataset_size=1000)
    structure = bayesian.structure(converted)
    assert structure
    bayesian.prune_to(converted, {layer: max(1, info["total"] // 2) for layer, info in structure.items()})
    plain = bayesian.strip(converted)
    small, report = tfcompress.shrink(plain, return_report=True)
    same(small, plain, x[:4])
    assert report.macs_ratio > 1.2


def tests_for(nets: list[str]) -> dict:
    """The zoo's test functions for ``nets`` (a test file puts them in its globals for pytest)."""
    light = [n for n in nets if n not in HEAVY]

    @pytest.mark.parametrize("name", light)
    def test_ptq_int8_micro_and_edgetpu(name, tmp_path):
        ptq_int8_micro_and_edgetpu(name, tmp_path)

    @pytest.mark.parametrize("name", nets)
    def test_channel_pruning_and_shrink_are_exact(name, tmp_path):
        channel_pruning_and_shrink_are_exact(name, tmp_path)

    @pytest.mark.parametrize("name", light)
    def test_two_four_pruning_exports_to_int8(name, tmp_path):
        two_four_pruning_exports_to_int8(name, tmp_path)

    @pytest.mark.parametrize("name", light)
    def test_qat_with_the_nets_own_head(name, tmp_path):
        qat_with_the_nets_own_head(name, tmp_path)

    @pytest.mark.parametrize("name", light)
    def test_bayesian_prune_to_and_shrink(name):
        bayesian_prune_to_and_shrink(name)

    tests = (test_ptq_int8_micro_and_edgetpu, test_channel_pruning_and_shrink_are_exact,
             test_two_four_pruning_exports_to_int8, test_qat_with_the_nets_own_head, test_bayesian_prune_to_and_shrink)
    return {t.__name__: t for t in tests}
