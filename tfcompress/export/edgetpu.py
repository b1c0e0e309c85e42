"""Edge TPU readiness: what the Edge TPU compiler would map, and what would fall back to the CPU.

:func:`edgetpu_report` reads a ``.tflite`` file without an interpreter (it is validated first
by :func:`tfcompress.export.tflite_file.load_tflite`) and checks it against the requirements
Coral documents for the Edge TPU compiler. When ``edgetpu_compiler`` is on ``PATH`` it is also
run, and its operation log replaces the static op verdicts (the compiler is the authority; the
static rules explain *why*). Without the compiler the report says that it is static.

Where each rule comes from (Coral documentation, "TensorFlow models on the Edge TPU",
https://coral.ai/docs/edgetpu/models-intro/, and "Edge TPU Compiler",
https://coral.ai/docs/edgetpu/compiler/):

``quantized`` (models-intro, "Model requirements")
    "Tensor parameters are quantized (8-bit fixed-point numbers; int8 or uint8)." Every op
    must compute in 8-bit integers (int32 biases are part of int8 quantization). An op with
    float tensors is not mapped.
``static-shapes`` (models-intro, "Model requirements")
    "Tensor sizes are constant at compile-time (no dynamic sizes)" and "Model parameters (such
    as bias tensors) are constant at compile-time." A ``-1`` in a tensor's shape signature
    (a dynamic batch, e.g. ``to_tflite(..., batch_size=None)``) fails this.
``batch-1`` / ``tensor-rank`` (models-intro, "Model requirements")
    "Tensors are either 1-, 2-, or 3-dimensional. If a tensor has more than 3 dimensions, then
    only the 3 innermost dimensions may have a size greater than 1." For NHWC image tensors
    this means batch size 1.
``supported-ops`` (models-intro, "Supported operations" table and its "Known limitations")
    The op table below (:data:`SUPPORTED_OPS`) with the per-op limitations that can be read
    from the file: no fused activation on pooling and concatenation; equal x/y dilation for
    convolutions; fully-connected weights in the default format and a one-dimensional output;
    no batch-dimension reduction, padding, packing or splitting; Softmax on a 1-D input of at
    most 16,000 elements; StridedSlice only with all strides 1 and no ellipsis/new-axis masks;
    a constant Concatenation input only as a 2-input zero pad.
``partition`` (models-intro, "Compiling" / compiler page, "Model partitioning")
    "The compiler cannot partition the model more than once, so as soon as an unsupported
    operation occurs, that operation and everything after it executes on the CPU, even if
    supported operations occur later." Ops are listed in the file's execution order.
``parameter-memory`` (compiler page, "Parameter data caching")
    The Edge TPU has roughly 8 MB of SRAM to cache model parameters; parameters beyond it are
    streamed from host memory on every inference, which is slower. A warning, not a failure.
``op-versions`` (compiler page, log status "Operation version not supported")
    The last compiler release (16.0) predates recent TensorFlow converters; it may reject an
    op version it does not know. This cannot be decided statically, so it is a note; only
    running the compiler settles it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tfcompress.errors import TfcompressError
from tfcompress.export.tflite_file import OpInfo, TFLiteModel, load_tflite

MODELS_INTRO = "https://coral.ai/docs/edgetpu/models-intro/"
COMPILER_DOC = "https://coral.ai/docs/edgetpu/compiler/"

#: Parameter cache of the Edge TPU (compiler page, "Parameter data caching": "about 8 MB").
ON_CHIP_PARAMETER_BYTES = 8 * 1024 * 1024
#: Softmax limit from the supported-operations table.
SOFTMAX_MAX_ELEMENTS = 16_000

#: TFLite builtin op name -> the name in Coral's supported-operations table.
SUPPORTED_OPS: dict[str, str] = {
    "ADD": "Add",
    "AVERAGE_POOL_2D": "AveragePool2d",
    "CONCATENATION": "Concatenation",
    "CONV_2D": "Conv2d",
    "DEPTHWISE_CONV_2D": "DepthwiseConv2d",
    "EXPAND_DIMS": "ExpandDims",
    "FULLY_CONNECTED": "FullyConnected",
    "HARD_SWISH": "HardSwish",
    "L2_NORMALIZATION": "L2Normalization",
    "LOGISTIC": "Logistic",
    "LSTM": "LSTM",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "LSTM",
    "MAXIMUM": "Maximum",
    "MAX_POOL_2D": "MaxPool2d",
    "MEAN": "Mean",
    "MINIMUM": "Minimum",
    "MUL": "Mul",
    "PACK": "Pack",
    "PAD": "Pad",
    "PRELU": "PReLU",
    "QUANTIZE": "Quantize",
    "REDUCE_MAX": "ReduceMax",
    "REDUCE_MIN": "ReduceMin",
    "RELU": "ReLU",
    "RELU6": "ReLU6",
    "RELU_N1_TO_1": "ReLUN1To1",
    "RESHAPE": "Reshape",
    "RESIZE_BILINEAR": "ResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "ResizeNearestNeighbor",
    "RSQRT": "Rsqrt",
    "SLICE": "Slice",
    "SOFTMAX": "Softmax",
    "SPACE_TO_DEPTH": "SpaceToDepth",
    "SPLIT": "Split",
    "SQUARED_DIFFERENCE": "SquaredDifference",
    "SQUEEZE": "Squeeze",
    "STRIDED_SLICE": "StridedSlice",
    "SUB": "Sub",
    "SUM": "Sum",
    "TANH": "Tanh",
    "TRANSPOSE": "Transpose",
    "TRANSPOSE_CONV": "TransposeConv",
}

_INTEGER_8 = {"INT8", "UINT8"}
# int32 biases and shape/index operands are part of an 8-bit quantized graph.
_INTEGER_OK = _INTEGER_8 | {"INT32", "INT64", "BOOL"}
_NO_ACTIVATION = 0  # ActivationFunctionType.NONE


@dataclass
class RuleCheck:
    """One model-level requirement and whether the file meets it."""

    rule: str
    passed: bool
    detail: str
    source: str
    severity: str = "error"  # "error" blocks readiness, "warning" does not


@dataclass
class OpVerdict:
    """Where one op would run and why."""

    index: int
    op: str
    runs_on: str  # "edgetpu" | "cpu"
    reason: str


@dataclass
class CompilerRun:
    """What ``edgetpu_compiler`` printed, parsed."""

    version: str | None
    returncode: int
    success: bool
    ops: list[dict] = field(default_factory=list)  # {"op", "count", "status"}
    tpu_op_count: int | None = None
    cpu_op_count: int | None = None
    on_chip_memory: str | None = None
    off_chip_memory: str | None = None
    log: str = ""


@dataclass
class EdgeTPUReport:
    """The Edge TPU readiness of one ``.tflite`` file.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> _ = to_tflite(model, "model.tflite", "int8", representative_data=np.ones((4, 8), "float32"))
        >>> report = edgetpu_report("model.tflite", compiler="off")
        >>> report.ready, report.mode, report.tpu_ops, report.cpu_ops, report.first_cpu_op
        (True, 'static', 1, 0, None)
    """

    path: str | None
    ready: bool
    mode: str  # "static" | "compiler"
    checks: list[RuleCheck]
    ops: list[OpVerdict]
    first_cpu_op: str | None
    parameter_bytes: int
    notes: list[str]
    compiler: CompilerRun | None = None

    @property
    def tpu_ops(self) -> int:
        return sum(v.runs_on == "edgetpu" for v in self.ops)

    @property
    def cpu_ops(self) -> int:
        return sum(v.runs_on == "cpu" for v in self.ops)

    def one_line(self) -> str:
        """A one-line verdict, for `tfcompress inspect`."""
        how = "compiled" if self.mode == "compiler" else "static check"
        if self.ready:
            return f"ready: all {self.tpu_ops} ops map to the Edge TPU ({how})"
        failed = [c.rule for c in self.checks if not c.passed and c.severity == "error"]
        parts = [f"{self.cpu_ops} of {len(self.ops)} ops on CPU"]
        if self.first_cpu_op:
            parts.append(f"from {self.first_cpu_op}")
        if failed:
            parts.append("fails " + ", ".join(failed))
        return f"not ready: {'; '.join(parts)} ({how}; see `tfcompress edgetpu`)"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["tpu_ops"] = self.tpu_ops
        out["cpu_ops"] = self.cpu_ops
        return out

    def text(self) -> str:
        lines = [
            f"Edge TPU readiness: {self.path or '<bytes>'}",
            f"  verdict     {'READY' if self.ready else 'NOT READY'}"
            f" ({self.tpu_ops} ops on Edge TPU, {self.cpu_ops} on CPU)",
            "  mode        "
            + (
                f"edgetpu_compiler {self.compiler.version or '?'} was run"
                if self.compiler is not None
                else "static (edgetpu_compiler not run: the verdicts follow Coral's documented rules)"
            ),
            f"  parameters  {self.parameter_bytes:,} bytes of constant tensors",
            "",
            "  requirements",
        ]
        for c in self.checks:
            mark = "ok  " if c.passed else ("FAIL" if c.severity == "error" else "warn")
            lines.append(f"    [{mark}] {c.rule:17s} {c.detail}")
        lines += ["", "  ops (execution order)"]
        for v in self.ops:
            where = "Edge TPU" if v.runs_on == "edgetpu" else "CPU     "
            lines.append(f"    {v.index:3d} {v.op:24s} {where} {v.reason}")
        if self.compiler is not None:
            lines += ["", "  compiler log"]
            lines += [f"    {line}" for line in self.compiler.log.strip().splitlines()]
        if self.notes:
            lines += ["", "  notes"]
            lines += [f"    - {n}" for n in self.notes]
        lines.append(f"  rules: {MODELS_INTRO} ; {COMPILER_DOC}")
        return "\n".join(lines)


def _activation(op: OpInfo) -> int:
    return int(getattr(op.options, "fusedActivationFunction", _NO_ACTIVATION) or 0)


def _shape(model: TFLiteModel, index: int, subgraph: int) -> tuple[int, ...]:
    if not 0 <= index < len(model.tensors[subgraph]):  # absent (-1); the verifier allows it only where optional
        return ()
    return model.tensors[subgraph][index].shape


def _io(indices: tuple[int, ...], k: int) -> int:
    """The ``k``-th input / output index, -1 when the op has fewer."""
    return indices[k] if k < len(indices) else -1


def _const_ints(model: TFLiteModel, index: int, subgraph: int) -> list[int] | None:
    if index < 0:
        return None
    tensor = model.tensors[subgraph][index]
    values = model.constant_values(tensor)
    return None if values is None else [int(v) for v in values.reshape(-1)]


def _op_limitation(model: TFLiteModel, op: OpInfo) -> str | None:
    """The documented limitation this op breaks, or None. (models-intro, "Known limitations")."""
    name = op.name
    sg = op.subgraph
    if name in {"AVERAGE_POOL_2D", "MAX_POOL_2D"} and _activation(op) != _NO_ACTIVATION:
        return "pooling with a fused activation function is not supported"
    if name == "CONCATENATION":
        if _activation(op) != _NO_ACTIVATION:
            return "concatenation with a fused activation function is not supported"
        constant_inputs = {i for i in op.inputs if i >= 0 and model.tensors[sg][i].constant}
        if constant_inputs:  # each distinct tensor once: an op may list one tensor many times
            values = [model.constant_values(model.tensors[sg][i]) for i in sorted(constant_inputs)]
            all_zero = all(v is not None and not v.any() for v in values)
            if len(op.inputs) != 2 or not all_zero:
                return "a constant concatenation input is only supported as an all-zero 2-input pad"
    if name in {"CONV_2D", "DEPTHWISE_CONV_2D"}:
        dh = getattr(op.options, "dilationHFactor", 1) or 1
        dw = getattr(op.options, "dilationWFactor", 1) or 1
        if dh != dw:
            return f"dilation must be equal in x and y (got {dh}x{dw})"
    if name == "FULLY_CONNECTED":
        if int(getattr(op.options, "weightsFormat", 0) or 0) != 0:
            return "only the default fully-connected weights format is supported"
        out = _shape(model, _io(op.outputs, 0), sg)
        if sum(d > 1 for d in out) > 1:
            return f"fully-connected output must be one-dimensional (got shape {list(out)})"
    if name == "SOFTMAX":
        shape = _shape(model, _io(op.inputs, 0), sg)
        if sum(d > 1 for d in shape) > 1:
            return f"softmax supports only a 1-D input (got shape {list(shape)})"
        elements = 1
        for d in shape:
            elements *= d
        if elements > SOFTMAX_MAX_ELEMENTS:
            return f"softmax input has {elements} elements, more than {SOFTMAX_MAX_ELEMENTS:,}"
    if name in {"MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN"}:
        axes = _const_ints(model, _io(op.inputs, 1), sg)
        rank = len(_shape(model, _io(op.inputs, 0), sg))
        if axes is not None and any(a % max(rank, 1) == 0 for a in axes) and rank > 1:
            return "reduction over the batch dimension is not supported"
    if name == "PAD" and len(op.inputs) > 1:
        paddings = _const_ints(model, _io(op.inputs, 1), sg)
        if paddings and any(paddings[:2]):
            return "padding in the batch dimension is not supported"
    if name in {"PACK", "SPLIT"}:
        axis = getattr(op.options, "axis", None)
        if name == "SPLIT":
            axis_values = _const_ints(model, _io(op.inputs, 0), sg)
            axis = axis_values[0] if axis_values else None
        if axis == 0:
            return f"{name.lower()} along the batch dimension is not supported"
    if name == "STRIDED_SLICE":
        strides = _const_ints(model, _io(op.inputs, 3), sg)
        if strides is None or any(s != 1 for s in strides):
            return "strided slice is supported only with all strides equal to 1"
        if getattr(op.options, "ellipsisMask", 0) or getattr(op.options, "newAxisMask", 0):
            return "strided slice with an ellipsis or new-axis mask is not supported"
    if name in {"RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"}:
        shape = _shape(model, _io(op.inputs, 0), sg)
        if sum(d > 1 for d in shape) > 3:
            return "resize input must be a 3-dimensional tensor"
    return None


def _op_dtype_problem(model: TFLiteModel, op: OpInfo) -> str | None:
    dtypes = model.op_dtypes(op)
    bad = sorted(dtypes - _INTEGER_OK)
    if bad:
        return f"not 8-bit quantized (tensors of type {', '.join(d.lower() for d in bad)})"
    if not dtypes & _INTEGER_8:
        return "computes no 8-bit tensor"
    return None


def _rank_problem(model: TFLiteModel, op: OpInfo) -> str | None:
    for tensor in model.op_tensors(op):
        if tensor.constant:
            continue
        outer = tensor.shape[:-3]
        if any(d > 1 for d in outer):
            return (
                f"tensor {tensor.name!r} of shape {list(tensor.shape)} has a dimension > 1 outside "
                "the 3 innermost (batch size must be 1)"
            )
    return None


def static_verdicts(model: TFLiteModel) -> tuple[list[OpVerdict], str | None]:
    """Per-op verdicts from the documented rules, applying the single partition point."""
    verdicts: list[OpVerdict] = []
    first_cpu: str | None = None
    main_ops = [op for op in model.ops if op.subgraph == 0]
    for op in main_ops:
        if first_cpu is not None:
            verdicts.append(
                OpVerdict(op.index, op.name, "cpu", f"after the first CPU op ({first_cpu}): "
                          "the compiler partitions the graph only once")
            )
            continue
        reason: str | None
        if op.name not in SUPPORTED_OPS:
            if op.name == "DEQUANTIZE" and model.is_boundary_op(op):
                verdicts.append(OpVerdict(op.index, op.name, "cpu", "float output conversion (the model's last step)"))
                continue
            reason = "not in the Edge TPU's supported operations"
        else:
            reason = (
                _op_dtype_problem(model, op) or _rank_problem(model, op) or _op_limitation(model, op)
            )
        if reason is None:
            verdicts.append(OpVerdict(op.index, op.name, "edgetpu", "supported"))
        else:
            first_cpu = f"{op.name}#{op.index}"
            verdicts.append(OpVerdict(op.index, op.name, "cpu", reason))
    return verdicts, first_cpu


def _model_checks(model: TFLiteModel, verdicts: list[OpVerdict]) -> tuple[list[RuleCheck], int]:
    checks: list[RuleCheck] = []
    float_ops = [f"{op.name}#{op.index}" for op in model.float_ops()]
    checks.append(
        RuleCheck(
            "quantized",
            not float_ops,
            "every op is int8/uint8" if not float_ops else f"float ops: {', '.join(float_ops[:8])}",
            MODELS_INTRO + "#model-requirements",
        )
    )
    dynamic = [
        f"{t.name} {list(t.shape_signature)}"
        for tensors in model.tensors
        for t in tensors
        if any(d < 0 for d in t.shape_signature)
    ]
    checks.append(
        RuleCheck(
            "static-shapes",
            not dynamic,
            "all tensor shapes are fixed" if not dynamic
            else f"dynamic dimensions in {', '.join(dynamic[:4])} (export with batch_size=1)",
            MODELS_INTRO + "#model-requirements",
        )
    )
    batches = [t.shape[0] for t in model.inputs if len(t.shape) >= 4]
    batch_ok = all(b == 1 for b in batches)
    checks.append(
        RuleCheck(
            "batch-1",
            batch_ok,
            "input batch size is 1" if batch_ok else f"input batch size {batches} (export with batch_size=1)",
            MODELS_INTRO + "#model-requirements",
        )
    )
    unsupported = sorted({v.op for v in verdicts if v.reason.startswith("not in the Edge TPU")})
    checks.append(
        RuleCheck(
            "supported-ops",
            not unsupported,
            "every op is in the supported table" if not unsupported
            else f"unsupported ops: {', '.join(unsupported)}",
            MODELS_INTRO + "#supported-operations",
        )
    )
    limited = [f"{v.op}#{v.index}: {v.reason}" for v in verdicts
               if v.runs_on == "cpu" and not v.reason.startswith(("not in", "after", "float output"))]
    checks.append(
        RuleCheck(
            "op-limitations",
            not limited,
            "no documented op limitation is hit" if not limited else "; ".join(limited[:4]),
            MODELS_INTRO + "#supported-operations",
        )
    )
    parameter_bytes = sum(t.nbytes for tensors in model.tensors for t in tensors if t.constant)
    checks.append(
        RuleCheck(
            "parameter-memory",
            parameter_bytes <= ON_CHIP_PARAMETER_BYTES,
            f"{parameter_bytes / 2**20:.2f} MiB of parameters"
            + (" fit the ~8 MB on-chip cache" if parameter_bytes <= ON_CHIP_PARAMETER_BYTES
               else " exceed the ~8 MB on-chip cache: the rest is streamed from host memory (slower)"),
            COMPILER_DOC + "#parameter-data-caching",
            severity="warning",
        )
    )
    return checks, parameter_bytes


_LOG_OP = re.compile(r"^(?P<op>[A-Z][A-Z0-9_]+)\s+(?P<count>\d+)\s+(?P<status>\S.*?)\s*$")


def parse_compiler_log(log: str, returncode: int = 0) -> CompilerRun:
    """Parse the ``edgetpu_compiler -s`` log (the format shown on the compiler page)."""
    version = None
    run = CompilerRun(version=None, returncode=returncode, success=False, log=log)
    for line in log.splitlines():
        line = line.strip()
        if m := re.match(r"Edge TPU Compiler version (\S+)", line):
            version = m.group(1)
        elif m := re.match(r"Number of operations that will run on Edge TPU:\s*(\d+)", line):
            run.tpu_op_count = int(m.group(1))
        elif m := re.match(r"Number of operations that will run on CPU:\s*(\d+)", line):
            run.cpu_op_count = int(m.group(1))
        elif m := re.match(r"On-chip memory used for caching model parameters:\s*(.+)", line):
            run.on_chip_memory = m.group(1)
        elif m := re.match(r"Off-chip memory used for streaming uncached model parameters:\s*(.+)", line):
            run.off_chip_memory = m.group(1)
        elif (m := _LOG_OP.match(line)) and m.group("op") != "Operator":
            run.ops.append({"op": m.group("op"), "count": int(m.group("count")), "status": m.group("status")})
    run.version = version
    run.success = returncode == 0 and "compiled successfully" in log.lower()
    return run


def find_compiler() -> str | None:
    return shutil.which("edgetpu_compiler")


def run_compiler(data: bytes, compiler: str, timeout: float = 300.0) -> CompilerRun:
    """Run ``edgetpu_compiler -s`` on the model in a temporary directory and parse its log."""
    with tempfile.TemporaryDirectory(prefix="tfcompress-edgetpu-") as tmp:
        source = Path(tmp) / "model.tflite"
        source.write_bytes(data)
        try:
            done = subprocess.run(
                [compiler, "-s", "-o", tmp, str(source)],
                capture_output=True, text=True, timeout=timeout, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TfcompressError(
                f"edgetpu_compiler could not be run ({type(exc).__name__}: {exc})",
                compiler,
                "check the Edge TPU compiler installation, or pass compiler='off' for the static report",
            ) from None
    return parse_compiler_log(done.stdout + ("\n" + done.stderr if done.stderr else ""), done.returncode)


def _apply_compiler(verdicts: list[OpVerdict], run: CompilerRun) -> list[OpVerdict]:
    """Replace static verdicts by the compiler's, matching op names in order and by count."""
    remaining: dict[str, list[dict]] = {}
    for row in run.ops:
        remaining.setdefault(row["op"], []).append(dict(row))
    out = []
    for v in verdicts:
        rows = remaining.get(v.op, [])
        while rows and rows[0]["count"] == 0:
            rows.pop(0)
        if not rows:
            out.append(v)
            continue
        row = rows[0]
        row["count"] -= 1
        mapped = row["status"].lower().startswith("mapped to edge tpu")
        reason = "compiler: " + row["status"]
        if not mapped and v.runs_on == "cpu" and not v.reason.startswith("after"):
            reason += f" (static check: {v.reason})"
        out.append(OpVerdict(v.index, v.op, "edgetpu" if mapped else "cpu", reason))
    return out


