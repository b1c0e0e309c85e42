"""Running `.tflite` files: LiteRT first, `tflite_runtime` where a device only has that.

`ai-edge-litert` is the maintained interpreter. `tflite-runtime` 2.14 (its last
release) does not run with NumPy 2, but Coral boards ship it, so it stays a
fallback chosen with ``runtime="tflite_runtime"`` or when LiteRT is missing.
Every file is validated by `load_tflite` before an interpreter sees it; `evaluate` and
`agreement` take ``isolate=True`` to run the interpreter in a child process
(`tfcompress.export.isolation`), where a native crash becomes an `InterpreterCrashError`.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np

from tfcompress.errors import DelegateError, TfcompressError
from tfcompress.export.isolation import phase, run_isolated
from tfcompress.export.tflite_file import TFLiteModel, load_tflite

RUNTIMES = ("auto", "litert", "tflite_runtime")
NAMED_DELEGATES = ("xnnpack", "none", "edgetpu")
# The Edge TPU runtime library on each platform (Coral "Run inference with TensorFlow Lite in Python").
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


@dataclass(frozen=True)
class RuntimeInfo:
    runtime: str
    version: str
    delegate: str
    num_threads: int


@cache
def _interpreter_module(runtime: str):
    if runtime not in RUNTIMES:
        raise TfcompressError(f"unknown runtime {runtime!r}", "runtime", f"use one of {RUNTIMES}")
    candidates = ["litert", "tflite_runtime"] if runtime == "auto" else [runtime]
    errors = []
    for name in candidates:
        module_name = "ai_edge_litert.interpreter" if name == "litert" else "tflite_runtime.interpreter"
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # ImportError, or tflite_runtime failing under NumPy 2
            errors.append(f"{module_name}: {type(exc).__name__}: {exc}")
            continue
        package = importlib.import_module(module_name.split(".")[0])
        return name, getattr(package, "__version__", "unknown"), module
    raise TfcompressError(
        "no TFLite interpreter could be imported (" + "; ".join(errors) + ")",
        "runtime",
        "pip install ai-edge-litert (or tflite-runtime on a device that ships it)",
    )


def xnnpack_negative_same_padding(model: TFLiteModel) -> list[str]:
    """The convolutions ai-edge-litert < 2.3's XNNPACK computes wrongly, as ``"NAME#index"``.

    A SAME convolution whose stride exceeds what its input needs has a negative total padding,
    ``(out - 1) stride + (k - 1) dilation + 1 - in < 0`` (e.g. a 3x3 kernel with stride 4 on an
    8x8 map); TFLite clamps it to zero. The XNNPACK of ai-edge-litert 2.1 does not, in float and
    int8 alike: such an op's outputs were 130-160 LSB off the reference kernels (stride 4, 5 and 8,
    conv and depthwise), while 1x1 kernels and non-negative paddings were right; 2.3 is right on all
    of them (``tests/test_runtime.py``). `ModelRunner` warns about them on the affected versions.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import load_tflite, to_tflite
        >>> model = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.Conv2D(6, 3, strides=4, padding="same")])
        >>> _ = to_tflite(model, "strided.tflite", quantization=None)
        >>> xnnpack_negative_same_padding(load_tflite("strided.tflite"))
        ['CONV_2D#0']
    """
    from tfcompress.export.verify import enum_names

    found = []
    for op in model.ops:
        if op.name not in ("CONV_2D", "DEPTHWISE_CONV_2D") or op.options is None \
                or enum_names("Padding").get(int(op.options.padding)) != "SAME":
            continue
        source, kernel = (model.tensor(i, op.subgraph) for i in op.inputs[:2])
        target = model.tensor(op.outputs[0], op.subgraph)
        if len(source.shape) != 4 or len(kernel.shape) != 4 or len(target.shape) != 4:
            continue
        axes = ((1, op.options.strideH, op.options.dilationHFactor), (2, op.options.strideW, op.options.dilationWFactor))
        for axis, stride, dilation in axes:
            k = kernel.shape[axis]
            total = (target.shape[axis] - 1) * stride + (k - 1) * dilation + 1 - source.shape[axis]
            if k > 1 and total < 0:
                found.append(f"{op.name}#{op.index}")
                break
    return found


def _litert_version(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return (0,)


def _load_delegate(module, delegate: str):
    import platform

    if delegate == "edgetpu":
        library = EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1")
    else:
        library = delegate
        if not Path(library).is_file():
            raise DelegateError(
                "delegate library not found",
                library,
                f"pass one of {NAMED_DELEGATES} or the path of a delegate .so",
            )
    # Check that the shared library loads before the runtime's Delegate object is built: a
    # Delegate whose library fails to load prints an AttributeError from its __del__.
    import ctypes

    try:
        ctypes.CDLL(library)
    except OSError as exc:
        fix = (
            "install the Edge TPU runtime (libedgetpu) and plug in a Coral device, or use --delegate xnnpack"
            if delegate == "edgetpu"
            else "check that the library is a TFLite delegate built for this machine"
        )
        raise DelegateError(f"failed to load delegate ({str(exc).strip()[:200]})", library, fix) from None
    try:
        return module.load_delegate(library)
    except Exception as exc:
        fix = (
            "install the Edge TPU runtime (libedgetpu) and plug in a Coral device, or use --delegate xnnpack"
            if delegate == "edgetpu"
            else "check that the library is a TFLite delegate built for this runtime"
        )
        raise DelegateError(f"failed to load delegate ({str(exc).strip()[:200]})", library, fix) from None


class ModelRunner:
    """A validated `.tflite` model in an interpreter, taking and returning float arrays.

    Inputs are quantized with the input tensor's scale / zero point and outputs
    dequantized, so callers compare with Keras directly. Models exported with a
    static batch of 1 run sample by sample.

    Args:
        model: path or bytes of a `.tflite` file.
        num_threads: interpreter threads.
        delegate: ``"xnnpack"`` (LiteRT's default CPU delegate), ``"none"``
            (builtin kernels only), ``"edgetpu"`` or the path of a delegate library.
        runtime: ``"auto"``, ``"litert"`` or ``"tflite_runtime"``.
        reference_kernels: use TFLite's reference kernels (what TFLite Micro's
            kernels are written against); implies no delegate.
        preserve_all_tensors: keep intermediate tensors readable after invoke.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
        >>> _ = to_tflite(model, "model.tflite", "int8", representative_data=x)
        >>> runner = ModelRunner("model.tflite", delegate="none")
        >>> out = runner.predict(x)                       # float in, float out (int8 file)
        >>> out.shape, bool(np.abs(out - model.predict(x, verbose=0)).max() < 0.1)
        ((16, 4), True)
    """

    def __init__(
        self,
        model: str | os.PathLike | bytes | TFLiteModel,
        *,
        num_threads: int = 1,
        delegate: str = "xnnpack",
        runtime: str = "auto",
        reference_kernels: bool = False,
        preserve_all_tensors: bool = False,
    ):
        self.model = model if isinstance(model, TFLiteModel) else load_tflite(model)
        name, version, module = _interpreter_module(runtime)
        if num_threads < 1:
            raise TfcompressError(f"num_threads must be >= 1, got {num_threads}", "num_threads")
        kwargs: dict = {"model_content": self.model.data, "num_threads": num_threads}
        resolver = module.OpResolverType
        delegates = []
        if reference_kernels:
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_REF
        elif delegate == "none":
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        elif delegate != "xnnpack":
            delegates.append(_load_delegate(module, delegate))
            kwargs["experimental_delegates"] = delegates
        if preserve_all_tensors:
            kwargs["experimental_preserve_all_tensors"] = True
        # what `tfcompress.export.isolation` reruns to find the op after a crash
        self.engine = ("litert:ref" if reference_kernels else "litert:none" if delegate == "none"
                       else "litert:xnnpack" if delegate == "xnnpack" else f"litert:{delegate}")
        where = self.model.path or "<bytes>"
        try:
            phase("build", self.engine, where)
            self.interpreter = module.Interpreter(**kwargs)
            phase("allocate", self.engine, where)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise TfcompressError(
                f"the interpreter rejected the model ({one_line(exc)})",
                self.model.path or "<bytes>",
                "re-export the model; check that its ops are TFLite builtins",
            ) from None
        partitions = sum(1 for op in self.interpreter._get_ops_details() if op["op_name"] == "DELEGATE")
        if reference_kernels:
            ran = "none (reference kernels)"
        elif delegate == "none":
            ran = "none (builtin kernels)"
        elif delegate == "xnnpack":
            ran = f"xnnpack ({partitions} partition(s))" if partitions else "none (XNNPACK took no op)"
        else:
            ran = f"{delegate} ({partitions} partition(s))"
        self.info = RuntimeInfo(name, version, ran, num_threads)
        if name == "litert" and delegate == "xnnpack" and not reference_kernels and partitions \
                and _litert_version(version) < (2, 3):
            wrong = xnnpack_negative_same_padding(self.model)
            if wrong:
                warnings.warn(
                    f"{where}: ai-edge-litert {version}'s XNNPACK computes {', '.join(wrong)} wrongly (SAME padding "
                    "with a stride larger than the input needs); pip install 'ai-edge-litert>=2.3', or run with "
                    "delegate='none'", RuntimeWarning, stacklevel=2)
        self.input_details = self.interpreter.get_input_details()
        self.output_details = self.interpreter.get_output_details()

    @property
    def batch_size(self) -> int:
        return int(self.input_details[0]["shape"][0])

    def quantize_input(self, x: np.ndarray, index: int = 0) -> np.ndarray:
        detail = self.input_details[index]
        return quantize(x, detail["dtype"], *detail["quantization"])

    def dequantize_output(self, q: np.ndarray, index: int = 0) -> np.ndarray:
        detail = self.output_details[index]
        scale, zero_point = detail["quantization"]
        if np.issubdtype(detail["dtype"], np.integer) and scale:
            return (q.astype(np.float32) - zero_point) * scale
        return q.astype(np.float32)

    def invoke_raw(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run one batch of already-typed inputs; return raw output tensors.

        Raises:
            TfcompressError: the interpreter failed (a kernel rejected the model at run time).
        """
        try:
            for detail, value in zip(self.input_details, inputs, strict=True):
                self.interpreter.set_tensor(detail["index"], value)
            phase("invoke", self.engine, self.model.path or "<bytes>")
            self.interpreter.invoke()
            return [self.interpreter.get_tensor(d["index"]) for d in self.output_details]
        except (RuntimeError, ValueError) as exc:
            raise TfcompressError(
                f"the interpreter failed to run the model ({one_line(exc)})",
                self.model.path or "<bytes>",
                "re-export the model; check that its ops are TFLite builtins",
            ) from None

    def predict(self, x: np.ndarray | list[np.ndarray], output: int = 0) -> np.ndarray:
        """Float outputs for float inputs shaped (N, ...), running batch by batch."""
        xs = [np.asarray(x)] if isinstance(x, np.ndarray) else [np.asarray(a) for a in x]
        if len(xs) != len(self.input_details):
            raise TfcompressError(
                f"got {len(xs)} input array(s), the model has {len(self.input_details)}", "inputs"
            )
        expected = tuple(self.input_details[0]["shape"][1:])
        if tuple(xs[0].shape[1:]) != expected:
            raise TfcompressError(
                f"inputs shaped {tuple(xs[0].shape)} do not fit the model input {(-1, *expected)}",
                self.model.path or "<bytes>",
                "reshape the inputs to the model's input shape",
            )
        n, step = xs[0].shape[0], self.batch_size
        results = []
        for start in range(0, n, step):
            chunk = [a[start : start + step] for a in xs]
            rows = chunk[0].shape[0]
            if rows < step:  # pad the last partial batch
                chunk = [np.concatenate([c, np.repeat(c[-1:], step - rows, axis=0)]) for c in chunk]
            raw = self.invoke_raw([self.quantize_input(c, i) for i, c in enumerate(chunk)])
            results.append(self.dequantize_output(raw[output], output)[:rows])
        return np.concatenate(results) if results else np.zeros((0,))


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An interpreter's message on one line (LiteRT's span several), at most ``limit`` characters."""
    return " ".join(str(exc).split())[:limit]


def quantize(x: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    """Affine quantization as TFLite does it: clip(round(x / scale) + zero_point)."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.integer) or not scale:
        return np.asarray(x, dtype=dtype)
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, dtype=np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


