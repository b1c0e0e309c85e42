"""One PNG per benchmark table, drawn from the numbers in its results JSON (issue 23).

``FIGURES`` maps a results name (``benchmarks/results/NAME.json``) to a function
``(payload, out_dir) -> [PNG paths]`` that plots that table's rows and nothing else: a cell that
is not a finite number (``None``, "n/a", an error message) is left out, never filled in.
`harness.record` calls `draw` when a benchmark passes no figures of its own, so every rerun
redraws its plot; a benchmark that draws its own (uncertainty: reliability diagrams from the
predictions, which the JSON does not keep) is not registered here.

    python benchmarks/figures.py    # redraw every registered table's PNG from the committed
                                    # JSONs, list them in each JSON, re-render RESULTS.md + README

This module does not import tfcompress: importing it loads TensorFlow (~10 s on the 2-core
machine), and drawing a PNG from a JSON, or testing that it can, needs none of it.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
DPI = 100  # a few tens of KB per PNG: they are committed beside the JSONs

Payload = dict[str, Any]
FigureFunction = Callable[[Payload, Path], list[Path]]
# distinct (colour, marker) per row in the trade-off plots: hollow markers, so rows at the same
# point (same file size, different accuracy by a hair) stay visible on top of each other
_MARKERS = "osD^v<>phX*P"


# ------------------------------------------------------------------------------ helpers


def _num(value: Any) -> float | None:
    """A cell as a float, or None when it is no finite number (n/a, an error, a bool, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _short(label: Any, width: int = 40) -> str:
    """A row's label for a legend or an axis: without its parenthesised details, at most ``width`` chars."""
    text = str(label)
    cut = text.find(" (")
    text = text[:cut] if cut > 0 else text
    return text if len(text) <= width else text[: width - 1] + "…"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it: a reader never sees half a file.

    (tfcompress._io does the same, but importing tfcompress loads TensorFlow; see the module docstring.)
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a committed file from other users
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    plt = _pyplot()
    path = Path(out_dir) / f"{name}.png"
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    _write_atomic(path, buffer.getvalue())
    return [path]


def _no_rows(payload: Payload, what: str) -> ValueError:
    return ValueError(f"{payload.get('name')}: no row has numbers for {what}")


def _log_axis(axis) -> None:
    """Label a log axis (after its data are drawn) 20, 30, 50, 100 ... rather than 2 x 10^1, with
    fewer ticks per decade the more decades it spans, so that the labels never run together."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = sorted(axis.get_view_interval())
    decades = math.log10(high / low) if low > 0 else 3.0
    subs = (1.0, 2.0, 3.0, 5.0) if decades <= 1.5 else (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)
    axis.set_major_locator(LogLocator(subs=subs, numticks=50))  # numticks: no thinning; subs does it
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,g}"))
    axis.set_minor_formatter(NullFormatter())


def _error_rows(fig, rows: list[dict], label: str) -> None:
    """Name, under the figure, the rows with an error cell, so a net missing from the plot is explained."""
    failed = [_short(r.get(label)) for r in rows if r.get("error")]
    if failed:
        fig.text(0.01, -0.02, "error rows (their missing numbers: see the table): " + ", ".join(failed), fontsize=7,
                 va="top", color="C3")


def _tradeoff(axes: Sequence, rows: list[dict], label: str, y: str, xs: Sequence[tuple[str, str, float, bool]],
              *, ylabel: str) -> list[dict]:
    """Per axis, ``row[y]`` (higher is better) against one cost column (lower is better), one
    marker per row, the rows no other row beats on both joined (the Pareto front).

    ``xs``: (column, axis label, divisor, log scale) per axis, e.g. bytes shown in KB. Returns the rows drawn.
    """
    drawn = [r for r in rows if _num(r.get(y)) is not None and any(_num(r.get(x[0])) is not None for x in xs)]
    style = {id(r): (f"C{i % 10}", _MARKERS[i % len(_MARKERS)]) for i, r in enumerate(drawn)}
    for ax, (column, xlabel, divisor, log) in zip(axes, xs, strict=True):
        points = [(_num(r.get(column)) / divisor, _num(r[y]), r) for r in drawn if _num(r.get(column)) is not None]
        for px, py, r in points:
            colour, marker = style[id(r)]
            ax.scatter([px], [py], s=36, marker=marker, facecolors="none", edgecolors=colour, linewidths=1.3,
                       label=_short(r[label]))
        front, best = [], -math.inf
        for px, py, _ in sorted(points, key=lambda p: (p[0], -p[1])):
            if py > best:
                front.append((px, py))
                best = py
        ax.plot([p[0] for p in front], [p[1] for p in front], color="0.55", linewidth=0.8, zorder=0)
        if log:
            ax.set_xscale("log")
            _log_axis(ax.xaxis)
        ax.set(xlabel=xlabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(ylabel)  # the panels share it (sharey)
    return drawn


def _row_legend(fig, axes: Sequence) -> None:
    """One legend for all panels (the same rows in each), below them."""
    handles, labels = {}, []
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            if text not in handles:
                handles[text] = handle
                labels.append(text)
    fig.legend([handles[t] for t in labels], labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=2 if len(labels) > 4 else len(labels), fontsize=7, frameon=False)


def _grouped_bars(ax, groups: list[str], series: dict[str, list[float | None]], *, horizontal: bool = False,
                  annotate: dict[str, list[str]] | None = None) -> None:
    """Bars per group, one per series side by side; a None value draws no bar (not a zero).

    ``annotate``: per series, a text per group written at the end of its bar.
    """
    import numpy as np

    width = 0.8 / max(1, len(series))
    base = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        where = base + (i - (len(series) - 1) / 2) * width
        known = [(p, v) for p, v in zip(where, values, strict=True) if v is not None]
        if not known:
            continue
        at, heights = zip(*known, strict=True)
        bars = (ax.barh if horizontal else ax.bar)(at, heights, width, label=name, color=f"C{i}")
        texts = (annotate or {}).get(name)
        if texts:
            shown = [t for t, v in zip(texts, values, strict=True) if v is not None]
            ax.bar_label(bars, shown, fontsize=6, padding=1)
    if horizontal:
        ax.set_yticks(base, groups, fontsize=7)
        ax.invert_yaxis()  # the table's first row on top, as in the table
    else:
        ax.set_xticks(base, groups, fontsize=7, rotation=20, ha="right")


# ------------------------------------------------------------------------------ one function per table


def export_figure(payload: Payload, out_dir: Path) -> list[Path]:
    """Export table: each .tflite file's size and gzip size, and its LiteRT latency relative to the
    float32 file on XNNPACK and on the builtin kernels (int8 is 4x smaller, not faster on XNNPACK)."""
    rows = [r for r in payload["rows"] if _num(r.get("size (bytes)")) is not None]
    if not rows:
        raise _no_rows(payload, "size (bytes)")
    plt = _pyplot()
    fig, (size_ax, speed_ax) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = [f"{_short(r['model'])}\nacc {r['test accuracy']:.4f}" if _num(r.get("test accuracy")) is not None
             else _short(r["model"]) for r in rows]
    kb = {c: [None if _num(r.get(c)) is None else _num(r[c]) / 1000 for r in rows]
          for c in ("size (bytes)", "gzip (bytes)")}
    _grouped_bars(size_ax, names, {"file": kb["size (bytes)"], "gzip": kb["gzip (bytes)"]})
    size_ax.set(ylabel="KB", title="file size")
    size_ax.legend(fontsize=7)
    ratios = {"XNNPACK (default)": [_num(r.get("latency vs float32")) for r in rows],
              "builtin kernels": [_num(r.get("builtin vs float32")) for r in rows]}
    _grouped_bars(speed_ax, names, ratios,
                  annotate={k: [f"{v:.2f}x" if v is not None else "" for v in vals] for k, vals in ratios.items()})
    speed_ax.axhline(1.0, color="0.4", linewidth=0.8, linestyle="--")
    speed_ax.set(ylabel="p50 latency / float32 file's", title="LiteRT latency, 1 thread")
    speed_ax.legend(fontsize=7)
    fig.suptitle(payload["title"], fontsize=9)
    return _save(fig, out_dir, payload["name"])


def pruning_figure(payload: Payload, out_dir: Path) -> list[Path]:
    """Pruning table: int8 accuracy (LiteRT) against the int8 file's gzip size (where unstructured
    sparsity shows) and against its p50 latency (which only removed channels lower), Pareto fronts joined."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    drawn = _tradeoff(axes, payload["rows"], "model", "int8 accuracy (LiteRT)",
                      [("int8 gzip (bytes)", "int8 file, gzip (KB)", 1000, True),
                       ("p50 ms (1 thread)", "p50 ms, 1 thread (LiteRT)", 1, False)], ylabel="int8 accuracy (LiteRT)")
    if not drawn:
        raise _no_rows(payload, "int8 accuracy (LiteRT)")
    _row_legend(fig, axes)
    fig.suptitle(payload["title"], fontsize=9)
    return _save(fig, out_dir, payload["name"])


