"""The `tfcompress` command: convert, inspect, bench, micro, edgetpu, demo.

Bad input gives one error line on stderr and a non-zero exit (no traceback
unless ``--verbose``): 1 for bad input or a failed check, 2 for a usage error
or a delegate that does not load. TensorFlow is imported only by the commands
that need it, so ``inspect`` and ``--help`` answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _progress(args, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"tfcompress: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _native_stderr_captured(verbose: bool) -> Iterator[None]:
    """Hide what TensorFlow's C++ code prints to fd 2 (converter chatter) unless --verbose."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    # Python's own messages (progress, warnings we print) still reach the terminal: only what
    # native code writes to fd 2 goes to the sink.
    terminal = os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(python_stderr, "encoding", None))
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        sys.stderr = terminal
        try:
            yield
        finally:
            terminal.flush()
            sys.stderr = python_stderr
            terminal.close()
            os.dup2(saved, 2)
            os.close(saved)


def _print_json(payload) -> None:
    print(json.dumps(payload, indent=2, default=str))


# ----------------------------------------------------------------------------- commands


def cmd_convert(args) -> int:
    """``tfcompress convert``: a `.keras` model (or a float `.tflite`) to a checked `.tflite` file; the exit status.

    Example:
        >>> import keras, numpy as np
        >>> keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)]).save("model.keras")
        >>> np.save("x.npy", np.ones((4, 8), "float32"))
        >>> cmd_convert(build_parser().parse_args(["convert", "model.keras", "-o", "model.tflite", "--calibration", "x.npy",
        ...                                        "--quiet"]))
        wrote model.tflite
          quantization   int8   I/O int8
        ...
        0
    """
    from tfcompress.errors import CalibrationDataError, TfcompressError
    from tfcompress.export.calibration import load_calibration_file
    from tfcompress.export.convert import load_keras_model, to_tflite, uses_fake_quant

    quantization = {"int8": "int8", "int16x8": "int16x8", "int4": "int4", "int4_weight_only": "int4_weight_only",
                    "float16": "float16", "dynamic": "dynamic", "float32": None}[args.mode]
    output = Path(args.output)
    if output.suffix != ".tflite":
        raise TfcompressError("output file must end in .tflite", str(output), "e.g. -o model.tflite")
    precision = _parse_precision(args.precision) if args.precision else None
    # Read the calibration file before the model: a bad file fails fast.
    calibration = load_calibration_file(args.calibration, args.samples) if args.calibration else None
    if Path(args.model).suffix == ".tflite":
        return _convert_tflite(args, quantization, calibration, precision)
    _progress(args, f"loading {args.model}")
    with _native_stderr_captured(args.verbose):
        model = load_keras_model(args.model)
    if quantization in ("int8", "int16x8", "int4") and calibration is None and not uses_fake_quant(model):
        # A QAT model carries its learned ranges; anything else needs calibration inputs.
        raise CalibrationDataError(
            f"--{args.mode} needs calibration inputs",
            "--calibration",
            "pass --calibration calib.npz (numpy.savez('calib.npz', x=train_inputs[:500]))",
        )
    _progress(args, f"converting to {args.mode} TFLite")
    with _native_stderr_captured(args.verbose):
        report = to_tflite(
            model,
            output,
            quantization,
            representative_data=calibration,
            io_dtype=args.io_dtype,
            allow_float_fallback=args.allow_float_fallback,
            dense_as_conv=args.dense_as_conv,
            batch_size=None if args.dynamic_batch else 1,
            calibration_samples=args.samples or 500,
            precision=precision,
        )
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.text())
    return EXIT_OK


def _parse_precision(text: str) -> dict[str, str]:
    """``--precision fc1=int4,fc2=int8`` -> {"fc1": "int4", "fc2": "int8"}."""
    from tfcompress.errors import TfcompressError

    found = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or not name or not value:
            raise TfcompressError(f"cannot read {item!r} in --precision {text!r}", "--precision",
                                  "write NAME=PRECISION pairs separated by commas, e.g. --precision fc1=int4,fc2=int8")
        found[name] = value
    return found


