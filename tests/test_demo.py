"""The README's main job, on the small built-in default (scikit-learn digits)."""

from __future__ import annotations

import json

from tfcompress.demo import run_demo


def test_demo_runs_the_whole_road_on_digits(tmp_path):
    messages: list[str] = []
    result = run_demo(out_dir=str(tmp_path / "demo"), dataset="digits", epochs=2, runs=20, log=messages.append)
    assert result["dataset"] == "digits"
    assert result["passed"], result
    assert result["int8_coverage"] == 1.0
    # TFLM equals LiteRT's reference kernels, or the ops that differ are named (at most 1 LSB)
    assert result["tflm_identical_to_litert_reference"] or (
        result["tflm_max_diff_lsb"] == 1 and result["tflm_ops_that_differ"]
    )
    assert result["tflm_arena_bytes"] > 0
    assert result["keras_accuracy"] > 0.8  # two epochs learn the 8x8 digits
    assert abs(result["tflite_int8_accuracy"] - result["keras_accuracy"]) <= 0.02
    assert result["int8_size_ratio"] < 0.35
    written = {p.name for p in (tmp_path / "demo").rglob("*") if p.is_file()}
    assert {"model.keras", "model_float32.tflite", "model_int8.tflite", "results.json", "model_pruned_qat_int8.tflite",
            "model_model_data.cc", "model_model_data.h", "model_op_resolver.h"} <= written
    assert json.loads((tmp_path / "demo" / "results.json").read_text()) == result
    compressed = result["compressed"]  # prune channels + shrink + QAT, exported from the learned ranges
    assert compressed["macs"] < result["macs"] and compressed["macs_ratio"] > 1.5
    assert compressed["int8_coverage"] == 1.0 and compressed["tflm_max_diff_lsb"] <= 1
    assert compressed["int8_top1_agreement_with_qat"] >= 0.97
    assert compressed["tflite_int8_accuracy"] > 0.7
    assert any("TFLite Micro" in m for m in messages) and "PASS" in messages[-1]


def test_readme_commands_install_what_they_run():
    """The README's two fresh-machine commands: the demo's extras carry the TFLM interpreter and
    the digits fallback; .ci/run runs the README's test command as written."""
    import re
    from pathlib import Path

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    demo = re.search(r'pip install -e "\.\[([\w,]+)\]" && tfcompress demo', readme)
    assert demo, "README has no demo command"
    needed = {"tflite-micro", "scikit-learn"}
    have = {re.split(r"[<>=!~ ]", req)[0] for name in demo.group(1).split(",") for req in extras[name]}
    assert needed <= have, needed - have
    test_command = re.search(r"^(python -m pip install (?:-c constraints-newest\.txt )?-e \"\.\[test(?:,int4)?\]\" && .+pytest.*)$",
                             readme, re.M)
    assert test_command and test_command.group(1) in (root / ".ci" / "run").read_text()


def test_demo_command_prints_its_progress_and_results(tmp_path):
    """`tfcompress demo` as a user runs it: the results table reaches the terminal (native
    TensorFlow chatter on fd 2 is hidden, Python's own output is not)."""
    import subprocess
    import sys

    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "tfcompress.cli", "demo", "--dataset", "digits", "--epochs", "1",
         "--runs", "5", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode in (0, 1), result.stderr
    summary = json.loads((out / "results.json").read_text())
    assert ("PASS" if summary["passed"] else "FAIL") in result.stdout
    assert "[1/6]" in result.stdout and "TFLite Micro" in result.stdout, result.stdout
    assert "fully_quantize" not in result.stdout + result.stderr  # converter chatter stays hidden
    assert result.returncode == (0 if summary["passed"] else 1)