def overhead_figure(payload: Payload, out_dir: Path) -> list[Path]:
    """Pruning overhead table: every epoch's time, plain fit beside pruned fit, per library, with the
    measured overhead ratio (the spread between epochs is as large as the overhead)."""
    plt = _pyplot()
    rows = [r for r in payload["rows"] if r.get("epoch times plain") and r.get("epoch times pruned")]
    if not rows:
        raise _no_rows(payload, "epoch times")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ticks, labels = [], []
    for i, r in enumerate(rows):
        for j, (key, what) in enumerate((("epoch times plain", "plain"), ("epoch times pruned", "pruned"))):
            times = [t for t in (_num(v) for v in r[key]) if t is not None]
            x = 3 * i + j
            ax.boxplot([times], positions=[x], widths=0.6, showfliers=False)
            ax.scatter([x + 0.35] * len(times), times, s=6, color=f"C{j}", alpha=0.7)
            ticks.append(x)
            labels.append(f"{_short(r['library'], 22)}\n{what}")
        if _num(r.get("overhead")) is not None:
            ax.text(3 * i + 0.5, 1.0, f"overhead {r['overhead']:.3f}x", transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set(ylabel="seconds per epoch")
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(payload["title"], fontsize=9, y=1.04)
    return _save(fig, out_dir, payload["name"])


def bayesian_figure(payload: Payload, out_dir: Path) -> list[Path]:
    """Bayesian structured pruning table: int8 accuracy (LiteRT) against int8 file size and MACs of
    each measured row (the published MNIST rows carry no measurement and are left out)."""
    return _accuracy_tradeoffs(payload, out_dir, [("int8 size (bytes)", "int8 file (KB)", 1000, True),
                                                  ("MACs", "MACs (millions)", 1e6, True)], "int8 accuracy (LiteRT)")


def quantization_figure(payload: Payload, out_dir: Path) -> list[Path]:
    """Quantization table: int8 accuracy (LiteRT) against the gzip size of the .tflite file and
    against the packed / deep-compression size (the rows that report one), Pareto fronts joined."""
    return _accuracy_tradeoffs(payload, out_dir, [("gzip (bytes)", ".tflite, gzip (KB)", 1000, True),
                                                  ("packed / DC size (bytes)", "packed / DC size (KB)", 1000, True)],
                               "accuracy (LiteRT)")


def _accuracy_tradeoffs(payload: Payload, out_dir: Path, specs: list, ylabel: str) -> list[Path]:
    """Two panels side by side: the rows' "int8 accuracy (LiteRT)" against each of ``specs``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    if not _tradeoff(axes, payload["rows"], "model", "int8 accuracy (LiteRT)", specs, ylabel=ylabel):
        raise _no_rows(payload, "int8 accuracy (LiteRT)")
    _row_legend(fig, axes)
    fig.suptitle(payload["title"], fontsize=9)
    return _save(fig, out_dir, payload["name"])


def qat_exactness_figure(payload: Payload, out_dir: Path) -> list[Path]:
    """QAT exactness table: per net and kernel, the % of the QAT model's outputs within 1 LSB of the
    int8 file's, with the largest difference (LSB) above each bar."""
    suffix = ": within 1 LSB"
    kernels = [c[: -len(suffix)] for c in payload["columns"] if c.endswith(suffix)]
    rows = [r for r in payload["rows"] if any(_num(r.get(k + suffix)) is not None for k in kernels)]
    if not rows:
        raise _no_rows(payload, "within 1 LSB")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    series = {k: [None if _num(r.get(k + suffix)) is None else 100 * _num(r[k + suffix]) for r in rows]
              for k in kernels}
    maxima = {k: [f"{_num(r.get(f'{k}: max LSB')):g}" if _num(r.get(f"{k}: max LSB")) is not None else ""
                  for r in rows] for k in kernels}
    _grouped_bars(ax, [str(r["net"]) for r in rows], series, annotate=maxima)
    ax.set(ylabel="% of outputs within 1 LSB", ylim=(0, 112))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(kernels), frameon=False)
    ax.set_title(f"{payload['title']} (numbers on the bars: max LSB)", fontsize=9)
    return _save(fig, out_dir, payload["name"])


