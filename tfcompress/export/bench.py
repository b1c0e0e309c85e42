"""On-device latency of `.tflite` files, measured side by side.

Several files are run interleaved (file A, file B, file A, ...) after a warm-up,
so that frequency scaling, other processes and cache state hit every file
alike; ratios between files measured this way are what we report, never
absolute timings compared across runs. With ``isolate=True`` (the default of
``tfcompress bench``) all files run together in one child process, so a file that
crashes the interpreter gives an `InterpreterCrashError` naming it.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.export.isolation import run_isolated
from tfcompress.export.runtime import ModelRunner, RuntimeInfo
from tfcompress.export.tflite_file import load_tflite


@dataclass
class LatencyStats:
    path: str
    runtime: RuntimeInfo
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    throughput_per_s: float
    ratio_to_first: float = 1.0

    @classmethod
    def from_samples(cls, path: str, runtime: RuntimeInfo, seconds: np.ndarray, batch: int) -> LatencyStats:
        ms = seconds * 1e3
        return cls(
            path=path,
            runtime=runtime,
            runs=int(ms.size),
            p50_ms=float(np.percentile(ms, 50)),
            p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)),
            mean_ms=float(ms.mean()),
            std_ms=float(ms.std()),
            min_ms=float(ms.min()),
            throughput_per_s=float(batch / seconds.mean()) if seconds.mean() > 0 else float("inf"),
        )


@dataclass
class BenchReport:
    """What `benchmark` measured: one `LatencyStats` per file, the settings and the machine.

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> _ = to_tflite(keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)]), "model.tflite", quantization=None)
        >>> report = benchmark(["model.tflite"], runs=10, warmup=1)
        >>> stats = report.results[0]
        >>> stats.runs, stats.min_ms <= stats.p50_ms <= stats.p99_ms, report.delegate
        (10, True, 'xnnpack')
        >>> sorted(report.to_dict())
        [...'results'...]
    """

    results: list[LatencyStats]
    warmup: int
    threads: int
    delegate: str
    machine: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        header = f"{'model':<40} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'std':>7} {'inf/s':>9} {'vs first':>8}  delegate"
        lines = [header, "-" * len(header)]
        for r in self.results:
            name = os.path.basename(r.path)[:40]
            lines.append(
                f"{name:<40} {r.p50_ms:8.3f} {r.p90_ms:8.3f} {r.p99_ms:8.3f} {r.mean_ms:8.3f} "
                f"{r.std_ms:7.3f} {r.throughput_per_s:9.1f} {r.ratio_to_first:7.2f}x  {r.runtime.delegate}"
            )
        first = self.results[0].runtime
        lines.append(
            f"{first.runtime} {first.version}, {self.threads} thread(s), {self.warmup} warm-up run(s), "
            f"runs interleaved; ratio = p50 / p50 of the first file; {self.machine.get('processor') or self.machine.get('machine')}"
        )
        return "\n".join(lines)


def machine_info() -> dict:
    """What machine the numbers come from."""
    info = {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and "processor" not in info:
                    info["processor"] = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and "simd" not in info:
                    info["simd"] = widest_simd(line.split(":", 1)[1].split())
                if "processor" in info and "simd" in info:
                    break
    except OSError:
        info["processor"] = platform.processor()
    return info


# widest first: a virtual machine often names its CPU only by family ("AMD EPYC"), while its vector
# extensions decide how fast (and, through oneDNN / XNNPACK kernels, how exactly) it computes
_SIMD = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2"), ("sve", "SVE"),
         ("asimd", "NEON"), ("neon", "NEON"))


def widest_simd(flags: list[str]) -> str:
    """The widest vector extension among /proc/cpuinfo ``flags`` (x86) or ``Features`` (Arm), or 'none'."""
    present = set(flags)
    return next((name for flag, name in _SIMD if flag in present), "none")


def _random_inputs(runner: ModelRunner, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    values = []
    for detail in runner.input_details:
        dtype = np.dtype(detail["dtype"])
        shape = detail["shape"]
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            values.append(rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype))
        elif dtype == np.float32:
            values.append(rng.random(shape, dtype=np.float32))
        else:
            values.append(rng.random(shape, dtype=np.float32).astype(dtype))
    return values


def benchmark(
    paths: list[str | os.PathLike],
    *,
    runs: int = 200,
    warmup: int = 20,
    threads: int = 1,
    delegate: str = "xnnpack",
    runtime: str = "auto",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    isolate: bool = False,
) -> BenchReport:
    """Latency of each file, measured interleaved in one process.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> _ = to_tflite(model, "int8.tflite", "int8", representative_data=np.ones((4, 8), "float32"))
        >>> _ = to_tflite(model, "float32.tflite", quantization=None)
        >>> report = benchmark(["int8.tflite", "float32.tflite"], runs=20, warmup=2)
        >>> [(r.path, r.runs) for r in report.results], report.results[0].ratio_to_first
        ([('int8.tflite', 20), ('float32.tflite', 20)], 1.0)
        >>> "float32.tflite" in report.text()
        True

    Args:
        paths: `.tflite` files; ratios are relative to the first.
        runs: timed invocations per file.
        warmup: untimed invocations per file before timing.
        threads: interpreter threads.
        delegate: ``"xnnpack"``, ``"none"``, ``"edgetpu"`` or a delegate library path.
        runtime: ``"auto"``, ``"litert"`` or ``"tflite_runtime"``.
        progress: called as ``progress(done, total)`` after each round (not with ``isolate``).
        isolate: run the interpreters in a child process (`tfcompress.export.isolation`): a
            native crash raises `InterpreterCrashError` naming the file and the op.
    """
    if not paths:
        raise TfcompressError("no model to benchmark", "paths", "pass at least one .tflite file")
    if runs < 1 or warmup < 0:
        raise TfcompressError(f"runs must be >= 1 and warmup >= 0 (got {runs}, {warmup})", "runs/warmup")
    if isolate:
        models = {}
        for p in paths:
            model = load_tflite(p)
            models[model.path or "<bytes>"] = model.data
        kwargs = {"runs": runs, "warmup": warmup, "threads": threads, "delegate": delegate, "runtime": runtime,
                  "seed": seed}
        return run_isolated("tfcompress.export.bench:benchmark", ([str(p) for p in paths],), kwargs,
                            where=str(paths[0]), models=models)
    runners = [ModelRunner(p, num_threads=threads, delegate=delegate, runtime=runtime) for p in paths]
    inputs = [_random_inputs(r, seed) for r in runners]
    for runner, x in zip(runners, inputs, strict=True):
        # the first run goes through invoke_raw, which turns a kernel's failure into a clear error
        runner.invoke_raw(x)
        for _ in range(warmup):
            runner.interpreter.invoke()
    timings = np.zeros((len(runners), runs))
    clock = time.perf_counter_ns
    for r in range(runs):
        # Rotate the starting file so none always runs right after another's cache footprint.
        order = [(r + k) % len(runners) for k in range(len(runners))]
        for k in order:
            invoke = runners[k].interpreter.invoke
            start = clock()
            invoke()
            timings[k, r] = (clock() - start) * 1e-9
        if progress is not None:
            progress(r + 1, runs)
    results = [
        LatencyStats.from_samples(str(p), runner.info, timings[k], runner.batch_size)
        for k, (p, runner) in enumerate(zip(paths, runners, strict=True))
    ]
    for result in results:
        result.ratio_to_first = result.p50_ms / results[0].p50_ms if results[0].p50_ms > 0 else float("nan")
    return BenchReport(results, warmup, threads, delegate, machine_info())
