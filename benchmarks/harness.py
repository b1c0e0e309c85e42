"""Benchmark harness: results as JSON in benchmarks/results/, rendered into RESULTS.md.

Every benchmark script calls `record(name, command, columns, rows, notes)`. The
JSON keeps the exact command, library versions, machine and date beside the
numbers; `render()` rewrites RESULTS.md from all JSON files, so the Markdown is
never edited by hand and always says where each number came from.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
SMOKE_DIR = HERE / "out" / "smoke"
PACKAGES = (
    "tfcompress", "tensorflow", "keras", "tensorflow-probability", "ai-edge-litert", "tflite-micro",
    "numpy", "tf-keras", "tensorflow-model-optimization", "larq",
)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def machine() -> dict:
    from tfcompress.export.bench import machine_info

    return machine_info()


def describe_machine(m: dict) -> str:
    """'AMD EPYC (AVX-512), 2 cores': the vector extension when the JSON records it (runs since
    2026-11-24; two machines both called 'AMD EPYC' differed ninefold in LiteRT latency)."""
    simd = f" ({m['simd']})" if m.get("simd") else ""
    return f"{m.get('processor', m.get('machine'))}{simd}, {m.get('cpu_count')} cores"


def command_line() -> str:
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(HERE.parent)
    except ValueError:
        pass
    return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def figure_path(file_name: str) -> Path:
    """Where a benchmark writes a PNG: beside its JSON (benchmarks/results/, or out/smoke on a smoke run)."""
    out_dir = SMOKE_DIR if is_smoke_run() else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir / file_name


def record(name: str, title: str, columns: list[str], rows: list[dict], notes: list[str] | None = None,
           extra: dict | None = None, figures: list[Path] | None = None) -> Path:
    """Write benchmarks/results/NAME.json and re-render RESULTS.md.

    ``figures``: PNGs written with `figure_path`, shown under the table in RESULTS.md and the README;
    without them, the figures benchmarks/figures.py registers for ``name`` are drawn from ``rows``.
    """
    from tfcompress._io import write_text_atomic

    smoke = is_smoke_run()
    out_dir = SMOKE_DIR if smoke else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": name,
        "title": title,
        "command": command_line(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions(),
        "machine": machine(),
        "columns": columns,
        "rows": rows,
        "notes": notes or [],
        "extra": extra or {},
        "figures": [Path(f).name for f in figures or []],
    }
    if not figures:  # every rerun redraws the table's plot, so it never shows older numbers than the table
        payload["figures"] = [p.name for p in registered_figures(payload, out_dir)]
    path = out_dir / f"{name}.json"
    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")
    if smoke:
        # a smoke run (--limit) checks that a script runs; its numbers never reach RESULTS.md
        print(f"smoke run: results written to {path}, RESULTS.md left alone")
    else:
        render()
    return path


def registered_figures(payload: dict, out_dir: Path) -> list[Path]:
    """The PNGs benchmarks/figures.py registers for ``payload["name"]``, drawn into ``out_dir`` from
    the payload as the JSON stores it; [] for a name it does not register.

    A figure that cannot be drawn (no matplotlib, no numeric row) is reported and skipped: it never
    costs a benchmark its results.
    """
    # by path, not `import figures`: the scripts put benchmarks/ on sys.path, a test loading this
    # module by path does not
    spec = importlib.util.spec_from_file_location("_benchmark_figures", HERE / "figures.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return module.draw(json.loads(json.dumps(payload, default=str)), out_dir)
    except Exception as exc:  # a plot is extra; the numbers are the result
        print(f"{payload.get('name')}: no figure drawn ({type(exc).__name__}: {exc})")
        return []


def is_smoke_run(argv: list[str] | None = None) -> bool:
    """A run on a subset of the data (``--limit N``, ``--quick``) is a smoke run, not a result."""
    argv = sys.argv[1:] if argv is None else argv
    return any(a in ("--limit", "--quick") or a.startswith("--limit=") for a in argv)


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def table(columns: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def render() -> str:
    from tfcompress._io import write_text_atomic

    sections = [
        "# Benchmark results",
        "",
        "Generated by `benchmarks/harness.py` from `benchmarks/results/*.json`; do not edit by hand.",
        "Every table was produced by the command above it, in one run; latencies are measured side by side",
        "(interleaved) within that run, so compare ratios, not absolute times across tables.",
        "",
    ]
    for path in sorted(RESULTS_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        m = data["machine"]
        v = data["versions"]
        sections += [
            f"## {data['title']}",
            "",
            f"- command: `{data['command']}`",
            f"- date: {data['date']}",
            f"- machine: {describe_machine(m)}, {m.get('system')}",
            "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
            "",
            table(data["columns"], data["rows"]),
            "",
        ]
        sections += [f"- {note}" for note in data.get("notes", [])]
        sections += ["", *(f"![{f}](results/{f})" for f in data.get("figures", []))]
        sections.append("")
    text = "\n".join(sections).rstrip() + "\n"
    write_text_atomic(RESULTS_MD, text)
    render_readme()
    return text


README = HERE.parent / "README.md"
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
KEY_VERSIONS = ("tensorflow", "keras", "ai-edge-litert", "tflite-micro", "tensorflow-model-optimization")


def readme_block() -> str:
    """The README's results section: every table of RESULTS.md with its command and notes."""
    parts = []
    for path in sorted(RESULTS_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        m, v = data["machine"], data["versions"]
        where = describe_machine(m)
        libs = ", ".join(f"{k} {v[k]}" for k in KEY_VERSIONS if k in v)
        parts += [f"**{data['title']}** (`{data['command']}`; {where}; {libs}; {data['date']}):", "",
                  table(data["columns"], data["rows"]), ""]
        parts += [f"- {note}" for note in data.get("notes", [])]
        parts += ["", *(f"![{f}](benchmarks/results/{f})" for f in data.get("figures", []))]
        parts.append("")
    return "\n".join(parts).rstrip()


def render_readme() -> None:
    """Replace the README's block between the results markers (numbers never typed by hand)."""
    from tfcompress._io import write_text_atomic

    if not README.exists():
        return
    text = README.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{README}: markers {README_START} / {README_END} not found")
    new = text[: start + len(README_START)] + "\n" + readme_block() + "\n" + text[end:]
    if new != text:
        write_text_atomic(README, new)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(render())