_KERNEL_NAMES = {"qat_vs_reference": "QAT model", "qat_xnnpack_vs_xnnpack": "QAT model (xnnpack arithmetic) vs XNNPACK",
                 "tflm_differs": "TFLM", "builtin_differs": "LiteRT builtin", "xnnpack_differs": "LiteRT XNNPACK"}


def qat_kernels_figure(payload: Payload, out_dir: Path) -> list[Path]:
    """QAT kernel table: per int8 op, the % of outputs where each kernel differs from LiteRT's
    reference kernels (log scale); the comparisons where no op differs are named in the title."""
    rows = payload["rows"]
    columns = [c for c in payload["columns"] if c in _KERNEL_NAMES or c.endswith("_differs")]
    values = {c: [_num(r.get(c)) for r in rows] for c in columns}
    zero = [c for c, v in values.items() if all(x in (0.0, None) for x in v) and any(x is not None for x in v)]
    shown = {_KERNEL_NAMES.get(c, c): [None if x is None else 100 * x for x in v]
             for c, v in values.items() if c not in zero and any(x is not None for x in v)}
    # "max 1 LSB" at a bar's end, from the column beside it (builtin_differs -> builtin_max_lsb)
    maxima = {_KERNEL_NAMES.get(c, c): [_num(r.get(c.removesuffix("_differs") + "_max_lsb")) for r in rows]
              for c in columns}
    if not shown and not zero:
        raise _no_rows(payload, "_differs")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.4))
    positive = {k: [x if x else None for x in v] for k, v in shown.items()}  # 0 has no place on a log axis
    _grouped_bars(ax, [str(r["op"]) for r in rows], positive, horizontal=True,
                  annotate={k: ["" if m is None else f"max {m:g} LSB" for m in maxima[k]] for k in shown})
    for i in range(len(rows)):  # say "0%" where a kernel equals the reference, rather than leave a gap
        zeros = [k for k, v in shown.items() if v[i] == 0]
        if zeros:
            ax.text(1.01, i, "0%: " + ", ".join(zeros), transform=ax.get_yaxis_transform(), va="center",
                    fontsize=6)
    if any(x for v in positive.values() for x in v):
        ax.set_xscale("log")
    ax.set(xlabel="% of int8 outputs differing from LiteRT's reference kernels")
    ax.grid(alpha=0.3, axis="x", which="both")
    ax.legend(fontsize=7, loc="lower right")
    equal = f"; 0% on every op: {', '.join(_KERNEL_NAMES.get(c, c) for c in zero)}" if zero else ""
    ax.set_title(f"QAT: one int8 op per file{equal}", fontsize=9)
    return _save(fig, out_dir, payload["name"])


