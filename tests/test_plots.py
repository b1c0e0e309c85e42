"""tfcompress.plots: PNGs written atomically from measured values; the docstring examples run."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import tfcompress.plots as plots
from tfcompress.errors import TfcompressError
from tfcompress.uncertainty.metrics import reliability_diagram, selective_prediction

matplotlib = pytest.importorskip("matplotlib")
from matplotlib import image  # noqa: E402


def _read(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return image.imread(path)


def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), 300)
    written = plots.reliability_plot({"a": reliability_diagram(probs, y)}, tmp_path / "r.png", title="t")
    assert _read(written).shape[0] > 100
    assert _read(plots.rejection_plot({"a": selective_prediction(probs, y)}, tmp_path / "c.png")).ndim == 3
    rows = [{"model": "a", "bytes": 10, "NLL": 0.5}, {"model": "b", "bytes": 30, "NLL": 0.3},
            {"model": "c", "bytes": 40, "NLL": 0.6}, {"model": "d", "bytes": "n/a", "NLL": 0.1}]
    assert _read(plots.pareto_plot(rows, "bytes", "NLL", tmp_path / "p.png", log_x=True)).ndim == 3
    with pytest.raises(TfcompressError, match="no row has numbers"):
        plots.pareto_plot(rows, "bytes", "missing", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "p.png", "r.png"]  # no temporary left


def test_docstring_examples_run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(plots, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 6 and result.failed == 0
