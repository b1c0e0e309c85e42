"""benchmarks/figures.py: every benchmark table in RESULTS.md has a plot drawn from its JSON (issue 23).

Each registered figure function runs on the committed results JSON (into tmp_path); a results
JSON with rows but neither a registered function nor figures of its own fails, so a new benchmark
cannot land without its plot. Nothing here imports tfcompress (TensorFlow): a few seconds in all.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
from matplotlib import image  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RESULTS = sorted((BENCHMARKS / "results").glob("*.json"))


def _load(name: str):
    """A benchmarks/ script as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"_benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


figures = _load("figures")


def _valid_png(path: Path) -> None:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    pixels = image.imread(path)
    assert pixels.shape[0] > 150 and pixels.shape[1] > 150, (path, pixels.shape)
    assert pixels.std() > 0.01, f"{path} is blank"
    assert path.stat().st_size < 150_000, f"{path} is {path.stat().st_size} bytes: committed PNGs stay small"


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_every_results_table_has_a_plot(path, tmp_path):
    payload = json.loads(path.read_text())
    if not payload["rows"]:
        pytest.skip("no rows, no table")
    if payload["name"] in figures.FIGURES:
        drawn = figures.draw(payload, tmp_path)
        assert drawn and all(p.parent == tmp_path for p in drawn)
        for png in drawn:
            _valid_png(png)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in drawn)  # no temporary left
        # the committed JSON lists them (python benchmarks/figures.py), so RESULTS.md shows them
        assert payload["figures"] == [p.name for p in drawn]
    else:  # a benchmark that draws its own (uncertainty: from predictions the JSON does not keep)
        assert payload["figures"], (f"{path.name} has rows but no figure: register one in "
                                    "benchmarks/figures.py FIGURES")
    for name in payload["figures"]:
        _valid_png(path.parent / name)


def _columns(script: str, constant: str) -> list[str]:
    """A list literal assigned at a benchmark script's top level, read without running the script."""
    tree = ast.parse((BENCHMARKS / script).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == constant for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{script} has no {constant}")


def test_zoo_figures_read_bench_zoo_columns_and_skip_errors(tmp_path):
    # no committed 10/11_zoo JSON yet: check the functions against bench_zoo.py's columns, on rows
    # shaped as its workers write them (a failed worker leaves only "net" and "error")
    assert set(figures.ZOO_STRUCTURE_READS) <= set(_columns("bench_zoo.py", "STRUCTURE_COLUMNS"))
    assert set(figures.ZOO_TRAINED_READS) <= set(_columns("bench_zoo.py", "TRAINED_COLUMNS"))
    structure = {
        "name": "10_zoo_structure", "title": "zoo structure", "columns": _columns("bench_zoo.py", "STRUCTURE_COLUMNS"),
        "rows": [{"net": "ResNet-8", "int8 size (bytes)": 94440, "pruned int8 size (bytes)": 31984,
                  "MAC ratio": 0.261, "latency ratio": 0.342},
                 {"net": "DenseNet121", "int8 size (bytes)": 8_300_000, "error": "channel prune: ValueError"},
                 {"net": "NASNetMobile", "error": "timeout after 3600 s"}]}
    trained = {
        "name": "11_zoo_trained", "title": "zoo trained", "columns": _columns("bench_zoo.py", "TRAINED_COLUMNS"),
        "rows": [{"net": "ResNet-8", "float accuracy": 0.81, "PTQ int8 (LiteRT)": 0.80, "QAT int8 (LiteRT)": 0.81,
                  "pruned 50% + QAT int8 (LiteRT)": "error: ValueError: x", "tfmot QAT int8 (LiteRT)": "n/a"},
                 {"net": "DS-CNN", "error": "exit 1: killed"}]}
    for payload in (structure, trained):
        (png,) = figures.draw(payload, tmp_path)
        assert png.name == f"{payload['name']}.png"
        _valid_png(png)


def test_cells_that_are_not_numbers_are_left_out():
    assert [figures._num(v) for v in (1, 0.5, None, "n/a", "error: x", True, math.nan, math.inf)] == [
        1.0, 0.5, None, None, None, None, None, None]


def test_set_figures_changes_only_the_figures_field(tmp_path):
    original = BENCHMARKS / "results" / "fuzz_census.json"
    copy = tmp_path / original.name
    shutil.copy(original, copy)
    before = json.loads(original.read_text())
    assert figures.set_figures(copy, ["a.png", "b.png"])
    after = json.loads(copy.read_text())
    assert after == {**before, "figures": ["a.png", "b.png"]}
    assert not figures.set_figures(copy, ["a.png", "b.png"])  # unchanged: not rewritten
    figures.set_figures(copy, before["figures"])
    assert copy.read_text() == original.read_text()  # every other field byte for byte
    assert [p.name for p in tmp_path.iterdir()] == [copy.name]  # no temporary file left


def test_harness_draws_registered_figures_when_a_benchmark_passes_none(tmp_path, capsys):
    harness = _load("harness")
    payload = json.loads((BENCHMARKS / "results" / "03b_pruning_overhead.json").read_text())
    assert harness.registered_figures(payload, tmp_path) == [tmp_path / "03b_pruning_overhead.png"]
    _valid_png(tmp_path / "03b_pruning_overhead.png")
    assert harness.registered_figures({**payload, "name": "not_registered"}, tmp_path) == []
    # a figure that cannot be drawn is reported, and the benchmark keeps its results
    assert harness.registered_figures({**payload, "rows": [{"library": "x"}]}, tmp_path) == []
    assert "no figure drawn" in capsys.readouterr().out