def fuzz_figure(payload: Payload, out_dir: Path) -> list[Path]:
    """Fuzz census: per command, the share of mutants that ran, were rejected with one error line, or
    failed (tracebacks, crashes, hangs, memory, a rejection that was not one line / exit 1), with counts."""
    outcomes = [c for c in ("ok", "rejected", "rejected not one line / exit 1", "tracebacks", "crashes", "hangs",
                            "memory") if c in payload["columns"]]
    rows = [r for r in payload["rows"] if _num(r.get("mutants"))]
    if not rows:
        raise _no_rows(payload, "mutants")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.6))
    left = [0.0] * len(rows)
    colours = {"ok": "C2", "rejected": "C0"}
    failures = {c: sum(_num(r.get(c)) or 0 for r in rows) for c in outcomes if c not in colours}
    for j, outcome in enumerate(outcomes):
        share = [100 * (_num(r.get(outcome)) or 0) / _num(r["mutants"]) for r in rows]
        ax.barh(range(len(rows)), share, left=left, color=colours.get(outcome, f"C{3 + j}"),
                label=f"{outcome} ({failures[outcome]:,.0f} in all)" if outcome in failures else outcome)
        left = [a + b for a, b in zip(left, share, strict=True)]
    for i, r in enumerate(rows):
        counts = ", ".join(f"{_num(r.get(c)):,.0f} {c}" for c in ("ok", "rejected") if _num(r.get(c)) is not None)
        ax.text(1.01, i, f"{_num(r['mutants']):,.0f} mutants: {counts}", transform=ax.get_yaxis_transform(),
                va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [str(r["command"]) for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="% of mutants", xlim=(0, 100))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, frameon=False)
    ax.set_title(payload["title"], fontsize=9)
    return _save(fig, out_dir, payload["name"])


