"""Edge TPU readiness report: documented rules on real converted models, and the compiler log."""

from __future__ import annotations

import os
import stat

import keras
import numpy as np
import pytest

from tfcompress.errors import InvalidModelFileError, TfcompressError
from tfcompress.export.convert import to_tflite
from tfcompress.export.edgetpu import (
    MODELS_INTRO,
    SUPPORTED_OPS,
    edgetpu_report,
    parse_compiler_log,
)
from tfcompress.export.tflite_file import load_tflite

# The format the compiler prints with -s (https://coral.ai/docs/edgetpu/compiler/).
COMPILER_LOG = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 120 ms.

Input model: model.tflite
Input size: 440.23KiB
Output model: model_edgetpu.tflite
Output size: 512.10KiB
On-chip memory used for caching model parameters: 430.00KiB
On-chip memory remaining for caching model parameters: 7.29MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 6
Operation log: model_edgetpu.log

Operator                       Count      Status

FULLY_CONNECTED                1          Mapped to Edge TPU
FULLY_CONNECTED                1          More than one subgraph is not supported
CONV_2D                        2          Mapped to Edge TPU
MAX_POOL_2D                    2          Mapped to Edge TPU
Number of operations that will run on Edge TPU: 5
Number of operations that will run on CPU: 1
"""


def _small(x_shape=(12, 12, 1), middle=None):
    inputs = keras.Input(x_shape)
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    if middle is not None:
        h = middle(h)
    h = keras.layers.Conv2D(4, 3, activation="relu")(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def _export(model, path, **kwargs):
    x = np.random.default_rng(0).random((16, *model.input_shape[1:]), dtype=np.float32)
    to_tflite(model, path, "int8", x, **kwargs)
    return path


def test_full_int8_lenet_is_ready_and_every_op_maps(lenet_int8_path):
    report = edgetpu_report(lenet_int8_path, compiler="off")
    parsed = load_tflite(lenet_int8_path)
    assert report.mode == "static" and report.compiler is None
    assert report.ready, report.text()
    assert report.tpu_ops == len(parsed.ops) and report.cpu_ops == 0
    assert all(c.passed for c in report.checks if c.severity == "error")
    assert report.parameter_bytes == sum(t.nbytes for t in parsed.tensors[0] if t.constant)
    assert "static report" in " ".join(report.notes)
    assert report.one_line().startswith("ready")
    d = report.to_dict()
    assert d["ready"] is True and d["tpu_ops"] == len(parsed.ops)
    # every rule cites the Coral page it comes from
    assert all(c.source.startswith("https://coral.ai/docs/edgetpu/") for c in report.checks)


def test_float_model_fails_quantization_and_names_first_cpu_op(lenet_float_path):
    report = edgetpu_report(lenet_float_path, compiler="off")
    assert not report.ready
    quantized = next(c for c in report.checks if c.rule == "quantized")
    assert not quantized.passed and "CONV_2D" in quantized.detail
    first = load_tflite(lenet_float_path).ops[0]
    assert report.first_cpu_op == f"{first.name}#{first.index}"
    assert report.ops[0].reason.startswith("not 8-bit quantized")
    assert all(v.runs_on == "cpu" for v in report.ops)
    assert "not ready" in report.one_line()


def test_unsupported_op_partitions_the_graph_once(tmp_path):
    model = _small(middle=keras.layers.LeakyReLU(0.1))
    path = _export(model, tmp_path / "leaky.tflite")
    names = [op.name for op in load_tflite(path).ops]
    assert "LEAKY_RELU" in names and "LEAKY_RELU" not in SUPPORTED_OPS
    report = edgetpu_report(path, compiler="off")
    leaky = names.index("LEAKY_RELU")
    assert not report.ready
    assert report.first_cpu_op == f"LEAKY_RELU#{leaky}"
    assert [v.runs_on for v in report.ops[:leaky]] == ["edgetpu"] * leaky
    # the CONV_2D after it is supported, but runs on the CPU: one partition point only
    after = report.ops[leaky + 1]
    assert after.op == "CONV_2D" and after.runs_on == "cpu" and after.reason.startswith("after")
    check = next(c for c in report.checks if c.rule == "supported-ops")
    assert not check.passed and "LEAKY_RELU" in check.detail
    assert MODELS_INTRO in check.source


def test_dynamic_batch_fails_static_shapes(tmp_path):
    path = _export(_small(), tmp_path / "dyn.tflite", batch_size=None)
    report = edgetpu_report(path, compiler="off")
    static = next(c for c in report.checks if c.rule == "static-shapes")
    assert not static.passed and "batch_size=1" in static.detail
    assert not report.ready


def test_batch_4_breaks_the_three_innermost_dimensions_rule(tmp_path):
    path = _export(_small(), tmp_path / "b4.tflite", batch_size=4)
    report = edgetpu_report(path, compiler="off")
    batch = next(c for c in report.checks if c.rule == "batch-1")
    assert not batch.passed
    assert "3 innermost" in report.ops[0].reason and report.ops[0].runs_on == "cpu"


def test_documented_limitation_dilation_and_softmax(tmp_path):
    inputs = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(4, 3, dilation_rate=(1, 2), activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))
    path = _export(model, tmp_path / "dil.tflite")
    conv = next(v for v in edgetpu_report(path, compiler="off").ops if v.op == "CONV_2D")
    assert conv.runs_on == "cpu" and "dilation" in conv.reason


def test_compiler_log_parser():
    run = parse_compiler_log(COMPILER_LOG)
    assert run.version == "16.0.384591198" and run.success
    assert run.tpu_op_count == 5 and run.cpu_op_count == 1
    assert run.on_chip_memory == "430.00KiB" and run.off_chip_memory == "0.00B"
    assert {"op": "CONV_2D", "count": 2, "status": "Mapped to Edge TPU"} in run.ops
    assert sum(r["count"] for r in run.ops) == 6
    assert not parse_compiler_log("Invalid model: model.tflite\n", 1).success


def test_compiler_on_path_is_run_and_its_log_replaces_static_verdicts(lenet_int8_path, tmp_path, monkeypatch):
    # A stand-in for the compiler binary (not available on this machine): it checks the
    # arguments our runner passes and prints the documented log format.
    fake = tmp_path / "bin" / "edgetpu_compiler"
    fake.parent.mkdir()
    log = tmp_path / "log.txt"
    log.write_text(COMPILER_LOG)
    fake.write_text(f'#!/bin/sh\n[ "$1" = "-s" ] && [ "$2" = "-o" ] && [ -f "$4" ] || exit 3\ncat {log}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    report = edgetpu_report(lenet_int8_path)
    assert report.mode == "compiler" and report.compiler.version == "16.0.384591198"
    fc = [v for v in report.ops if v.op == "FULLY_CONNECTED"]
    assert [v.runs_on for v in fc] == ["edgetpu", "cpu"]
    assert "More than one subgraph" in fc[1].reason
    assert not report.ready and "compiler log" in report.text()


def test_required_compiler_missing_is_a_clear_error(lenet_int8_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TfcompressError, match="edgetpu_compiler is not on PATH"):
        edgetpu_report(lenet_int8_path, compiler="required")
    with pytest.raises(TfcompressError, match="unknown compiler mode"):
        edgetpu_report(lenet_int8_path, compiler="sometimes")


def test_malformed_file_rejected_before_analysis(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(InvalidModelFileError):
        edgetpu_report(bad)