@dataclass
class Evaluation:
    """What `evaluate` measured: top-1 ``accuracy`` on ``num_samples``, the runtime, the float ``outputs``.

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
        >>> x = np.random.default_rng(0).normal(size=(10, 8)).astype("float32")
        >>> _ = to_tflite(model, "model.tflite", quantization=None)
        >>> result = evaluate("model.tflite", x, np.argmax(model.predict(x, verbose=0), -1))
        >>> result.accuracy, sorted(result.to_dict())
        (1.0, ['accuracy', 'num_samples', 'runtime'])
    """

    accuracy: float
    num_samples: int
    runtime: RuntimeInfo
    outputs: np.ndarray

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "num_samples": self.num_samples, "runtime": asdict(self.runtime)}


def _labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y.argmax(axis=-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1).astype(np.int64)


def _source_args(path: str | os.PathLike | bytes | TFLiteModel) -> tuple[str | bytes, str, dict[str, bytes]]:
    """Validate ``path`` here, and return what to hand a child: (source, where, {where: bytes})."""
    model = path if isinstance(path, TFLiteModel) else load_tflite(path)
    where = model.path or "<bytes>"
    return (model.path if model.path else model.data), where, {where: model.data}


def evaluate(
    path: str | os.PathLike | bytes, x: np.ndarray, y: np.ndarray, *, num_threads: int = 1,
    isolate: bool = False, **runner_kwargs
) -> Evaluation:
    """Top-1 accuracy of a `.tflite` classifier on LiteRT; also returns its float outputs.

    ``y`` holds integer labels or one-hot rows. With ``isolate=True`` the interpreter runs
    in a child process: a native crash raises `InterpreterCrashError` instead of ending this
    process.

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False)])
        >>> model.layers[0].set_weights([np.array([[1.0, 0.0], [0.0, 1.0]], "float32")])   # argmax(x)
        >>> x_test = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.8], [0.9, 0.1]], "float32")
        >>> y_test = np.array([0, 1, 1, 1])
        >>> _ = to_tflite(model, "model.tflite", "int8", representative_data=x_test)
        >>> result = evaluate("model.tflite", x_test, y_test)
        >>> result.accuracy, result.num_samples, result.outputs.shape
        (0.75, 4, (4, 2))
    """
    if isolate:
        source, where, models = _source_args(path)
        return run_isolated("tfcompress.export.runtime:evaluate", (source, x, y),
                            {"num_threads": num_threads, **runner_kwargs}, where=where, models=models)
    runner = ModelRunner(path, num_threads=num_threads, **runner_kwargs)
    outputs = runner.predict(x)
    labels = _labels(y)
    if labels.shape[0] != outputs.shape[0]:
        raise TfcompressError(f"{outputs.shape[0]} inputs but {labels.shape[0]} labels", "y")
    # top-1 over each sample's outputs (a classifier's are (N, classes); others are flattened)
    accuracy = float(np.mean(outputs.reshape(len(outputs), -1).argmax(axis=-1) == labels))
    return Evaluation(accuracy, int(labels.shape[0]), runner.info, outputs)