def int16x8_figure(payload: Payload, out_dir: Path) -> list[Path]:
    """int16x8 probe: per op, LiteRT's largest error against the float model (builtin and reference
    kernels) and TFLM's largest difference from LiteRT's reference kernels, in LSB of the int16
    output (symmetric log axis, 0 included); where the converter or TFLM refused, it says so."""
    rows = payload["rows"]
    if not rows:
        raise _no_rows(payload, "case")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.2 * len(rows) + 1.4))
    series = (("LiteRT builtin max err LSB", "LiteRT builtin vs float", "o", "C0"),
              ("LiteRT ref max err LSB", "LiteRT reference vs float", "x", "C1"),
              ("TFLM vs ref LSB", "TFLM vs LiteRT reference", "s", "C2"))
    for column, name, marker, colour in series:
        points = [(v, i) for i, r in enumerate(rows) if (v := _num(r.get(column))) is not None]
        if points:
            hollow = {"facecolors": "none", "edgecolors": colour} if marker in "os" else {"color": colour}
            ax.scatter(*zip(*points, strict=True), marker=marker, s=18, label=name, **hollow)
    for i, r in enumerate(rows):  # why a row has fewer than three points
        why = ["converter refused"] if str(r.get("converter", "")).startswith("refused") else []
        why += [f"{name.split(' vs ')[0]} fails" for column, name, _, _ in series
                if str(r.get(column, "")).startswith("fail")]
        why += ["TFLM refuses"] if r.get("TFLM") == "refuses" else []
        if why:
            ax.text(1.01, i, "; ".join(why), transform=ax.get_yaxis_transform(), va="center", fontsize=6,
                    color="C3")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_yticks(range(len(rows)), [str(r["case"]) for r in rows], fontsize=6)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the table's first row on top
    ax.set(xlabel="max |difference|, LSB of the int16 output scale")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.6 / (0.2 * len(rows) + 1.4)), ncol=3,
              frameon=False)
    ax.set_title(payload["title"], fontsize=9)
    return _save(fig, out_dir, payload["name"])


