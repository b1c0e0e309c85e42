"""Survey: which tfcompress steps work on which `tfcompress.zoo` network, and how they fail.

For every network of ``tfcompress.zoo.ZOO`` (randomly initialised, small inputs) it tries:

1. ``ptq``        ``export.to_tflite(model, path, "int8", representative_data=random)``: int8 coverage,
                  ``export.agreement`` on random inputs. When it raises `FloatFallbackError`, the
                  export is repeated with ``allow_float_fallback=True`` (``ptq_fallback``) to
                  name the float ops, and steps 2-3 run on that file (flagged).
2. ``micro``      ``export.micro.to_micro`` (TFLM vs LiteRT reference kernels) on the PTQ file.
3. ``edgetpu``    ``export.edgetpu_report`` on the PTQ file.
4. ``channel``    ``prune(model, ConstantSparsity(0.5, 0), granularity="channel")``,
                  ``pruning.update_masks(pruned, 0, force_sparsity=0.5)``, ``strip``,
                  ``shrink(..., return_report=True)``: max |stripped - shrunk| on random inputs, the
                  MAC ratio, and per `PruneLowMagnitude` the fraction of channels masked against the
                  fraction ``shrink`` removed.
5. ``nm24``       2:4 pruning (``granularity="2:4"``), ``update_masks``, ``strip``, int8 export.
6. ``qat``        ``quantize(model)``; activation ranges set by a few forward passes with
                  ``training=True`` (no weight update); ``to_tflite(qat, path, "int8")``; the fraction of
                  output elements within 1 LSB of the QAT Keras model on LiteRT and on TFLM (as
                  ``tests/test_qat.py::lsb_agreement``).
7. ``bayesian``   ``bayesian.convert(model, "dirichlet", dataset_size=100)``, ``bayesian.prune_to`` half
                  of every scored layer, ``bayesian.strip``, ``shrink``.
8. ``roundtrip``  ``.keras`` save / ``keras.saving.load_model`` of the channel-pruned and QAT models
                  (max |before - after| of their predictions).

Every step records ``ok`` / ``error`` (exception type, first line of its message, the tfcompress
module, function and line where it was raised, and the deepest frame outside tfcompress) /
``skipped`` (a step it needs failed), and its time. Each network runs in its own subprocess (a
crash is recorded as such, not lost) with a timeout; the worker rewrites its JSON after every step,
so a timeout or crash keeps the steps that finished. One network runs at a time.

    python benchmarks/survey_zoo.py                      # all 12, JSON to benchmarks/out/survey_zoo.json
    python benchmarks/survey_zoo.py --nets resnet8 ds_cnn --timeout 300
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "out" / "survey_zoo.json"
STEPS = ("ptq", "micro", "edgetpu", "channel", "nm24", "qat", "bayesian", "roundtrip")

# input sizes of the survey: the MLPerf Tiny nets at their reference sizes, the applications at
# 32x32 (the smallest keras.applications accepts for each of them)
SIZES: dict[str, dict] = {
    "resnet8": {},
    "ds_cnn": {},
    "mobilenet_v1": {},
    "fc_autoencoder": {},
    **{name: {"input_shape": (32, 32, 3), "classes": 10} for name in (
        "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
        "efficientnet_v2_b0", "resnet50_v2", "densenet121", "nasnet_mobile")},
}
CALIBRATION = 16  # random calibration samples
EVAL = 8  # random inputs the comparisons run on


# ------------------------------------------------------------------------------ error records


def _module_of(filename: str) -> str | None:
    """``tfcompress.export.convert`` for a file of the tfcompress package, else None."""
    import tfcompress

    root = Path(tfcompress.__file__).resolve().parent
    try:
        rel = Path(filename).resolve().relative_to(root.parent)
    except ValueError:
        return None
    if rel.parts[0] != "tfcompress":
        return None
    return ".".join(rel.with_suffix("").parts).removesuffix(".__init__")


def _origin(filename: str) -> str:
    """A short package-relative name for a frame outside tfcompress (``keras/src/...``)."""
    parts = Path(filename).parts
    for anchor in ("site-packages", "dist-packages", "lib"):
        if anchor in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(anchor):])
    return filename


def error_record(exc: BaseException) -> dict:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [(f, _module_of(f.filename)) for f in frames]
    ours = [(f, m) for f, m in ours if m]
    import re

    message = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).strip().splitlines()]
    record = {
        "type": type(exc).__name__,
        "message": message[0][:500] if message else "",
        "module": None,
        "where": None,
        "origin": None,
    }
    if message and message[0].startswith("Exception encountered when calling"):
        # Keras' wrapper: the original message follows on the next non-empty line
        rest = [line for line in message[1:] if line]
        if rest:
            record["detail"] = rest[0][:500]
    if ours:
        frame, module = ours[-1]
        record["module"] = module
        record["where"] = f"{module} ({frame.name}, line {frame.lineno})"
    if frames:
        last = frames[-1]
        if not _module_of(last.filename):
            record["origin"] = f"{_origin(last.filename)}:{last.lineno} ({last.name})"
    cause = exc.__cause__  # an explicit `raise ... from cause` only
    if cause is not None:
        lines = str(cause).strip().splitlines()
        record["cause"] = f"{type(cause).__name__}: {lines[0][:300] if lines else ''}"
    return record


# ------------------------------------------------------------------------------------ worker


def _api(*candidates: str):
    """The first importable ``module:attribute`` (the package is being reorganised)."""
    errors = []
    for candidate in candidates:
        module, _, attr = candidate.partition(":")
        try:
            obj = importlib.import_module(module)
            return getattr(obj, attr) if attr else obj
        except (ImportError, AttributeError) as exc:
            errors.append(f"{candidate}: {exc}")
    raise ImportError("; ".join(errors))


# the steps whose models / files later steps use
DEPENDENTS = {"ptq": ("micro", "edgetpu"), "channel": ("roundtrip",), "qat": ("roundtrip",)}


class Worker:
    """Runs the steps of one network; ``skip`` were recorded by an earlier run of it (which crashed),
    ``redo`` of them are run again unrecorded for the models and files later steps need."""

    def __init__(self, name: str, out: Path, tmp: Path, *, recalibrate_bn: bool = True,
                 skip: frozenset[str] = frozenset(), redo: frozenset[str] = frozenset()):
        self.name, self.out, self.tmp = name, out, tmp
        self.recalibrate_bn = recalibrate_bn
        self.skip, self.redo = skip, redo
        self.result: dict = {"net": name, "steps": {}}
        self.state: dict = {}

    def save(self) -> None:
        self.out.write_text(json.dumps(self.result, indent=1, default=str))

    def run(self, step: str, fn, needs: tuple[str, ...] = ()) -> None:
        if step in self.skip:
            if step in self.redo and all(n in self.state for n in needs):
                try:
                    fn({})
                except Exception:  # recorded by the earlier run
                    pass
            return
        missing = [n for n in needs if n not in self.state]
        if missing:
            self.result["steps"][step] = {"status": "skipped", "reason": f"needs {', '.join(missing)}"}
            self.save()
            return
        self.result["steps"][step] = {"status": "running"}
        self.save()
        started = time.perf_counter()
        details: dict = {}
        try:
            fn(details)
            record = {"status": "ok"}
        except Exception as exc:  # the survey records every failure
            record = {"status": "error", "error": error_record(exc)}
        record["seconds"] = round(time.perf_counter() - started, 2)
        record.update(details)
        self.result["steps"][step] = record
        self.save()

    # -- the steps
    def build(self) -> None:
        import keras
        import numpy as np

        from tfcompress import zoo

        keras.utils.set_random_seed(0)
        started = time.perf_counter()
        model = zoo.ZOO[self.name](**SIZES.get(self.name, {}))
        self.model = model
        shape = tuple(model.input_shape[1:])
        rng = np.random.default_rng(0)
        self.calib = rng.random((CALIBRATION, *shape), dtype=np.float32)
        self.x = rng.random((EVAL, *shape), dtype=np.float32)
        if self.recalibrate_bn:
            # random initialisation: set BN's moving statistics to those of the random inputs, so
            # activations keep a trained net's scale instead of shrinking layer after layer
            recalibrate = _api("tfcompress.batchnorm:recalibrate_batchnorm")
            self.result["bn_recalibrated_layers"] = recalibrate(model, self.calib)
        y = np.asarray(model.predict(self.x, verbose=0))
        self.result["output_abs_max"] = float(np.abs(y).max())
        self.result["output_std_over_inputs"] = float(y.std(axis=0).mean())
        self.result.update(input_shape=list(shape), params=int(model.count_params()),
                           layers=len(model.layers), build_seconds=round(time.perf_counter() - started, 2))
        self.save()

    def ptq(self, d: dict) -> None:
        export = _api("tfcompress.export")
        path = self.tmp / "ptq.tflite"
        try:
            report = export.to_tflite(self.model, path, "int8", representative_data=self.calib,
                                      calibration_samples=CALIBRATION)
        except Exception as exc:
            if type(exc).__name__ != "FloatFallbackError":
                raise
            # name the float ops, and give steps 2-3 a file
            fallback = {}
            try:
                rep = export.to_tflite(self.model, path, "int8", representative_data=self.calib,
                                       calibration_samples=CALIBRATION, allow_float_fallback=True)
                fallback = {"status": "ok", "int8_coverage": rep.int8_coverage,
                            "float_ops": rep.float_ops[:12], "num_float_ops": len(rep.float_ops),
                            "num_ops": rep.num_ops}
                self.state["ptq_file"] = path
                self.state["ptq_is_fallback"] = True
            except Exception as exc2:
                fallback = {"status": "error", "error": error_record(exc2)}
            d["ptq_fallback"] = fallback
            raise
        self.state["ptq_file"] = path
        d.update(int8_coverage=report.int8_coverage, num_ops=report.num_ops, size_bytes=report.size_bytes,
                 ops=report.ops)
        agreement = export.agreement(self.model, path, self.x)
        d["agreement"] = {"top1": agreement.top1_agreement, "max_abs_error": agreement.max_abs_error,
                          "max_error_lsb": agreement.max_error_lsb}

    def micro(self, d: dict) -> None:
        to_micro = _api("tfcompress.export.micro:to_micro", "tfcompress.export:to_micro")
        d["on_fallback_file"] = bool(self.state.get("ptq_is_fallback"))
        report = to_micro(self.state["ptq_file"], self.tmp / "micro", name="model", num_samples=2)
        d.update(identical=report.identical, diff_unit=report.diff_unit,
                 max_diff_reference=report.max_diff_reference, max_diff_default=report.max_diff_default,
                 arena_bytes=report.arena_total_bytes, op_differences=[str(o) for o in report.op_differences][:5])

    def edgetpu(self, d: dict) -> None:
        edgetpu_report = _api("tfcompress.export:edgetpu_report", "tfcompress.export.edgetpu:edgetpu_report")
        d["on_fallback_file"] = bool(self.state.get("ptq_is_fallback"))
        report = edgetpu_report(self.state["ptq_file"], compiler="auto")
        d.update(ready=report.ready, mode=report.mode, tpu_ops=report.tpu_ops, cpu_ops=report.cpu_ops,
                 first_cpu_op=report.first_cpu_op,
                 failed_checks=[f"{c.rule}: {c.detail}" for c in report.checks if not c.passed][:6],
                 cpu_reasons=sorted({v.reason for v in report.ops if v.runs_on == "cpu"})[:6])

    def channel(self, d: dict) -> None:
        import numpy as np

        import tfcompress

        constant = _api("tfcompress.schedules:ConstantSparsity", "tfcompress.pruning.schedules:ConstantSparsity",
                        "tfcompress.pruning:ConstantSparsity")
        update_masks = _api("tfcompress.pruning:update_masks", "tfcompress.pruning.magnitude:update_masks")
        wrappers_of = _api("tfcompress.pruning:pruning_wrappers", "tfcompress.pruning.magnitude:pruning_wrappers")
        pruned = tfcompress.prune(self.model, constant(0.5, 0), granularity="channel")
        wrappers = wrappers_of(pruned)
        d["wrapped_layers"] = len(wrappers)
        update_masks(pruned, 0, force_sparsity=0.5)
        self.state["pruned"] = pruned
        x = self.x
        y_pruned = pruned.predict(x, verbose=0)
        stripped = tfcompress.strip(pruned)
        y_stripped = stripped.predict(x, verbose=0)
        d["max_abs_diff_pruned_vs_stripped"] = float(np.abs(y_pruned - y_stripped).max())
        masked = {w.layer.name: float(1.0 - w.channel_mask_numpy().mean()) for w in wrappers}
        shrunk, report = tfcompress.shrink(stripped, return_report=True)
        y_shrunk = shrunk.predict(x, verbose=0)
        d["max_abs_diff_stripped_vs_shrunk"] = float(np.abs(y_stripped - y_shrunk).max())
        d["macs_ratio"] = round(report.macs_ratio, 3)
        d["params_ratio"] = round(report.params_ratio, 3)
        d["macs"] = [report.macs_before, report.macs_after]
        # channels removed per wrapped layer: its output channels in the stripped and shrunk models
        # (the report's `channels` lists producers only, not DepthwiseConv2D)
        before = {layer.name: int(layer.output.shape[-1]) for layer in stripped.layers}
        after = {layer.name: int(layer.output.shape[-1]) for layer in shrunk.layers}
        per_layer = []
        for name, fraction in masked.items():
            removed = None if name not in after else 1.0 - after[name] / before[name]
            per_layer.append({"layer": name, "channels": before.get(name), "masked": round(fraction, 3),
                              "removed": None if removed is None else round(removed, 3)})
        same = [p for p in per_layer if p["removed"] is not None and abs(p["removed"] - p["masked"]) < 1e-9]
        less = [p for p in per_layer if p["removed"] is not None and p["removed"] < p["masked"] - 1e-9]
        more = [p for p in per_layer if p["removed"] is not None and p["removed"] > p["masked"] + 1e-9]
        gone = [p for p in per_layer if p["removed"] is None]
        d["layers_removed_as_masked"] = len(same)
        d["layers_removed_less_than_masked"] = len(less)
        d["layers_removed_more_than_masked"] = len(more)
        d["layers_not_in_shrunk_model"] = len(gone)
        d["examples_removed_less"] = less[:6]
        d["examples_removed_more"] = more[:4]
        d["per_layer"] = per_layer
        d["shrink_notes"] = report.notes[:6]
        d["num_shrink_notes"] = len(report.notes)

    def nm24(self, d: dict) -> None:
        import numpy as np

        import tfcompress

        export = _api("tfcompress.export")
        constant = _api("tfcompress.schedules:ConstantSparsity", "tfcompress.pruning.schedules:ConstantSparsity",
                        "tfcompress.pruning:ConstantSparsity")
        update_masks = _api("tfcompress.pruning:update_masks", "tfcompress.pruning.magnitude:update_masks")
        pruned = tfcompress.prune(self.model, constant(0.5, 0), granularity="2:4")
        update_masks(pruned, 0, force_sparsity=0.5)
        stripped = tfcompress.strip(pruned)
        kernels = [w for w in stripped.weights if w.path.endswith("kernel")]
        total = sum(int(np.prod(w.shape)) for w in kernels)
        zeros = sum(int((np.asarray(w) == 0).sum()) for w in kernels)
        d["kernel_sparsity"] = round(zeros / max(total, 1), 4)
        path = self.tmp / "nm24.tflite"
        report = export.to_tflite(stripped, path, "int8", representative_data=self.calib,
                                  calibration_samples=CALIBRATION)
        d["int8_coverage"] = report.int8_coverage
        agreement = export.agreement(stripped, path, self.x)
        d["agreement"] = {"top1": agreement.top1_agreement, "max_error_lsb": agreement.max_error_lsb}

    def qat(self, d: dict) -> None:
        import tfcompress

        failure = None
        try:
            qat = tfcompress.quantize(self.model)
        except Exception as exc:
            failure = exc
        if failure is None:
            self._qat_export(qat, d)
            return
        # e.g. a head QAT cannot fuse (softmax): does the rest quantize with the head left float?
        head = self.model.layers[-1].name
        retry: dict = {"skip_layers": [head]}
        try:
            self._qat_export(tfcompress.quantize(self.model, skip_layers=[head]), retry)
            retry["status"] = "ok"
        except Exception as exc2:
            retry.update(status="error", error=error_record(exc2))
        d["retry_skipping_head"] = retry
        raise failure

    def _qat_export(self, qat, d: dict) -> None:
        import numpy as np

        export = _api("tfcompress.export")
        make_tflm = _api("tfcompress.export.micro:make_tflm_interpreter")
        load_tflite = _api("tfcompress.export.tflite_file:load_tflite", "tfcompress.export:load_tflite")
        for i in range(0, CALIBRATION, 8):  # EMA ranges from forward passes; no weight update
            qat(self.calib[i : i + 8], training=True)
        self.state["qat"] = qat
        path = self.tmp / "qat.tflite"
        report = export.to_tflite(qat, path, "int8")
        d["int8_coverage"] = report.int8_coverage
        parsed = load_tflite(path)
        scale = parsed.outputs[0].quantization.scales[0]
        keras_out = qat.predict(self.x, verbose=0)
        runner = export.ModelRunner(path)
        lite_lsb = np.abs(runner.predict(self.x) - keras_out) / scale
        d["litert_within_1lsb"] = float((lite_lsb <= 1.001).mean())
        d["litert_max_lsb"] = float(lite_lsb.max())
        interpreter = None
        for arena in (4 << 20, 64 << 20):
            try:
                interpreter = make_tflm(parsed.data, arena_size=arena)
                break
            except Exception as exc:  # arena too small: once more with a larger one
                if arena == 64 << 20:
                    raise
                d["tflm_first_try"] = error_record(exc)["message"][:200]
        tflm = []
        for i in range(len(self.x)):
            interpreter.set_input(runner.quantize_input(self.x[i : i + 1]), 0)
            interpreter.invoke()
            tflm.append(runner.dequantize_output(np.array(interpreter.get_output(0))))
        micro_lsb = np.abs(np.concatenate(tflm) - keras_out) / scale
        d["tflm_within_1lsb"] = float((micro_lsb <= 1.001).mean())
        d["tflm_max_lsb"] = float(micro_lsb.max())

    def bayesian(self, d: dict) -> None:
        import numpy as np

        import tfcompress

        bayes = _api("tfcompress.bayesian")
        bm = bayes.convert(self.model, "dirichlet", dataset_size=100)
        layers = bayes.structure(bm)
        d["scored_layers"] = len(layers)
        keep = {name: max(1, info["total"] // 2) for name, info in layers.items()}
        masked = bayes.prune_to(bm, keep)
        d["channels_masked"] = int(sum(masked.values()))
        d["channels_scored"] = int(sum(info["total"] for info in layers.values()))
        y_bayes = bm.predict(self.x, verbose=0)
        stripped = bayes.strip(bm)
        y_stripped = stripped.predict(self.x, verbose=0)
        d["max_abs_diff_bayes_vs_stripped"] = float(np.abs(y_bayes - y_stripped).max())
        shrunk, report = tfcompress.shrink(stripped, return_report=True)
        d["max_abs_diff_stripped_vs_shrunk"] = float(np.abs(y_stripped - shrunk.predict(self.x, verbose=0)).max())
        d["macs_ratio"] = round(report.macs_ratio, 3)
        d["params_ratio"] = round(report.params_ratio, 3)
        d["num_shrink_notes"] = len(report.notes)
        d["shrink_notes"] = report.notes[:4]

    def roundtrip(self, d: dict) -> None:
        import keras
        import numpy as np

        failures = []
        for key in ("pruned", "qat"):
            if key not in self.state:
                d[key] = "skipped (its step failed)"
                d.setdefault("partial", []).append(key)
                continue
            if key == "qat" and self.result["steps"].get("qat", {}).get("status") != "ok":
                d["qat_model"] = "quantize(skip_layers=[head]) (the plain quantize failed)"
            model = self.state[key]
            path = self.tmp / f"{key}.keras"
            try:
                before = model.predict(self.x, verbose=0)
                model.save(path)
                loaded = keras.saving.load_model(path)
                after = loaded.predict(self.x, verbose=0)
                d[key] = {"status": "ok", "max_abs_diff": float(np.abs(before - after).max()),
                          "bytes": path.stat().st_size}
            except Exception as exc:
                d[key] = {"status": "error", "error": error_record(exc)}
                failures.append(f"{key}: {type(exc).__name__}")
        if failures:
            raise RuntimeError("round trip failed for " + ", ".join(failures))
        if not any(isinstance(d[k], dict) for k in ("pruned", "qat")):
            raise RuntimeError("nothing to round-trip (channel and qat steps failed)")


def worker_main(name: str, out: Path, *, recalibrate_bn: bool, skip: frozenset[str], redo: frozenset[str],
                crash_log: Path | None) -> None:
    import faulthandler

    if crash_log is not None:  # fd 2 is redirected while TFLM runs: write the crash stack elsewhere
        log = open(crash_log, "w")  # noqa: SIM115  (open for the life of the process)
        faulthandler.enable(file=log)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import tfcompress  # noqa: F401  (registers the serializable layers)

    with tempfile.TemporaryDirectory(prefix=f"survey_{name}_") as tmp:
        worker = Worker(name, out, Path(tmp), recalibrate_bn=recalibrate_bn, skip=skip, redo=redo)
        try:
            worker.build()
        except Exception as exc:
            worker.result["build_error"] = error_record(exc)
            worker.save()
            return
        worker.run("ptq", worker.ptq)
        worker.run("micro", worker.micro, needs=("ptq_file",))
        worker.run("edgetpu", worker.edgetpu, needs=("ptq_file",))
        worker.run("channel", worker.channel)
        worker.run("nm24", worker.nm24)
        worker.run("qat", worker.qat)
        worker.run("bayesian", worker.bayesian)
        worker.run("roundtrip", worker.roundtrip)
        worker.result["done"] = True
        worker.save()


# ------------------------------------------------------------------------------------ driver


def _crash_frames(text: str) -> dict:
    """The innermost frame and the innermost tfcompress frame of a faulthandler dump."""
    import re

    frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', text)
    out: dict = {}
    if frames:
        filename, line, func = frames[0]  # faulthandler lists the most recent call first
        module = _module_of(filename)
        out["origin"] = f"{module or _origin(filename)}:{line} ({func})"
        for filename, line, func in frames:
            module = _module_of(filename)
            if module:
                out["module"], out["where"] = module, f"{module} ({func}, line {line})"
                break
    signal = re.search(r"Fatal Python error: (.+)", text)
    if signal:
        out["signal"] = signal.group(1).strip()
    return out


def _launch(name: str, out: Path, crash_log: Path, timeout: float, recalibrate_bn: bool,
            skip: set[str], redo: set[str]) -> tuple[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, __file__, "--worker", name, "--worker-out", str(out), "--crash-log", str(crash_log)]
    if not recalibrate_bn:
        command.append("--no-recalibrate-bn")
    if skip:
        command += ["--skip", ",".join(sorted(skip))]
    if redo:
        command += ["--redo", ",".join(sorted(redo))]
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        return f"timeout after {timeout:.0f} s", ""
    if proc.returncode != 0:
        tail = "\n".join(line for line in proc.stderr.strip().splitlines()[-8:])
        return f"crashed (exit code {proc.returncode})", tail
    return "done", ""


def run_net(name: str, timeout: float, recalibrate_bn: bool = True) -> dict:
    """Run one network's steps in subprocesses, within ``timeout`` seconds in all: after a crash, a
    new subprocess goes on with the steps after the one that crashed."""
    workdir = Path(tempfile.mkdtemp(prefix=f"survey_{name}_"))
    out, crash_log = workdir / "result.json", workdir / "crash.txt"
    started = time.perf_counter()
    result: dict = {"net": name, "steps": {}}
    runs = []
    skip: set[str] = set()
    while True:
        remaining = timeout - (time.perf_counter() - started)
        redo = {s for s in skip if s in DEPENDENTS and result["steps"].get(s, {}).get("status") not in ("crash",)
                and any(d not in skip for d in DEPENDENTS[s])}
        status, tail = _launch(name, out, crash_log, remaining, recalibrate_bn, skip, redo)
        runs.append(status)
        try:
            part = json.loads(out.read_text())
        except (OSError, json.JSONDecodeError):
            part = {"net": name, "steps": {}}
        steps = {**result["steps"], **{k: v for k, v in part.get("steps", {}).items() if k not in skip}}
        result = {**result, **{k: v for k, v in part.items() if k != "steps"}, "steps": steps}
        running = [s for s, r in steps.items() if r.get("status") == "running"]
        for step in running:  # what the subprocess was doing when it died
            record = steps[step]
            if status.startswith("timeout"):
                record.update(status="timeout", error={"type": "timeout", "message": status})
            else:
                crash = _crash_frames(crash_log.read_text() if crash_log.exists() else "")
                message = f"{status}: {crash.get('signal', 'no Python error')}"
                record.update(status="crash", error={"type": "crash", "message": message, **crash,
                                                     "stderr_tail": tail[-600:]})
        if not status.startswith("crashed") or not running or result.get("done"):
            break
        skip = {s for s, r in steps.items() if r.get("status") != "running"} | set(running)
        if timeout - (time.perf_counter() - started) < 5:
            break
    result["subprocess"] = "; ".join(runs)
    result["seconds"] = round(time.perf_counter() - started, 1)
    for path in (out, crash_log):
        path.unlink(missing_ok=True)
    workdir.rmdir()
    return result


def _cell(record: dict | None) -> str:
    if record is None:
        return "-"
    status = record.get("status")
    if status == "ok":
        missing = record.get("partial")
        return f"ok {record.get('seconds', 0):.0f}s" + (f" (no {'/'.join(missing)})" if missing else "")
    if status == "error":
        error = record["error"]
        module = (error.get("module") or "").replace("tfcompress.", "")
        return f"{error['type']}" + (f" @{module}" if module else "")
    if status == "skipped":
        return "skipped"
    return status or "?"


def table(results: list[dict]) -> str:
    width = max(len(r["net"]) for r in results) + 1
    cells = [[_cell(r["steps"].get(s)) for s in STEPS] for r in results]
    widths = [max(len(s), *(len(c[i]) for c in cells)) for i, s in enumerate(STEPS)]
    lines = ["net".ljust(width) + " | " + " | ".join(s.ljust(w) for s, w in zip(STEPS, widths, strict=True)) + " | run"]
    lines.append("-" * len(lines[0]))
    for r, row in zip(results, cells, strict=True):
        lines.append(r["net"].ljust(width) + " | " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                     + f" | {r['subprocess']} {r['seconds']:.0f}s")
    lines.append("")
    lines.append("errors:")
    for r in results:
        if "build_error" in r:
            e = r["build_error"]
            lines.append(f"  {r['net']} build: {e['type']}: {e['message']}")
        for s in STEPS:
            rec = r["steps"].get(s)
            if rec and rec.get("status") in ("error", "timeout", "crash"):
                e = rec["error"]
                where = f" [{e['where']}]" if e.get("where") else ""
                detail = f" -- {e['detail']}" if e.get("detail") else ""
                lines.append(f"  {r['net']} {s}: {e['type']}: {e['message']}{detail}{where}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="*", help="zoo names (default: all)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per network subprocess")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-recalibrate-bn", dest="recalibrate_bn", action="store_false",
                        help="keep the random initialisation's BN statistics (by default they are set to "
                             "those of the random calibration inputs)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--crash-log", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--skip", default="", help=argparse.SUPPRESS)
    parser.add_argument("--redo", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.worker_out, recalibrate_bn=args.recalibrate_bn,
                    skip=frozenset(filter(None, args.skip.split(","))),
                    redo=frozenset(filter(None, args.redo.split(","))), crash_log=args.crash_log)
        return
    import tfcompress
    from tfcompress.zoo import ZOO

    package = str(Path(tfcompress.__file__).resolve().parent)

    names = args.nets or list(ZOO)
    unknown = sorted(set(names) - set(ZOO))
    if unknown:
        parser.error(f"unknown nets {unknown}; the zoo has {sorted(ZOO)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = {}
    if args.out.exists():
        try:
            previous = {r["net"]: r for r in json.loads(args.out.read_text())["results"]}
        except (json.JSONDecodeError, KeyError, TypeError):
            previous = {}
    for name in names:  # one network at a time
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        result = run_net(name, args.timeout, args.recalibrate_bn)
        previous[name] = result
        ordered = [previous[n] for n in ZOO if n in previous]
        args.out.write_text(json.dumps({"tfcompress": package, "timeout_seconds": args.timeout,
                                        "recalibrate_bn": args.recalibrate_bn,
                                        "calibration_samples": CALIBRATION,
                                        "eval_samples": EVAL, "results": ordered}, indent=1, default=str))
        print("   " + "  ".join(f"{s}={_cell(result['steps'].get(s))}" for s in STEPS)
              + f"  ({result['subprocess']}, {result['seconds']:.0f}s)", flush=True)
    ordered = [previous[n] for n in ZOO if n in previous and n in names]
    print()
    print(table(ordered))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