@dataclass
class Agreement:
    """How closely a `.tflite` file reproduces its Keras model.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
        >>> _ = to_tflite(model, "model.tflite", "int8", representative_data=x)
        >>> result = agreement(model, "model.tflite", x)
        >>> result.num_samples, result.output_scale is not None, result.max_error_lsb <= 2.0     # int8 output
        (16, True, True)
    """

    top1_agreement: float
    max_abs_error: float
    mean_abs_error: float
    output_scale: float | None
    max_error_lsb: float | None
    num_samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def tflite_outputs(path: str | os.PathLike | bytes, x: np.ndarray, **runner_kwargs) -> tuple[np.ndarray, float | None]:
    """The float outputs of the `.tflite` file on ``x`` and its first output's scale (None if float)."""
    runner = ModelRunner(path, **runner_kwargs)
    return runner.predict(x), (runner.output_details[0]["quantization"][0] or None)


def agreement(model, path: str | os.PathLike | bytes, x: np.ndarray, *, isolate: bool = False,
              **runner_kwargs) -> Agreement:
    """Top-1 agreement and output error of the `.tflite` file against the Keras model on ``x``.

    With ``isolate=True`` the interpreter (not Keras) runs in a child process. A QAT model
    (`tfcompress.quantize`) is run in the arithmetic of the kernels the file runs on
    (`tfcompress.quantization.kernel_arithmetic`): XNNPACK's for the default delegate, the
    reference kernels' otherwise, so its int8 file agrees to the LSB on either.

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> keras_model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> x_test = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
        >>> _ = to_tflite(keras_model, "model.tflite", quantization=None)
        >>> result = agreement(keras_model, "model.tflite", x_test)
        >>> result.top1_agreement, result.max_abs_error < 1e-5, result.num_samples
        (1.0, True, 64)
    """
    if isolate:
        source, where, models = _source_args(path)
        outputs, scale = run_isolated("tfcompress.export.runtime:tflite_outputs", (source, x), runner_kwargs,
                                      where=where, models=models)
    else:
        where = (path.path if isinstance(path, TFLiteModel) else None if isinstance(path, bytes) else str(path))
        where = where or "<bytes>"
        outputs, scale = tflite_outputs(path, x, **runner_kwargs)
    from tfcompress.layers.fake_quant import kernel_arithmetic

    on_xnnpack = not runner_kwargs.get("reference_kernels") and runner_kwargs.get("delegate", "xnnpack") == "xnnpack"
    with kernel_arithmetic("xnnpack" if on_xnnpack else "reference", model):
        reference = np.asarray(model.predict(x, verbose=0, batch_size=256))
    if reference.shape != outputs.shape:
        raise TfcompressError(
            f"Keras output shape {reference.shape} differs from the TFLite output shape {outputs.shape}",
            where,
            "pass the model this file was exported from",
        )
    error = np.abs(reference - outputs)
    top1 = float(np.mean(reference.reshape(len(x), -1).argmax(-1) == outputs.reshape(len(x), -1).argmax(-1)))
    return Agreement(
        top1_agreement=top1,
        max_abs_error=float(error.max()),
        mean_abs_error=float(error.mean()),
        output_scale=float(scale) if scale else None,
        max_error_lsb=float(error.max() / scale) if scale else None,
        num_samples=int(len(x)),
    )