def precisions_figure(payload: Payload, out_dir: Path) -> list[Path]:
    """Precisions table: LiteRT accuracy against file size per precision (Pareto front joined), and
    the TFLM arena each file needs, or that TFLM refuses it."""
    plt = _pyplot()
    fig, (acc_ax, arena_ax) = plt.subplots(1, 2, figsize=(10, 3.8), width_ratios=(1.2, 1))
    fig.subplots_adjust(wspace=0.55)  # room for the arena panel's model names
    drawn = _tradeoff([acc_ax], payload["rows"], "model", "LiteRT acc", [("bytes", "file (KB)", 1000, True)],
                      ylabel="accuracy (LiteRT)")
    if not drawn:
        raise _no_rows(payload, "LiteRT acc")
    rows = [r for r in payload["rows"] if _num(r.get("bytes")) is not None]
    arena = [None if _num(r.get("TFLM arena")) is None else _num(r["TFLM arena"]) / 1000 for r in rows]
    _grouped_bars(arena_ax, [_short(r["model"], 28) for r in rows], {"TFLM arena": arena}, horizontal=True,
                  annotate={"TFLM arena": [f"{a:,.0f} KB" if a is not None else "" for a in arena]})
    for i, (r, a) in enumerate(zip(rows, arena, strict=True)):
        if a is None and r.get("TFLM acc") == "refused":
            arena_ax.text(0, i, " TFLM refuses", va="center", fontsize=6, color="C3")
    arena_ax.set(xlabel="TFLM arena (KB)")
    arena_ax.margins(x=0.25)  # room for the labels at the bars' ends
    _row_legend(fig, [acc_ax])
    fig.suptitle(payload["title"], fontsize=9)
    return _save(fig, out_dir, payload["name"])


# bench_zoo.py's columns these read (tests/test_figures.py checks they are still its columns)
ZOO_STRUCTURE_READS = ("net", "MAC ratio", "latency ratio", "int8 size (bytes)", "pruned int8 size (bytes)")
ZOO_TRAINED_READS = ("net", "float accuracy", "PTQ int8 (LiteRT)", "QAT int8 (LiteRT)",
                     "pruned 50% + QAT int8 (LiteRT)", "tfmot QAT int8 (LiteRT)")


def zoo_structure_figure(payload: Payload, out_dir: Path) -> list[Path]:
    """Zoo structure table: per net, the pruned / dense latency ratio against the MAC ratio (on the
    diagonal, latency falls as much as MACs), and the int8 file size dense and channel-pruned."""
    rows = [r for r in payload["rows"] if _num(r.get("int8 size (bytes)")) is not None]
    if not rows:
        raise _no_rows(payload, "int8 size (bytes)")
    plt = _pyplot()
    fig, (ratio_ax, size_ax) = plt.subplots(1, 2, figsize=(10, 0.25 * len(rows) + 2.8))
    pruned = [r for r in rows if _num(r.get("MAC ratio")) is not None and _num(r.get("latency ratio")) is not None]
    for i, r in enumerate(pruned):
        ratio_ax.scatter([r["MAC ratio"]], [r["latency ratio"]], s=36, marker=_MARKERS[i % len(_MARKERS)],
                         facecolors="none", edgecolors=f"C{i % 10}", linewidths=1.3, label=_short(r["net"]))
    ratio_ax.plot([0, 1], [0, 1], color="0.55", linewidth=0.8, linestyle="--", zorder=0)
    ratio_ax.set(xlabel="MAC ratio (pruned / dense)", ylabel="latency ratio (pruned / dense p50)",
                 xlim=(0, 1.05), ylim=(0, max([1.05, *(r["latency ratio"] * 1.05 for r in pruned)])))
    ratio_ax.grid(alpha=0.3)
    if pruned:
        ratio_ax.legend(fontsize=6, loc="upper left")
    # dense -> pruned as two points joined on a log axis (the nets span 30 KB to 25 MB; bars from 0
    # have no length on a log axis)
    dense = [_num(r["int8 size (bytes)"]) / 1000 for r in rows]
    small = [(i, v / 1000) for i, r in enumerate(rows) if (v := _num(r.get("pruned int8 size (bytes)"))) is not None]
    for i, kb in small:
        size_ax.plot([kb, dense[i]], [i, i], color="0.6", linewidth=1, zorder=0)
    size_ax.scatter(dense, range(len(rows)), facecolors="none", edgecolors="C0", s=24, label="dense")
    if small:
        size_ax.scatter([kb for _, kb in small], [i for i, _ in small], marker="x", color="C1", s=20,
                        label="channel-pruned 50%")
    size_ax.set_xscale("log")
    _log_axis(size_ax.xaxis)
    size_ax.set_yticks(range(len(rows)), [_short(r["net"]) for r in rows], fontsize=7)
    size_ax.set_ylim(len(rows) - 0.5, -0.5)  # the table's first row on top
    size_ax.set(xlabel="int8 file (KB)")
    size_ax.grid(alpha=0.3, axis="x", which="both")
    size_ax.legend(fontsize=7)
    _error_rows(fig, payload["rows"], "net")
    fig.suptitle(payload["title"], fontsize=9)
    return _save(fig, out_dir, payload["name"])


