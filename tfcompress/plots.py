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

__all__ = ["layer_error_plot", "op_bytes_plot", "pareto_plot", "rejection_plot", "reliability_plot"]


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


def layer_error_plot(report, path: str | os.PathLike, *, title: str = "") -> str:
    """Where a quantized file loses accuracy: SNR of every op output in op order, max error in LSB.

    The per-layer error chart of `tfcompress.export.compare` (``tfcompress inspect FILE --compare
    REFERENCE --samples S --plot PNG``): bars are each op output's signal-to-noise ratio in dB
    against the float reference (low is bad), the line its largest error in LSB of its own scale.

    Args:
        report: a `tfcompress.export.ComparisonReport` (anything with ``.layers`` of `LayerError`).
        path: the PNG to write.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import compare, to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, activation="relu"), keras.layers.Dense(3)])
        >>> x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
        >>> _ = to_tflite(model, "int8.tflite", "int8", representative_data=x)
        >>> layer_error_plot(compare(model, "int8.tflite", x[:8]), "/tmp/layer_error.png")
        '/tmp/layer_error.png'
    """
    layers = list(getattr(report, "layers", ()))
    if not layers:
        raise TfcompressError("the comparison has no layer to plot", "layer_error_plot",
                              "compare files that share op outputs (tfcompress.export.compare)")
    finite = [lay.snr_db for lay in layers if np.isfinite(lay.snr_db)]
    ceiling = (max(finite) if finite else 60.0) + 10.0  # an exact tensor (SNR inf) drawn above the rest
    snr = [lay.snr_db if np.isfinite(lay.snr_db) else ceiling for lay in layers]
    labels = [f"#{lay.op_index} {lay.op}" for lay in layers]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(layers) + 2), 4))
    positions = np.arange(len(layers))
    ax.bar(positions, snr, color=["C2" if not np.isfinite(lay.snr_db) else "C0" for lay in layers])
    ax.set_ylabel("SNR (dB, higher is better)")
    ax.set_xticks(positions, labels, rotation=90, fontsize=6)
    lsb = ax.twinx()
    lsb.plot(positions, [lay.max_abs_error_lsb for lay in layers], color="C3", marker=".", linewidth=1)
    lsb.set_ylabel("max |error| (LSB)", color="C3")
    ax.set_title(title or f"per-layer error, {getattr(report, 'num_samples', '?')} sample(s)")
    ax.grid(axis="y", alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def op_bytes_plot(model, path: str | os.PathLike, *, title: str = "") -> str:
    """Where a `.tflite` file's bytes are: the constant bytes each op reads, coloured by their type.

    ``tfcompress inspect FILE --plot PNG`` draws it; a tensor shared by several ops counts once,
    at the first op that reads it.

    Args:
        model: a `tfcompress.export.TFLiteModel` (`load_tflite`).
        path: the PNG to write.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import load_tflite, to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6), keras.layers.Dense(3)])
        >>> x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
        >>> _ = to_tflite(model, "int8.tflite", "int8", representative_data=x)
        >>> op_bytes_plot(load_tflite("int8.tflite"), "/tmp/op_bytes.png")
        '/tmp/op_bytes.png'
    """
    bars = _op_constant_bytes(model)
    if not bars:
        raise TfcompressError("the file has no op to plot", "op_bytes_plot", "pass a converted .tflite file")
    dtypes = sorted({d for _, by_type in bars for d in by_type})
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(bars) + 2), 4))
    positions = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    for k, dtype in enumerate(dtypes):
        heights = np.array([by_type.get(dtype, 0) for _, by_type in bars], dtype=float)
        ax.bar(positions, heights, bottom=bottom, color=f"C{k}", label=dtype)
        bottom += heights
    ax.set_xticks(positions, [name for name, _ in bars], rotation=90, fontsize=6)
    ax.set_ylabel("constant bytes")
    ax.set_title(title or f"{model.size_bytes:,} bytes in the file, {int(bottom.sum()):,} in constants")
    if dtypes:
        ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def _op_constant_bytes(model) -> list[tuple[str, dict[str, int]]]:
    """Per op, in order: its label and the bytes of the constants it is the first to read, by type."""
    seen: set[tuple[int, int]] = set()
    bars: list[tuple[str, dict[str, int]]] = []
    for op in model.ops:
        by_type: dict[str, int] = {}
        for i in op.inputs:
            if i < 0 or (op.subgraph, i) in seen:
                continue
            t = model.tensor(i, op.subgraph)
            if t.constant and t.nbytes:
                seen.add((op.subgraph, i))
                by_type[t.dtype.lower()] = by_type.get(t.dtype.lower(), 0) + t.nbytes
        bars.append((f"#{op.index} {op.name}", by_type))
    return bars
