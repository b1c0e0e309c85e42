"""Fuzz census: thousands of single-edit mutants of small int8 models through every command.

Four base models (tests/fuzzing.py `base_models`: int8 conv and dense, int8 and float32 I/O)
are mutated by the seeded mutator (`fuzzing.mutants`: one in-place field edit, one random byte
or one semantic edit repacked by a flatbuffers builder). Every mutant goes through
``load_tflite``, ``tfcompress inspect --json``, ``tfcompress edgetpu --static --json``,
``tfcompress micro --in-process``, ``tfcompress bench --in-process`` and ``evaluate``, each in
a worker process (`tfcompress.export.isolation.Child`) under an address-space limit
(RLIMIT_AS) with a per-command timeout; a worker that dies is counted and replaced. The CLI
commands run in-process in the worker, so the census measures the verifier, not the isolation
behind it; ``--isolated N`` also runs N mutants through the CLI's default (isolated) ``bench``
and ``micro``.

Counted per command: ok (ran), rejected (one ``error:`` line, exit 1), tracebacks (an
unexpected exception), crashes (the worker died on a signal), hangs (over the timeout),
memory (MemoryError or the limit), the slowest call and the worker's peak RSS.

    nice python benchmarks/fuzz_census.py --mutants 5200 --seed 0
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import harness  # noqa: E402

COLUMNS = ["command", "mutants", "ok", "rejected", "rejected not one line / exit 1", "tracebacks", "crashes",
           "hangs", "memory", "slowest s", "peak RSS MB"]


def _category(message: str) -> str:
    """A rejection message with its numbers, names and paths removed: what kind of rule fired."""
    text = message.split(": error: ", 1)[-1]
    text = text.split(" Fix: ", 1)[0]
    text = re.sub(r"^\S+\.tflite: |^<bytes>: ", "", text)
    text = re.sub(r"\([^()]*\)", "", text)
    text = re.sub(r"'[^']*'", "'_'", text)
    text = re.sub(r"(?<!\w)-?\d[\d,.e+-]*", "N", text)
    return re.sub(r"\s+", " ", text).strip()[:90]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutants", type=int, default=5200, help="mutants in all (split over the 4 models)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per command before it is a hang")
    parser.add_argument("--memory-gb", type=float, default=4.0, help="address-space limit of the workers")
    parser.add_argument("--isolated", type=int, default=200,
                        help="mutants also run through the CLI's default (isolated) bench and micro")
    parser.add_argument("--limit", type=int, default=None, help="smoke run: this many mutants, no RESULTS.md")
    args = parser.parse_args()

    from fuzzing import BASE_MODELS, COMMANDS, base_models, mutants

    from tfcompress.export.isolation import Child

    total = args.limit or args.mutants
    work = Path(tempfile.mkdtemp(prefix="tfcompress_fuzz_"))
    models = base_models(work)
    files = []
    per_model = -(-total // len(BASE_MODELS))
    for m_index, name in enumerate(BASE_MODELS):
        for mutant in mutants(models[name], per_model, seed=args.seed * 1000 + m_index):
            if len(files) >= total:
                break
            path = work / f"{name}_{mutant.index:05d}.tflite"
            path.write_bytes(mutant.data)
            files.append((name, mutant, str(path)))
    print(f"{len(files)} mutants of {', '.join(f'{n} ({len(models[n])} B)' for n in BASE_MODELS)} in {work}",
          flush=True)

    limit = int(args.memory_gb * 2**30)
    stats = {c: collections.Counter() for c in COMMANDS}
    slowest = dict.fromkeys(COMMANDS, 0.0)
    peak_rss = dict.fromkeys(COMMANDS, 0.0)
    failures: list[dict] = []
    reasons: collections.Counter = collections.Counter()
    by_kind = collections.Counter()
    accepted_by_kind = collections.Counter()
    started = time.perf_counter()
    child = Child(memory_limit=limit, extra_path=[str(HERE.parent / "tests")])
    try:
        for n, (name, mutant, path) in enumerate(files):
            by_kind[mutant.kind] += 1
            for command in COMMANDS:
                status, value = child.call("fuzzing:run_command", (command, path, str(work)), timeout=args.timeout)
                counts = stats[command]
                if status == "result":
                    counts[value["outcome"]] += 1
                    slowest[command] = max(slowest[command], value["seconds"])
                    peak_rss[command] = max(peak_rss[command], value["max_rss_mb"])
                    if value["outcome"] == "rejected":
                        if not value["format"]:
                            counts["bad format"] += 1
                            failures.append({"command": command, "model": name, "edit": mutant.edit,
                                             "problem": "rejection not one line / exit 1", "message": value["message"]})
                        if command == "load_tflite":
                            reasons[_category(value["message"])] += 1
                    elif value["outcome"] == "traceback":
                        failures.append({"command": command, "model": name, "edit": mutant.edit,
                                         "problem": "traceback", "message": value["message"]})
                    elif command == "load_tflite":
                        accepted_by_kind[mutant.kind] += 1
                    continue
                kind = {"signal": "crash", "exit": "crash", "timeout": "hang", "memory": "memory"}.get(status, "crash")
                if status == "signal" and "bad_alloc" in child.stderr_tail():
                    kind = "memory"
                counts[kind] += 1
                failures.append({"command": command, "model": name, "edit": mutant.edit, "problem": kind,
                                 "detail": f"{status} {value}", "phase": child.last_phase,
                                 "stderr": child.stderr_tail()})
                if status != "memory":
                    child.close()
                    child = Child(memory_limit=limit, extra_path=[str(HERE.parent / "tests")])
            if (n + 1) % 250 == 0:
                print(f"{n + 1}/{len(files)} mutants, {time.perf_counter() - started:.0f} s, "
                      f"{len(failures)} failure(s)", flush=True)
    finally:
        child.close()
    census_seconds = time.perf_counter() - started

    isolated = _isolated_pass(files[: args.isolated], work, args.timeout)

    rows = []
    for command in COMMANDS:
        c = stats[command]
        rows.append({
            "command": command, "mutants": sum(c[k] for k in ("ok", "rejected", "traceback", "crash", "hang", "memory")),
            "ok": c["ok"], "rejected": c["rejected"], "rejected not one line / exit 1": c["bad format"],
            "tracebacks": c["traceback"], "crashes": c["crash"], "hangs": c["hang"], "memory": c["memory"],
            "slowest s": round(slowest[command], 3), "peak RSS MB": round(peak_rss[command], 1),
        })
    rows += isolated["rows"]
    notes = [
        f"{len(files)} single-edit mutants ({', '.join(f'{k} {v}' for k, v in sorted(by_kind.items()))}) of 4 int8 "
        f"models ({', '.join(f'{n} {len(models[n])} B' for n in BASE_MODELS)}), seed {args.seed}; "
        f"each command in a worker process with RLIMIT_AS {args.memory_gb:g} GiB and a {args.timeout:g} s timeout; "
        f"{census_seconds:.0f} s for the in-process commands.",
        "load_tflite accepted " + ", ".join(f"{accepted_by_kind[k]} of {by_kind[k]} {k}" for k in sorted(by_kind))
        + " mutants (edits of weights, unused fields or values still in their domain: the file is still a model).",
        "Rules that rejected the most mutants (load_tflite, numbers and names removed): "
        + "; ".join(f"{count} x '{reason}'" for reason, count in reasons.most_common(8)) + ".",
        isolated["note"],
        f"{len(failures)} failure(s) in all" + (": see extra.failures in the JSON." if failures else "."),
    ]
    harness.record("fuzz_census", "Fuzz census: mutated .tflite files through every command", COLUMNS, rows, notes,
                   extra={"failures": failures[:200], "reasons": reasons.most_common(40),
                          "mutants_by_kind": dict(by_kind), "accepted_by_kind": dict(accepted_by_kind),
                          "timeout_s": args.timeout, "memory_limit_gb": args.memory_gb})
    print(harness.table(COLUMNS, rows))
    for note in notes:
        print("-", note)


def _isolated_pass(files, work: Path, timeout: float) -> dict:
    """The CLI's default bench and micro (interpreters in a child process of their own)."""
    import subprocess

    counts = {c: collections.Counter() for c in ("bench (isolated)", "micro (isolated)")}
    slowest = dict.fromkeys(counts, 0.0)
    started = time.perf_counter()
    for _, _, path in files:
        for label, argv in (("bench (isolated)", ["bench", path, "--runs", "3", "--warmup", "1", "--quiet"]),
                            ("micro (isolated)", ["micro", path, "-o", str(work / "micro_isolated"), "--samples",
                                                  "2", "--quiet"])):
            t0 = time.perf_counter()
            try:
                done = subprocess.run([sys.executable, "-m", "tfcompress.cli", *argv], capture_output=True,
                                      text=True, timeout=timeout * 4)
            except subprocess.TimeoutExpired:
                counts[label]["hang"] += 1
                continue
            slowest[label] = max(slowest[label], time.perf_counter() - t0)
            lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith("INFO: ")]
            errors = [ln for ln in lines if ": error: " in ln]
            if done.returncode < 0:
                counts[label]["crash"] += 1
            elif "Traceback" in done.stderr or any("--verbose for the traceback" in ln for ln in errors):
                counts[label]["traceback"] += 1
            elif errors:
                counts[label]["rejected"] += 1
                if done.returncode != 1 or len(lines) != 1:
                    counts[label]["bad format"] += 1
                if "crashed" in errors[0] or "did not finish" in errors[0]:
                    counts[label]["caught"] += 1
            else:
                counts[label]["ok"] += 1
    rows = [{"command": label, "mutants": len(files), "ok": c["ok"], "rejected": c["rejected"],
             "rejected not one line / exit 1": c["bad format"], "tracebacks": c["traceback"], "crashes": c["crash"],
             "hangs": c["hang"], "memory": 0, "slowest s": round(slowest[label], 3), "peak RSS MB": None}
            for label, c in counts.items()]
    caught = sum(c["caught"] for c in counts.values())
    note = (f"The isolated rows: the first {len(files)} mutants through `python -m tfcompress.cli bench|micro` as a "
            f"user runs them (interpreters in a child process), {time.perf_counter() - started:.0f} s; native "
            f"crashes the child turned into an error line: {caught}.")
    return {"rows": rows, "note": note}


if __name__ == "__main__":
    main()
