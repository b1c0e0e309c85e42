"""PNG plots of compression trade-offs and calibration (the optional ``[plot]`` extra, matplotlib).

Each function takes measured values (the benchmarks' rows, `tfcompress.uncertainty.metrics`
results) and writes one PNG atomically; none of them computes a metric itself.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import numpy as np

from tfcompress._io import write_bytes_atomic
from tfcompress.errors import TfcompressError

__all__ = ["pareto_plot", "rejection_plot", "reliability_plot"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise TfcompressError("plots need matplotlib, which is not installed", "tfcompress.plots",
                              'pip install "tfcompress[plot]" (or pip install matplotlib)') from None
    matplotlib.use("Agg", force=False)  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_bytes_atomic(path, buffer.getvalue())
    return os.fspath(path)


def reliability_plot(diagrams: Mapping[str, object], path: str | os.PathLike, *, title: str = "") -> str:
    """Reliability diagrams (Guo et al. 2017, fig. 1): accuracy against confidence per bin.

    Args:
        diagrams: name -> `tfcompress.uncertainty.metrics.ReliabilityDiagram`.
        path: the PNG to write.

    Example:
        >>> from tfcompress.uncertainty.metrics import reliability_diagram
        >>> d = reliability_diagram([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]], [0, 1, 1])
        >>> reliability_plot({"model": d}, "/tmp/reliability.png")
        '/tmp/reliability.png'
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    for name, d in diagrams.items():
        used = np.asarray(d.counts) > 0
        ax.plot(np.asarray(d.confidence)[used], np.asarray(d.accuracy)[used], marker="o", markersize=3,
                label=f"{name} (ECE {d.ece:.3f})")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(fontsize=7, loc="upper left")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def rejection_plot(curves: Mapping[str, object], path: str | os.PathLike, *, title: str = "",
                   max_rejection: float = 0.5) -> str:
    """Accuracy of the kept inputs against the fraction rejected (most uncertain first).

    Args:
        curves: name -> `tfcompress.uncertainty.metrics.SelectiveCurve`.
        path: the PNG to write.
        max_rejection: the right end of the x axis.

    Example:
        >>> from tfcompress.uncertainty.metrics import selective_prediction
        >>> c = selective_prediction([[0.9, 0.1], [0.6, 0.4]], [0, 1])
        >>> rejection_plot({"model": c}, "/tmp/rejection.png")
        '/tmp/rejection.png'
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in curves.items():
        keep = np.asarray(c.rejection) <= max_rejection
        ax.plot(np.asarray(c.rejection)[keep], np.asarray(c.accuracy)[keep], linewidth=1.2, label=name)
    ax.set(xlabel="fraction rejected", ylabel="accuracy of the rest", xlim=(0, max_rejection), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def pareto_plot(rows: Sequence[Mapping], x: str, y: str, path: str | os.PathLike, *, label: str = "model",
                title: str = "", log_x: bool = False) -> str:
    """One point per row (``row[x]``, ``row[y]``), labelled by ``row[label]``, the non-dominated ones joined.

    Lower is better on both axes (size, NLL, latency); pass the negated accuracy or use a
    column where lower is better.

    Example:
        >>> rows = [{"model": "a", "bytes": 10, "NLL": 0.5}, {"model": "b", "bytes": 30, "NLL": 0.3}]
        >>> pareto_plot(rows, "bytes", "NLL", "/tmp/pareto.png")
        '/tmp/pareto.png'
    """
    points = [(float(r[x]), float(r[y]), str(r[label])) for r in rows
              if isinstance(r.get(x), int | float) and isinstance(r.get(y), int | float)]
    if not points:
        raise TfcompressError(f"no row has numbers in both {x!r} and {y!r}", "pareto_plot",
                              "pass the benchmark's rows and two of its numeric columns")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=18)
    for px, py, name in points:
        ax.annotate(name, (px, py), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front, best = [], float("inf")
    for px, py, _ in sorted(points):
        if py < best:
            front.append((px, py))
            best = py
    ax.plot([p[0] for p in front], [p[1] for p in front], color="C1", linewidth=1, label="Pareto front")
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=x, ylabel=y, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
