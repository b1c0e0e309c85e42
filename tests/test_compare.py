"""tfcompress.export.compare (issue 22): per-layer SNR / cosine / LSB error of an int8 file
against its float reference, on real LiteRT, checked against a NumPy computation."""

from __future__ import annotations

import json
import math

import flatbuffers
import numpy as np
import pytest

from tfcompress.cli import main
from tfcompress.export import compare, to_tflite
from tfcompress.export.compare import CompareError
from tfcompress.export.runtime import ModelRunner, quantize
from tfcompress.export.tflite_file import load_tflite


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """A small CNN, its float32 file, a well-calibrated int8 file and one calibrated on a 20x
    too small input range."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((12, 12, 1)),
        keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
        keras.layers.MaxPooling2D(name="p1"),
        keras.layers.Conv2D(8, 3, activation="relu", name="c2"),
        keras.layers.Flatten(name="f"),
        keras.layers.Dense(16, activation="relu", name="d1"),
        keras.layers.Dense(5, name="d2"),
    ])
    x = np.random.default_rng(0).uniform(0, 1, (48, 12, 12, 1)).astype(np.float32)
    root = tmp_path_factory.mktemp("compare")
    paths = {k: root / f"{k}.tflite" for k in ("float", "good", "bad")}
    to_tflite(model, paths["float"], None)
    to_tflite(model, paths["good"], "int8", representative_data=x)
    to_tflite(model, paths["bad"], "int8", representative_data=x[:16] * 0.05)
    np.savez(root / "calib.npz", x=x[:16])
    return model, x[:24], paths, root


def _conv_fc_ops(path) -> set[int]:
    return {op.index for op in load_tflite(path).ops if op.name in ("CONV_2D", "FULLY_CONNECTED")}


def test_every_conv_and_fc_output_is_reported_with_high_snr(cnn):
    model, x, paths, _ = cnn
    report = compare(model, paths["good"], x)  # the Keras reference, converted to float32 here
    reported = {layer.op_index for layer in report.layers}
    assert _conv_fc_ops(paths["good"]) <= reported and len(_conv_fc_ops(paths["good"])) == 4
    assert report.unmatched == [] and report.num_samples == len(x)
    for layer in report.layers:
        assert math.isfinite(layer.snr_db) and layer.snr_db > 20, layer
        assert layer.cosine > 0.99 and layer.matched_by == "name"
        assert 0 < layer.mean_abs_error_lsb < layer.max_abs_error_lsb < 8
    # the float file gives the same numbers as the Keras model it was converted from
    from_file = compare(paths["float"], paths["good"], x)
    assert [lay.snr_db for lay in from_file.layers] == [lay.snr_db for lay in report.layers]


def test_bad_calibration_drops_the_snr(cnn):
    _, x, paths, _ = cnn
    good = compare(paths["float"], paths["good"], x)
    bad = compare(paths["float"], paths["bad"], x)
    assert {lay.op_index for lay in bad.layers} >= _conv_fc_ops(paths["bad"])
    assert max(lay.snr_db for lay in bad.layers) < min(lay.snr_db for lay in good.layers) - 20
    assert bad.worst(1)[0].snr_db < 10 and bad.worst(1)[0].max_abs_error_lsb > 100


def test_numbers_equal_an_independent_numpy_computation(cnn):
    _, x, paths, _ = cnn
    report = compare(paths["float"], paths["good"], x)
    int8, ref = load_tflite(paths["good"]), load_tflite(paths["float"])
    op = next(o for o in int8.ops if o.name == "CONV_2D")
    t = int8.tensor(op.outputs[0])
    r_index = next(u.index for u in ref.tensors[0] if u.name == t.name)
    runner = ModelRunner(paths["good"], delegate="none", preserve_all_tensors=True)
    ref_runner = ModelRunner(paths["float"], delegate="none", preserve_all_tensors=True)
    scale, zero_point = runner.input_details[0]["quantization"]
    got, want = [], []
    for sample in x:
        runner.interpreter.set_tensor(runner.input_details[0]["index"], quantize(sample[None], np.int8, scale, zero_point))
        runner.interpreter.invoke()
        got.append(runner.interpreter.get_tensor(t.index).astype(np.float64))
        ref_runner.interpreter.set_tensor(ref_runner.input_details[0]["index"], sample[None])
        ref_runner.interpreter.invoke()
        want.append(ref_runner.interpreter.get_tensor(r_index).astype(np.float64))
    s, z = t.quantization.scales[0], t.quantization.zero_points[0]
    q, r = (np.stack(got) - z) * s, np.stack(want)
    layer = next(lay for lay in report.layers if lay.op_index == op.index)
    assert layer.snr_db == pytest.approx(10 * np.log10(np.sum(r**2) / np.sum((q - r) ** 2)), rel=1e-9)
    assert layer.cosine == pytest.approx(np.sum(q * r) / np.linalg.norm(q) / np.linalg.norm(r), rel=1e-12)
    assert layer.max_abs_error_lsb == pytest.approx(np.abs(q - r).max() / s, rel=1e-9)
    assert layer.mean_abs_error_lsb == pytest.approx(np.abs(q - r).mean() / s, rel=1e-9)
    assert layer.scale == s and layer.zero_point == z


def test_unnamed_tensors_are_matched_in_op_order(cnn, tmp_path):
    """Names stripped from the int8 file: every tensor is paired by op type, position and shape."""
    from ai_edge_litert import schema_py_generated as schema

    _, x, paths, _ = cnn
    m = schema.ModelT.InitFromPackedBuf(bytearray(paths["good"].read_bytes()), 0)
    for i, t in enumerate(m.subgraphs[0].tensors):
        t.name = f"t{i}"
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    (tmp_path / "renamed.tflite").write_bytes(bytes(builder.Output()))
    by_order = compare(paths["float"], tmp_path / "renamed.tflite", x)
    by_name = compare(paths["float"], paths["good"], x)
    assert {lay.matched_by for lay in by_order.layers} == {"order"}
    assert [(lay.op_index, lay.reference_tensor, lay.snr_db) for lay in by_order.layers] == [
        (lay.op_index, lay.reference_tensor, lay.snr_db) for lay in by_name.layers]


def test_worst_text_and_dict(cnn):
    _, x, paths, _ = cnn
    report = compare(paths["float"], paths["bad"], x[:4])
    worst = report.worst(3)
    assert len(worst) == 3 and [w.snr_db for w in worst] == sorted(w.snr_db for w in report.layers)[:3]
    rows = report.text().splitlines()[2:]
    assert len(rows) == len(report.layers) and rows[0].split()[0] == f"#{worst[0].op_index}"
    payload = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert len(payload["layers"]) == len(report.layers) and payload["num_samples"] == 4


def test_bad_inputs_are_compare_errors(cnn):
    _, x, paths, _ = cnn
    with pytest.raises(CompareError, match="no float op outputs"):
        compare(paths["good"], paths["bad"], x)
    with pytest.raises(CompareError, match="no quantized integer op outputs"):
        compare(paths["float"], paths["float"], x)
    with pytest.raises(CompareError, match="do not fit the input"):
        compare(paths["float"], paths["good"], x[:, :10])
    with pytest.raises(CompareError, match="neither a Keras model"):
        compare(object(), paths["good"], x)


def test_cli_inspect_compare(cnn, capsys):
    _, _, paths, root = cnn
    calib = str(root / "calib.npz")
    # the default runs the interpreters in a child process
    assert main(["inspect", str(paths["good"]), "--compare", str(paths["float"]), "--samples", calib, "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["compare"]["layers"]
    assert {lay["op_index"] for lay in layers} >= _conv_fc_ops(paths["good"])
    assert all(lay["snr_db"] > 20 for lay in layers)
    assert main(["inspect", str(paths["bad"]), "--compare", str(paths["float"]), "--samples", calib,
                 "--in-process"]) == 0
    assert "worst first" in capsys.readouterr().out
    assert main(["inspect", str(paths["good"]), "--compare", str(paths["float"])]) == 1
    assert "--compare needs --samples" in capsys.readouterr().err


def test_cli_inspect_plot(cnn, capsys, tmp_path):
    """`inspect --plot`: the per-layer error chart with --compare, the bytes per op without; both PNGs."""
    pytest.importorskip("matplotlib")
    from tfcompress.plots import _op_constant_bytes

    _, _, paths, root = cnn
    errors, sizes = tmp_path / "errors.png", tmp_path / "bytes.png"
    assert main(["inspect", str(paths["bad"]), "--compare", str(paths["float"]), "--samples",
                 str(root / "calib.npz"), "--in-process", "--plot", str(errors), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plot"] == str(errors)
    assert main(["inspect", str(paths["good"]), "--plot", str(sizes)]) == 0
    assert f"plot           {sizes}" in capsys.readouterr().out
    for png in (errors, sizes):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # the bars are the file's own constants: every weight and bias byte, each counted once
    model = load_tflite(paths["good"])
    bars = _op_constant_bytes(model)
    assert [label for label, _ in bars] == [f"#{op.index} {op.name}" for op in model.ops]
    assert sum(sum(b.values()) for _, b in bars) == model.weight_stats()["weight_bytes"]
    conv = next(b for label, b in bars if label.endswith("CONV_2D"))
    assert set(conv) == {"int8", "int32"}  # int8 filter, int32 bias
    # a plot the user asked for and cannot get is an error, not a silent skip
    assert main(["inspect", str(paths["good"]), "--plot", str(tmp_path / "missing" / "x.png")]) == 1
    assert not (tmp_path / "missing").exists()