def _convert_tflite(args, quantization, calibration, precision) -> int:
    """`tfcompress convert float.tflite --int8 | --int16x8 | --int4 --calibration ...`."""
    from tfcompress.errors import CalibrationDataError, TfcompressError
    from tfcompress.export.precision import FILE_QUANTIZATIONS, quantize_tflite

    if quantization not in FILE_QUANTIZATIONS:
        raise TfcompressError(f"a .tflite input can be quantized to {', '.join(FILE_QUANTIZATIONS)}, "
                              f"not --{args.mode}", args.model,
                              "pass --int8, --int16x8, --int4 or --int4-weight-only (or convert the .keras model)")
    for flag, given in (("--dense-as-conv", args.dense_as_conv), ("--dynamic-batch", args.dynamic_batch)):
        if given:
            raise TfcompressError(f"{flag} needs the .keras model", flag, "convert the .keras model instead")
    if calibration is None and quantization != "int4_weight_only":
        raise CalibrationDataError(f"--{args.mode} of a .tflite file needs calibration inputs", "--calibration",
                                   "pass --calibration samples.npy (numpy.save('samples.npy', train_inputs[:500]))")
    _progress(args, f"quantizing {args.model} to {args.mode}")
    with _native_stderr_captured(args.verbose):
        report = quantize_tflite(args.model, args.output, calibration, quantization, io_dtype=args.io_dtype,
                                 precision=precision, calibration_samples=args.samples or 500,
                                 allow_float_fallback=args.allow_float_fallback)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.text())
    return EXIT_OK


def cmd_inspect(args) -> int:
    """``tfcompress inspect``: size, ops, int8 coverage, tensors and Edge TPU readiness of a `.tflite` file.

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> _ = to_tflite(keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)]), "model.tflite", quantization=None)
        >>> cmd_inspect(build_parser().parse_args(["inspect", "model.tflite"]))
        model.tflite
          size ...
          ops            1: FULLY_CONNECTED x1
        ...
        0
    """
    from tfcompress.export.tflite_file import load_tflite

    model = load_tflite(args.model)
    summary = model.summary()
    comparison = _compare(args) if args.compare else None
    readiness = None
    try:
        from tfcompress.export.edgetpu import edgetpu_report

        readiness = edgetpu_report(model, compiler="off")
    except ImportError:  # pragma: no cover - module always shipped
        readiness = None
    plotted = _plot(args, model, comparison) if args.plot else None
    if args.json:
        if plotted is not None:
            summary["plot"] = plotted
        if readiness is not None:
            summary["edgetpu"] = readiness.to_dict()
        summary["tensors"] = [
            {
                "index": t.index,
                "name": t.name,
                "dtype": t.dtype.lower(),
                "shape": list(t.shape),
                "constant": t.constant,
                "scales": list(t.quantization.scales[:8]) if t.quantization else [],
                "per_channel": bool(t.quantization and t.quantization.per_channel),
            }
            for t in model.tensors[0]
        ]
        if comparison is not None:
            summary["compare"] = comparison.to_dict()
        _print_json(summary)
        return EXIT_OK
    print(f"{args.model}")
    print(f"  size           {model.size_bytes:,} bytes (gzip {model.gzip_size_bytes:,})")
    print(f"  ops            {len(model.ops)}: " + ", ".join(f"{k} x{v}" for k, v in sorted(model.op_counts().items())))
    print(f"  int8 coverage  {model.int8_coverage():.1%}")
    if summary["float_ops"]:
        print(f"  float ops      {', '.join(summary['float_ops'])}")
    stats = model.weight_stats()
    if stats["weight_elements"]:
        print(
            f"  weights        {stats['weight_elements']:,} values, {stats['weight_bytes']:,} bytes, "
            f"{stats['weight_zeros'] / stats['weight_elements']:.1%} zeros"
        )
    if summary["int4_tensors"]:
        print(f"  int4 tensors   {summary['int4_tensors']}")
    if summary["offset_buffers"]:
        print(f"  offset buffers {summary['offset_buffers']} stored after the flatbuffer, "
              f"{summary['offset_buffer_bytes']:,} bytes (TFLite Micro cannot read them: "
              "tfcompress.export.inline_buffers moves them inside)")
    print("  ops and tensors:")
    for op in model.ops:
        outs = [model.tensor(i, op.subgraph) for i in op.outputs if i >= 0]
        ins = [model.tensor(i, op.subgraph) for i in op.inputs if i >= 0]
        print(f"    #{op.index:<3} {op.name:<22} " + " ".join(_tensor_brief(t) for t in ins) + " -> " + " ".join(_tensor_brief(t) for t in outs))
    for kind, tensors in (("input", model.inputs), ("output", model.outputs)):
        for t in tensors:
            print(f"  {kind:<6} {t.name}: {_tensor_brief(t, full=True)}")
    if readiness is not None:
        print(f"  edge tpu       {readiness.one_line()}")
    if comparison is not None:
        print(comparison.text())
    if plotted is not None:
        print(f"  plot           {plotted}")
    return EXIT_OK