def zoo_trained_figure(payload: Payload, out_dir: Path) -> list[Path]:
    """Zoo trained table: per net, test accuracy of the float model, PTQ int8, QAT int8, channel-pruned
    50% + QAT int8 and tfmot's QAT int8 (a step that failed draws no bar)."""
    columns = [c for c in ZOO_TRAINED_READS[1:] if c in payload["columns"]]
    rows = [r for r in payload["rows"] if any(_num(r.get(c)) is not None for c in columns)]
    if not rows:
        raise _no_rows(payload, "accuracy")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(rows) + 2), 3.6))
    series = {c.replace(" (LiteRT)", ""): [_num(r.get(c)) for r in rows] for c in columns}
    _grouped_bars(ax, [_short(r["net"]) for r in rows], series,
                  annotate={k: [f"{v:.3f}" if v is not None else "" for v in vals] for k, vals in series.items()})
    ax.set(ylabel="test accuracy (LiteRT for int8)", ylim=(0, 1.1))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3, frameon=False)
    _error_rows(fig, [r for r in payload["rows"] if r not in rows], "net")
    ax.set_title(payload["title"], fontsize=9)
    return _save(fig, out_dir, payload["name"])


FIGURES: dict[str, FigureFunction] = {
    "01_export_lenet5_fashion_mnist": export_figure,
    "03_pruning_lenet5_fashion_mnist": pruning_figure,
    "03b_pruning_overhead": overhead_figure,
    "04_bayesian_lenet5_fashion_mnist": bayesian_figure,
    "05_quantization_lenet5_fashion_mnist": quantization_figure,
    "10_zoo_structure": zoo_structure_figure,
    "11_zoo_trained": zoo_trained_figure,
    "12_qat_exactness": qat_exactness_figure,
    "12b_qat_kernels": qat_kernels_figure,
    "bench_precisions": precisions_figure,
    "fuzz_census": fuzz_figure,
    "probe_int16x8": int16x8_figure,
}


def draw(payload: Payload, out_dir: str | os.PathLike) -> list[Path]:
    """The registered figures of ``payload`` (a results JSON, loaded) written to ``out_dir``; [] if none."""
    function = FIGURES.get(payload.get("name", ""))
    return function(payload, Path(out_dir)) if function else []


def set_figures(json_path: Path, names: list[str]) -> bool:
    """List ``names`` as the JSON's figures (atomically); every other field keeps its text. True if changed."""
    text = json_path.read_text()
    payload = json.loads(text)
    if payload.get("figures") == names:
        return False
    payload["figures"] = names
    # harness.record writes exactly this (indent 2); json keeps key order and float reprs, so only
    # the figures line changes
    _write_atomic(json_path, (json.dumps(payload, indent=2, default=str) + "\n").encode())
    return True


def main() -> int:
    """Redraw every registered table's PNG, list it in its JSON, re-render RESULTS.md and the README."""
    for path in sorted(RESULTS_DIR.glob("*.json")):
        payload = json.loads(path.read_text())
        if payload.get("name") not in FIGURES:
            print(f"{path.name}: no registered figure; its own figures kept: {payload.get('figures') or 'none'}")
            continue
        drawn = draw(payload, RESULTS_DIR)
        changed = set_figures(path, [p.name for p in drawn])
        print(f"{path.name}: {', '.join(f'{p.name} ({p.stat().st_size // 1024} KB)' for p in drawn)}"
              f"{'' if changed else ' (figures list unchanged)'}")
    sys.path.insert(0, str(HERE))
    import harness

    harness.render()  # RESULTS.md, then (render_readme) the README's results block
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