def edgetpu_report(source: str | os.PathLike | bytes | TFLiteModel, compiler: str = "auto") -> EdgeTPUReport:
    """Check a ``.tflite`` model against the Edge TPU compiler's documented requirements.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
        ...                           keras.layers.Flatten(), keras.layers.Dense(2)])
        >>> _ = to_tflite(model, "model.tflite", "int8", representative_data=np.ones((4, 8, 8, 1), "float32"))
        >>> print(edgetpu_report("model.tflite", compiler="off").one_line())
        ready: all 3 ops map to the Edge TPU (static check)

    Args:
        source: path of the ``.tflite`` file, its bytes, or a `TFLiteModel` already loaded.
        compiler: ``"auto"`` runs ``edgetpu_compiler`` when it is on PATH; ``"off"`` never
            runs it (static report); ``"required"`` raises when it is missing.

    Returns:
        An `EdgeTPUReport`: ``ready``, the requirement checks with their Coral sources, every
        op with where it would run and why, and the compiler's parsed log when it ran.
    """
    if compiler not in {"auto", "off", "required"}:
        raise TfcompressError(f"unknown compiler mode {compiler!r}", "compiler", "use 'auto', 'off' or 'required'")
    model = source if isinstance(source, TFLiteModel) else load_tflite(source)
    verdicts, first_cpu = static_verdicts(model)
    checks, parameter_bytes = _model_checks(model, verdicts)
    notes: list[str] = []
    versions = sorted({f"{op.name} v{op.version}" for op in model.ops if op.version > 1})
    if versions:
        notes.append(
            "op versions > 1 (" + ", ".join(versions[:6]) + "): edgetpu_compiler 16.0 may answer "
            "'Operation version not supported' for versions newer than it knows; run the compiler to be sure"
        )
    if model.inputs and model.inputs[0].dtype not in _INTEGER_8:
        notes.append("float model input: the first QUANTIZE runs on the Edge TPU but inputs are converted on the host")

    run: CompilerRun | None = None
    path = find_compiler() if compiler != "off" else None
    if compiler == "required" and path is None:
        raise TfcompressError(
            "edgetpu_compiler is not on PATH",
            "compiler='required'",
            "install it (https://coral.ai/docs/edgetpu/compiler/, x86-64 Debian/Ubuntu only) or use compiler='auto'",
        )
    if path is not None:
        run = run_compiler(model.data, path)
        if run.ops:
            verdicts = _apply_compiler(verdicts, run)
            cpu = [v for v in verdicts if v.runs_on == "cpu"]
            first_cpu = f"{cpu[0].op}#{cpu[0].index}" if cpu else None
        if not run.success:
            notes.append(f"edgetpu_compiler exited with code {run.returncode}: see the compiler log")
    else:
        notes.append(
            "static report: edgetpu_compiler is not on PATH (or compiler='off'); the verdicts apply "
            "Coral's documented rules"
        )

    errors = [c for c in checks if not c.passed and c.severity == "error"]
    non_boundary_cpu = [
        v for v in verdicts if v.runs_on == "cpu" and not v.reason.startswith("float output")
    ]
    ready = not errors and not non_boundary_cpu and (run is None or run.success)
    return EdgeTPUReport(
        path=model.path,
        ready=ready,
        mode="compiler" if run is not None else "static",
        checks=checks,
        ops=verdicts,
        first_cpu_op=first_cpu,
        parameter_bytes=parameter_bytes,
        notes=notes,
        compiler=run,
    )