def _plot(args, model, comparison) -> str:
    """`inspect --plot`: the per-layer error chart of --compare, else where the file's bytes are."""
    from tfcompress import plots

    if comparison is not None:
        return plots.layer_error_plot(comparison, args.plot, title=f"{args.model} against {args.compare}")
    return plots.op_bytes_plot(model, args.plot, title=f"{args.model}: {model.size_bytes:,} bytes")


def _compare(args):
    """`inspect --compare`: the per-layer error against the float reference on --samples."""
    from tfcompress.errors import TfcompressError
    from tfcompress.export.calibration import load_calibration_file
    from tfcompress.export.compare import compare

    if not args.samples:
        raise TfcompressError("--compare needs --samples", "--samples", "pass --samples calib.npz (model inputs)")
    samples = load_calibration_file(args.samples)
    with _native_stderr_captured(args.verbose):
        return compare(args.compare, args.model, samples, isolate=not args.in_process)


def _tensor_brief(t, full: bool = False) -> str:
    shape = "x".join(str(d) for d in t.shape) or "scalar"
    text = f"{t.dtype.lower()}[{shape}]"
    q = t.quantization
    if q is not None:
        if q.per_channel:
            text += f"(per-channel x{len(q.scales)})"
        elif full:
            text += f"(scale={q.scales[0]:.6g}, zero_point={q.zero_points[0]})"
        else:
            text += "(q)"
    if t.constant and not full:
        text = "const:" + text
    return text


def cmd_bench(args) -> int:
    """``tfcompress bench``: the latency of `.tflite` files, measured interleaved (`tfcompress.export.benchmark`).

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> _ = to_tflite(keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)]), "model.tflite", quantization=None)
        >>> cmd_bench(build_parser().parse_args(["bench", "model.tflite", "--runs", "5", "--warmup", "1", "--in-process",
        ...                                      "--json"]))
        {
          "results": [
            {
              "path": "model.tflite",
        ...
              "runs": 5,
        ...
          "warmup": 1,
        ...
        0
    """
    from tfcompress.export.bench import benchmark

    interactive = sys.stderr.isatty() and not args.quiet

    def progress(done: int, total: int) -> None:
        if interactive and (done == total or done % max(1, total // 20) == 0):
            print(f"\rtfcompress: benchmarking {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    isolate = not args.in_process
    _progress(args, f"benchmarking {len(args.models)} model(s): {args.warmup} warm-up + {args.runs} runs each, interleaved"
              + (" (in a child process)" if isolate else ""))
    report = benchmark(
        args.models,
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        delegate=args.delegate,
        runtime=args.runtime,
        progress=None if isolate else progress,
        isolate=isolate,
    )
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.text())
    return EXIT_OK


def cmd_micro(args) -> int:
    """``tfcompress micro``: TFLite Micro C sources and the measured arena (`tfcompress.export.to_micro`).

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> _ = to_tflite(model, "model.tflite", "int8", np.ones((4, 8), "float32"), dense_as_conv=True)
        >>> os.makedirs("firmware", exist_ok=True)
        >>> cmd_micro(build_parser().parse_args(["micro", "model.tflite", "-o", "firmware", "--in-process", "--quiet"]))
        TFLite Micro export of model.tflite
        ...
        0
    """
    from tfcompress.export.micro import to_micro

    _progress(args, f"writing TFLite Micro sources to {args.output} and verifying on the TFLM interpreter")
    with _native_stderr_captured(args.verbose):
        report = to_micro(args.model, args.output, name=args.name, num_samples=args.samples,
                          isolate=not args.in_process)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.text())
    return EXIT_OK if report.identical else EXIT_FAILED


def cmd_edgetpu(args) -> int:
    """``tfcompress edgetpu``: the Edge TPU readiness of a `.tflite` file (`tfcompress.export.edgetpu_report`).

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> _ = to_tflite(keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)]), "model.tflite", "int8", np.ones((4, 8)))
        >>> cmd_edgetpu(build_parser().parse_args(["edgetpu", "model.tflite"]))
        Edge TPU readiness: model.tflite
          verdict     READY (1 ops on Edge TPU, 0 on CPU)
        ...
        0
    """
    from tfcompress.export.edgetpu import edgetpu_report

    report = edgetpu_report(args.model, compiler="off" if args.static else "auto")
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.text())
    return EXIT_OK if report.ready else EXIT_FAILED


