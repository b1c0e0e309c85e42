"""The structured report of prune, quantize, bayesian.convert and to_tflite (issue 23): what each
step changed, what it left alone with the reason and the fix; one table, or JSON."""

from __future__ import annotations

import json
import logging

import keras
import numpy as np
import pytest

import tfcompress
from tfcompress import bayesian
from tfcompress.export import to_tflite
from tfcompress.pruning import ConstantSparsity
from tfcompress.report import CompressionReport


def cnn() -> keras.Model:
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, name="conv")(x)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Conv2DTranspose(2, 3, name="deconv")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(6, activation="sigmoid", name="fc")(h)
    return keras.Model(x, keras.layers.Dense(3, name="head")(h))


def test_prune_reports_every_layer_with_weights_and_logs_it_once(caplog):
    with caplog.at_level(logging.INFO, logger="tfcompress"):
        pruned = tfcompress.prune(cnn(), ConstantSparsity(0.5, 0), granularity="channel")
    report = pruned.compression_report
    assert [(r.layer, r.action) for r in report.rows] == [
        ("conv", "pruned"), ("bn", "masked"), ("deconv", "skipped"), ("fc", "pruned"), ("head", "skipped")]
    assert "model outputs" in report.row("head").reason and "granularity='weight'" in report.row("head").fix
    assert "Conv2DTranspose layers are not supported" in report.row("deconv").reason
    assert report.row("deconv").important and not report.row("head").important
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.WARNING
    table = caplog.records[0].getMessage()
    assert table.splitlines()[0] == "prune: 3 layers changed, 2 left alone"
    assert all(name in table for name in ("conv", "bn", "deconv", "fc", "head"))
    # the report stays out of the model's config and weights: a .keras round trip is unchanged
    assert "compression_report" not in json.dumps(pruned.get_config())


def test_quantize_reports_folding_fusing_ranges_and_float_layers(tmp_path):
    model = cnn()
    qat = tfcompress.quantize(model, skip_layers=["deconv"], verbose=0)
    rows = {r.layer: r for r in qat.compression_report.rows}
    assert rows["conv"].action == "quantized" and "bn folded" in rows["conv"].reason and "relu fused" in rows["conv"].reason
    assert (rows["bn"].action, rows["relu"].action) == ("folded", "fused")
    assert rows["deconv"].action == "skipped" and "allow_float_fallback=True" in rows["deconv"].fix
    assert rows["head"].action == "quantized" and "flat" not in rows  # Flatten passes int8 through
    data = json.loads(qat.compression_report.to_json())
    assert data["step"] == "quantize" and data["skipped"] == 1
    qat.save(tmp_path / "qat.keras")
    again = keras.saving.load_model(tmp_path / "qat.keras")
    assert not hasattr(again, "compression_report")  # attached to the returned object only


def test_bayesian_convert_reports_gates_and_the_layers_without_one():
    sbp = bayesian.convert(cnn(), "sbp", dataset_size=64, verbose=0)
    rows = {r.layer: r for r in sbp.compression_report.rows}
    assert rows["conv"].action == "converted" and "after its BatchNormalization" in rows["conv"].reason
    assert rows["fc"].action == "skipped" and "'sigmoid'" in rows["fc"].reason
    assert rows["head"].action == "skipped" and "model outputs" in rows["head"].reason
    vd = bayesian.convert(cnn(), "sparse_vd", dataset_size=64, layers=["conv"], verbose=0)
    rows = {r.layer: r for r in vd.compression_report.rows}
    assert rows["conv"].reason == "to VariationalConv2D" and rows["fc"].reason == "not in layers="


def test_to_tflite_reports_op_kinds_and_the_ops_left_in_float(tmp_path):
    x = keras.Input((4,))
    h = keras.layers.Dense(3, name="fc")(x)
    model = keras.Model(x, keras.layers.Lambda(lambda t: keras.ops.floor(t), name="floor")(h))  # no int8 FLOOR
    data = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    report = to_tflite(model, tmp_path / "m.tflite", "int8", representative_data=data, allow_float_fallback=True)
    layers = report.layers
    assert [r.action for r in layers.changed] and all(r.action == "int8" for r in layers.changed)
    assert layers.skipped and all(r.important for r in layers.skipped)
    assert {r.layer for r in layers.skipped} == set(report.float_ops)
    assert report.to_dict()["layers"]["skipped"] == len(report.float_ops)
    plain = to_tflite(model, tmp_path / "f.tflite", None)
    assert {r.action for r in plain.layers.rows} == {"float32"} and not plain.layers.skipped


def test_report_table_and_json_round_trip():
    report = CompressionReport("prune")
    report.add("a", "Dense", "pruned", "granularity weight")
    report.add("b", "LSTM", "skipped", "not supported", "replace it", important=True)
    report.notes.append("one note")
    text = str(report)
    assert text.splitlines()[0] == "prune: 1 layer changed, 1 left alone"
    assert text.splitlines()[-1] == "  note: one note"
    header = text.splitlines()[1]
    assert header.split() == ["layer", "type", "action", "reason", "fix"]
    again = json.loads(report.to_json(indent=2))
    assert again["rows"][1] == {"layer": "b", "type": "LSTM", "action": "skipped", "reason": "not supported",
                                "fix": "replace it", "important": True}
    with pytest.raises(KeyError):
        report.row("c")
