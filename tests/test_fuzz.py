"""Untrusted .tflite files: a seeded fuzz run through every command, and the isolation behind it.

The census (benchmarks/fuzz_census.py) runs thousands of mutants; this runs a few hundred of the
same mutator's, fast enough for the normal suite. Each command runs in a worker process
(`tfcompress.export.isolation.Child`) with a 4 GiB address-space limit and a timeout, so a crash,
a hang or a memory blow-up is counted here instead of ending pytest.
"""

from __future__ import annotations

import collections
import re
import tempfile
from pathlib import Path

import fuzzing
import numpy as np
import pytest

from tfcompress.cli import main as cli_main
from tfcompress.errors import InvalidModelFileError
from tfcompress.export.flatbuffer import schema_tables, verify_flatbuffer
from tfcompress.export.isolation import (
    Child,
    InterpreterCrashError,
    find_crashing_op,
    prefix_model,
    run_isolated,
)
from tfcompress.export.micro import MicroError
from tfcompress.export.tflite_file import load_tflite

TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture(scope="module")
def tiny():
    return fuzzing.cached_base_models()


def test_mutator_is_deterministic_and_makes_single_edits(tiny):
    data = tiny["conv_int8"]
    first = list(fuzzing.mutants(data, 40, seed=3))
    again = list(fuzzing.mutants(data, 40, seed=3))
    assert [m.data for m in first] == [m.data for m in again]
    assert [m.data for m in fuzzing.mutants(data, 40, seed=4)] != [m.data for m in first]
    assert all(m.data != data for m in first)
    assert {m.kind for m in first} == {"site", "byte", "semantic"}
    for m in first:  # an in-place edit changes at most one field (8 bytes)
        if m.kind in ("site", "byte"):
            assert len(m.data) == len(data)
            changed = [i for i, (a, b) in enumerate(zip(m.data, data, strict=True)) if a != b]
            assert changed and changed[-1] - changed[0] < 8, m.edit


def test_the_schema_is_read_from_the_generated_reader():
    tables = schema_tables()
    assert len(tables) > 150  # every option table of this LiteRT release
    operator = {f.name: f for f in tables["Operator"]}
    assert operator["inputs"].kind == "vector" and operator["inputs"].fmt == "<i"
    assert operator["builtin_options"].kind == "union" and dict(operator["builtin_options"].union)[1] == "Conv2DOptions"
    assert {f.name: f for f in tables["Model"]}["subgraphs"].table == "SubGraph"


def test_flatbuffer_verifier_agrees_with_litert_on_structural_mutants(tiny):
    """LiteRT's interpreter runs the C++ verifier flatc generates from the schema: on in-place edits,
    ours must reject exactly the files it rejects (it protects TFLite Micro, which runs none)."""
    agree = collections.Counter()
    child = Child(extra_path=[TESTS])
    try:
        for name in ("conv_int8", "dense_float_io"):
            for mutant in fuzzing.mutants(tiny[name], 60, seed=11, weights=(0.7, 0.3, 0.0)):
                try:
                    verify_flatbuffer(mutant.data)
                    ours = False
                except InvalidModelFileError:
                    ours = True
                status, theirs = child.call("fuzzing:litert_verifier_rejects", (mutant.data,), timeout=60)
                if status != "result":  # died after its verifier passed (building the interpreter)
                    child.close()
                    child = Child(extra_path=[TESTS])
                    theirs = False
                agree[(ours, theirs)] += 1
                assert ours == theirs, (name, mutant.edit, ours, theirs)
    finally:
        child.close()
    assert agree[(True, True)] > 20 and agree[(False, False)] > 20, agree


def test_a_few_hundred_mutants_crash_no_command(tiny):
    """200 mutants through load_tflite, inspect, edgetpu, micro, bench and evaluate: every one either
    works or is rejected with one error line and exit 1; no crash, traceback, hang or memory blow-up."""
    outcomes = collections.Counter()
    problems = []
    child = Child(memory_limit=4 * 2**30, extra_path=[TESTS])
    workdir = Path(tempfile.mkdtemp(prefix="tfcompress_fuzz_test_"))
    try:
        for m_index, name in enumerate(fuzzing.BASE_MODELS):
            for mutant in fuzzing.mutants(tiny[name], 50, seed=100 + m_index):
                path = workdir / "mutant.tflite"
                path.write_bytes(mutant.data)
                for command in fuzzing.COMMANDS:
                    status, value = child.call("fuzzing:run_command", (command, str(path), str(workdir)), timeout=30)
                    if status != "result":
                        problems.append((name, mutant.edit, command, status, value, child.last_phase))
                        child.close()
                        child = Child(memory_limit=4 * 2**30, extra_path=[TESTS])
                        continue
                    outcomes[(command, value["outcome"])] += 1
                    if value["outcome"] == "traceback" or (value["outcome"] == "rejected" and not value["format"]):
                        problems.append((name, mutant.edit, command, value["outcome"], value.get("message")))
    finally:
        child.close()
    assert not problems, problems[:5]
    assert outcomes[("load_tflite", "rejected")] > 100 and outcomes[("load_tflite", "ok")] > 20, outcomes
    assert outcomes[("micro", "ok")] > 10 and outcomes[("bench", "ok")] > 10, outcomes