def _demo_message(args, message: str) -> None:
    """The demo's progress and its results table are its output: stdout, unless --json owns it."""
    if args.json:
        _progress(args, message)
    elif not args.quiet or "\n" in message:  # --quiet keeps the results table only
        print(message, flush=True)


def cmd_demo(args) -> int:
    """``tfcompress demo``: the README's main job (`tfcompress.demo.run_demo`)."""
    from tfcompress.demo import run_demo

    with _native_stderr_captured(args.verbose):
        result = run_demo(
            out_dir=args.output,
            dataset=args.dataset,
            epochs=args.epochs,
            runs=args.runs,
            log=lambda message: _demo_message(args, message),
        )
    if args.json:
        _print_json(result)
    return EXIT_OK if result.get("passed", False) else EXIT_FAILED


# ----------------------------------------------------------------------------- parser

_IN_PROCESS_HELP = ("run the interpreters in this process (by default they run in a child process, so a file "
                    "that crashes them gives one error line naming the op)")


def build_parser() -> argparse.ArgumentParser:
    """The ``tfcompress`` argument parser: one sub-command per ``cmd_*`` function.

    Example:
        >>> args = build_parser().parse_args(["bench", "a.tflite", "b.tflite", "--runs", "50"])
        >>> args.command, args.models, args.runs, args.warmup
        ('bench', ['a.tflite', 'b.tflite'], 50, 20)
    """
    parser = argparse.ArgumentParser(
        prog="tfcompress",
        description="Compress Keras 3 models and export verified int8 TFLite for LiteRT, TFLite Micro and Edge TPU.",
        formatter_class=_Formatter,
        epilog="example:\n  tfcompress convert model.keras -o model.tflite --int8 --calibration calib.npz\n"
        "  tfcompress inspect model.tflite\n  tfcompress bench model.tflite float.tflite --runs 500",
    )
    from tfcompress import __version__

    parser.add_argument("--version", action="version", version=f"tfcompress {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="show tracebacks and TensorFlow's own messages")
    common.add_argument("--quiet", action="store_true", help="no progress messages")
    common.add_argument("--json", action="store_true", help="print the report as JSON")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "convert",
        parents=[common],
        formatter_class=_Formatter,
        help="convert a .keras model to .tflite",
        description="Convert a Keras 3 .keras model to TFLite, or quantize a float .tflite file. --int8 is "
        "full-integer: every op int8, per-channel weights; the command fails naming any op left in float.",
        epilog="example:\n  python -c \"import numpy as np; np.savez('calib.npz', x=x_train[:500])\"\n"
        "  tfcompress convert model.keras -o model.tflite --int8 --calibration calib.npz --samples 300\n"
        "  tfcompress convert float.tflite -o int16x8.tflite --int16x8 --calibration calib.npz\n"
        "  tfcompress convert model.keras -o int4.tflite --int8 --precision fc1=int4 --calibration calib.npz",
    )
    p.add_argument("model", help="the .keras file, or a float .tflite file to quantize (--int8 / --int16x8 / --int4)")
    p.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    mode = p.add_mutually_exclusive_group()
    for name, text in (
        ("int8", "full-integer int8 (needs --calibration unless the model is QAT)"),
        ("int16x8", "TFLite's 16x8 mode: int16 activations, int8 weights (needs --calibration; post-training only)"),
        ("int4", "int8 activations, int4 FULLY_CONNECTED / CONV_2D weights (needs --calibration and "
                 "tfcompress[int4])"),
        ("int4_weight_only", "int4 weights dequantized to float32 in the graph, float compute (LiteRT only; "
                             "tfcompress[int4])"),
        ("float16", "float16 weights"),
        ("dynamic", "dynamic-range: int8 weights, float activations"),
        ("float32", "no quantization"),
    ):
        mode.add_argument(f"--{name.replace('_', '-')}", dest="mode", action="store_const", const=name, help=text)
    p.set_defaults(mode="int8")
    p.add_argument("--calibration", help=".npz (key 'x', else all arrays in order) or .npy of model inputs")
    p.add_argument("--samples", type=_positive_int, default=None, help="use at most N calibration samples (default 500)")
    p.add_argument("--io-dtype", choices=("int8", "uint8", "int16", "float32"), default=None,
                   help="I/O type of an integer model (default int8; int16 for --int16x8)")
    p.add_argument("--precision", metavar="NAME=P[,NAME=P]",
                   help="per-layer weight precision, int4 or int8, over --int8 / --int4 (Keras layer names; for a "
                        ".tflite input the op's output or weight tensor name), e.g. fc1=int4")
    p.add_argument("--allow-float-fallback", action="store_true", help="accept ops left in float with --int8")
    p.add_argument("--dynamic-batch", action="store_true", help="keep the batch dimension dynamic (default: static batch 1)")
    p.add_argument("--dense-as-conv", action="store_true",
                   help="write Dense layers as 1x1 CONV_2D (TFLite Micro then equals LiteRT's reference kernels "
                        "bit for bit; their FULLY_CONNECTED kernels round differently)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "inspect",
        parents=[common],
        formatter_class=_Formatter,
        help="ops, tensors, quantization, sizes, int8 coverage, Edge TPU readiness of a .tflite",
        description="Describe a .tflite file without running it (the file is validated first); --compare runs it "
        "and its float reference on --samples for the per-layer error.",
        epilog="example:\n  tfcompress inspect model.tflite\n  tfcompress inspect model.tflite --json\n"
        "  tfcompress inspect int8.tflite --compare float.tflite --samples calib.npz\n"
        "  tfcompress inspect int8.tflite --compare float.tflite --samples calib.npz --plot errors.png",
    )
    p.add_argument("model", help="the .tflite file")
    p.add_argument("--compare", metavar="REFERENCE",
                   help="also run the file and its float reference (.tflite or .keras) on --samples and report "
                        "each layer's SNR, cosine and error in LSB, worst first")
    p.add_argument("--samples", metavar="NPZ", help="inputs for --compare (.npz key 'x', or .npy)")
    p.add_argument("--in-process", action="store_true", help=_IN_PROCESS_HELP)
    p.add_argument("--plot", metavar="PNG",
                   help="write a chart: the per-layer error with --compare, else the constant bytes per op "
                        "(needs matplotlib: pip install \"tfcompress[plot]\")")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "bench",
        parents=[common],
        formatter_class=_Formatter,
        help="latency of one or more .tflite files, measured interleaved",
        description="p50/p90/p99/mean/std latency and throughput on LiteRT (tflite_runtime where the device "
        "has only that). Several files run interleaved in one process; each gets its p50 ratio to the first.",
        epilog="example:\n  tfcompress bench int8.tflite float32.tflite --runs 500 --warmup 50 --threads 1\n"
        "  tfcompress bench model_edgetpu.tflite --delegate edgetpu --runtime tflite_runtime",
    )
    p.add_argument("models", nargs="+", help=".tflite files; ratios are relative to the first")
    p.add_argument("--runs", type=_positive_int, default=200, help="timed runs per file")
    p.add_argument("--warmup", type=_non_negative_int, default=20, help="untimed runs per file first")
    p.add_argument("--threads", type=_positive_int, default=1, help="interpreter threads")
    p.add_argument("--delegate", default="xnnpack", help="xnnpack | none | edgetpu | PATH.so")
    p.add_argument("--runtime", choices=("auto", "litert", "tflite_runtime"), default="auto", help="interpreter package")
    p.add_argument("--in-process", action="store_true", help=_IN_PROCESS_HELP)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "micro",
        parents=[common],
        formatter_class=_Formatter,
        help="C sources for TFLite Micro, verified on the real TFLM interpreter",
        description="Write NAME_model_data.h/.cc, NAME_op_resolver.h and a report with the measured tensor "
        "arena; check that TFLM's outputs equal LiteRT's reference kernels on sample inputs.",
        epilog="example:\n  tfcompress micro model.tflite -o firmware/model --name lenet",
    )
    p.add_argument("model", help="the .tflite file")
    p.add_argument("-o", "--output", required=True, help="directory to write the sources to")
    p.add_argument("--name", default="model", help="C identifier prefix")
    p.add_argument("--samples", type=_positive_int, default=8, help="random inputs to compare TFLM and LiteRT on")
    p.add_argument("--in-process", action="store_true", help=_IN_PROCESS_HELP)
    p.set_defaults(func=cmd_micro)

    p = sub.add_parser(
        "edgetpu",
        parents=[common],
        formatter_class=_Formatter,
        help="Edge TPU readiness report",
        description="Check a .tflite against the Edge TPU compiler's documented requirements and list every op "
        "that would fall back to the CPU, and why. Runs edgetpu_compiler when it is on PATH.",
        epilog="example:\n  tfcompress edgetpu model.tflite\n  tfcompress edgetpu model.tflite --static --json",
    )
    p.add_argument("model", help="the .tflite file")
    p.add_argument("--static", action="store_true", help="do not run edgetpu_compiler even if it is installed")
    p.set_defaults(func=cmd_edgetpu)

    p = sub.add_parser(
        "demo",
        parents=[common],
        formatter_class=_Formatter,
        help="the whole road on a built-in default: train, compress, export int8, verify, bench, micro",
        description="Train LeNet-5-Caffe on Fashion-MNIST (or scikit-learn's digits when Fashion-MNIST is not "
        "installed), export full int8, verify on LiteRT and TFLite Micro, benchmark, write the C sources.",
        epilog="example:\n  tfcompress demo --out demo_out\n  tfcompress demo --dataset digits --epochs 3",
    )
    p.add_argument("--out", dest="output", default="tfcompress_demo", help="output directory")
    p.add_argument("--dataset", choices=("auto", "fashion_mnist", "digits"), default="auto", help="training data")
    p.add_argument("--epochs", type=_positive_int, default=3, help="training epochs")
    p.add_argument("--runs", type=_positive_int, default=200, help="benchmark runs per file")
    p.set_defaults(func=cmd_demo)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _one_line(exc: BaseException) -> str:
    """The error on one line: messages quoted from an interpreter can hold newlines."""
    return " ".join(str(exc).split())


def main(argv: Sequence[str] | None = None) -> int:
    """The ``tfcompress`` command (and ``python -m tfcompress``): run ``argv``, return the exit status
    (0; 1 with a one-line error for bad input).

    Example:
        >>> main(["inspect", "missing.tflite"])                     # one line on stderr, exit status 1
        1
        >>> main(["--version"])
        Traceback (most recent call last):
        ...
        SystemExit: 0
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    from tfcompress.errors import DelegateError, TfcompressError

    try:
        return args.func(args)
    except DelegateError as exc:
        if args.verbose:
            raise
        print(f"tfcompress {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except TfcompressError as exc:
        if args.verbose:
            raise
        print(f"tfcompress {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"tfcompress {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: still one line unless --verbose
        if args.verbose:
            if getattr(exc, "child_traceback", ""):
                print(exc.child_traceback, file=sys.stderr)
            raise
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(
            f"tfcompress {args.command}: error: {type(exc).__name__}: {first} (run with --verbose for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