# ----------------------------------------------------------------------------- isolation


def _filter_absent(data: bytes) -> bytes:
    """conv_int8 with CONV_2D's filter set to -1: XNNPACK dereferences it (SIGSEGV) when unverified."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    model.subgraphs[0].operators[0].inputs = np.array([0, -1, 3], np.int32)
    return fuzzing.repack(model)


def test_isolated_calls_return_values_and_raise_tfcompress_errors():
    assert run_isolated("math:factorial", (5,), where="<test>") == 120
    with pytest.raises(MicroError) as caught:
        run_isolated("tfcompress.export.micro:check_c_identifier", ("1bad",), where="<test>")
    assert caught.value.where == "name" and "not a valid C identifier" in caught.value.what


def test_a_native_crash_in_the_child_is_one_error_naming_the_op(tiny):
    bad = _filter_absent(tiny["conv_int8"])
    with pytest.raises(InvalidModelFileError, match="CONV_2D#0 input 1 is -1"):
        load_tflite(bad)
    # the probe runs the file without the verifier: the crash is LiteRT's own
    with pytest.raises(InterpreterCrashError) as caught:
        run_isolated("tfcompress.export.isolation:probe", (bad, "litert:xnnpack"), where="bad.tflite",
                     models={"bad.tflite": bad})
    error = caught.value
    assert error.reason == "signal" and error.signal_name == "SIGSEGV" and error.op == "CONV_2D#0"
    assert error.engine == "litert:xnnpack" and error.step == "allocate"
    text = str(error)
    assert "\n" not in text and text.startswith("bad.tflite: LiteRT (XNNPACK) crashed (SIGSEGV")
    assert "in op CONV_2D#0 while allocating tensors" in text
    # the prefix the bisection ends on: the model cut after that op still crashes, cut before it would not
    assert find_crashing_op(prefix_model(bad, 1), "litert:xnnpack") == "CONV_2D#0"


def test_a_hang_and_a_memory_blow_up_in_the_child_are_errors():
    with pytest.raises(InterpreterCrashError, match=r"did not finish within 1 s") as caught:
        run_isolated("time:sleep", (60,), where="slow.tflite", timeout=1)
    assert caught.value.reason == "timeout"
    with pytest.raises(InterpreterCrashError, match=r"ran out of memory \(limit 1 GiB\)") as caught:
        run_isolated("builtins:bytearray", (3 * 2**30,), where="big.tflite", memory_limit=2**30)
    assert caught.value.reason == "memory"


def test_cli_runs_interpreters_in_a_child_by_default(tiny, tmp_path, capsys):
    path = tmp_path / "conv.tflite"
    path.write_bytes(tiny["conv_float_io"])
    for extra in ([], ["--in-process"]):
        assert cli_main(["bench", str(path), "--runs", "3", "--warmup", "1", "--quiet", *extra]) == 0
        assert "conv.tflite" in capsys.readouterr().out
        assert cli_main(["micro", str(path), "-o", str(tmp_path / f"m{len(extra)}"), "--quiet", *extra]) == 0
        assert "IDENTICAL" in capsys.readouterr().out
    from tfcompress.export import evaluate

    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    y = np.arange(16) % 3
    alone, isolated = evaluate(path, x, y), evaluate(path, x, y, isolate=True)
    assert alone.accuracy == isolated.accuracy and np.array_equal(alone.outputs, isolated.outputs)
    # a rejection is raised before any child starts, as in process
    (tmp_path / "bad.tflite").write_bytes(_filter_absent(tiny["conv_int8"]))
    assert cli_main(["bench", str(tmp_path / "bad.tflite"), "--runs", "2"]) == 1
    assert re.search(r"CONV_2D#0 input 1 is -1", capsys.readouterr().err)


def test_dynamic_batch_files_load_and_tflm_refuses_placeholder_shapes(tmp_path):
    # The converter stores 1 for each -1 of a dynamic batch, so a Dense on a 3-D input has a
    # RESHAPE whose stored shapes hold different counts: the file is valid (LiteRT recomputes
    # the shapes on resize). TFLM cannot resize: a file with any dynamic tensor is refused.
    import flatbuffers
    import keras
    import tensorflow as tf
    from ai_edge_litert import schema_py_generated as schema

    from tfcompress.export import to_micro, to_tflite

    model = keras.Sequential([keras.Input((5, 6)), keras.layers.Dense(7)])
    path = tmp_path / "dynamic.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    assert any(t.dynamic_dims for t in load_tflite(path).tensors[0])

    static = tmp_path / "static.tflite"
    to_tflite(keras.Sequential([keras.Input((6,)), keras.layers.Dense(7)]), static, "int8",
              representative_data=np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32))
    tree = schema.ModelT.InitFromPackedBuf(bytearray(static.read_bytes()), 0)
    output = tree.subgraphs[0].tensors[tree.subgraphs[0].outputs[0]]
    output.shapeSignature = np.array([-1, 7], dtype=np.int32)
    builder = flatbuffers.Builder(1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    marked = tmp_path / "marked.tflite"
    marked.write_bytes(bytes(builder.Output()))
    with pytest.raises(MicroError, match="dynamic dimensions"):
        to_micro(marked, tmp_path / "micro")
    assert not (tmp_path / "micro").exists()
