"""Running interpreters on untrusted files in a child process, so a native crash is an error.

`load_tflite` rejects the files that would crash LiteRT or TFLite Micro as far as its rules
reach; the kernels are C++ and a rule can be missing. `run_isolated` runs a function in a fresh
``python -m tfcompress.export._child`` process: its return value or its `TfcompressError`
comes back as if it had run here, while a segmentation fault, an abort or a floating-point
exception in native code, running out of time or of memory, becomes one
`InterpreterCrashError` naming the file, the interpreter, the step and, found by rerunning
prefixes of the model, the op.

The child reports each native step it starts with `phase` (``build`` / ``allocate`` /
``invoke``, the engine, the file); `phase` does nothing outside a child. ``tfcompress bench``
and ``tfcompress micro`` isolate by default (``--in-process`` turns it off); the functions
(`evaluate`, `agreement`, `benchmark`, `to_micro`) take ``isolate=True``.

The child imports only what the function needs (not TensorFlow): about 0.5 s per run.

Example:
    >>> from tfcompress.export.isolation import run_isolated
    >>> run_isolated("math:factorial", (5,), where="<example>")
    120
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tfcompress.errors import TfcompressError

_CHANNEL: int | None = None  # in a child: the file descriptor frames go to
ENGINES = ("litert:xnnpack", "litert:none", "litert:ref", "tflm")
_STEP_TEXT = {"build": "building the interpreter", "allocate": "allocating tensors", "invoke": "running the model"}
_ENGINE_TEXT = {"litert:xnnpack": "LiteRT (XNNPACK)", "litert:none": "LiteRT (builtin kernels)",
                "litert:ref": "LiteRT (reference kernels)", "tflm": "TFLite Micro"}


class InterpreterCrashError(TfcompressError):
    """An interpreter died in the child process (signal, timeout, memory) on a verified file.

    Attributes:
        reason: ``"signal"``, ``"timeout"``, ``"memory"`` or ``"exit"``.
        signal_name: e.g. ``"SIGSEGV"`` for a signal.
        engine / step / file: the last native step the child reported.
        op: the op whose prefix first crashes (``"CONV_2D#0"``), when it could be found.

    Example:
        >>> run_isolated("os:abort", where="model.tflite")            # the child dies; this process does not
        Traceback (most recent call last):
        ...
        tfcompress.export.isolation.InterpreterCrashError: model.tflite: ...SIGABRT...
    """

    def __init__(self, what: str, where: str, fix: str, *, reason: str, signal_name: str | None = None,
                 engine: str | None = None, step: str | None = None, file: str | None = None,
                 op: str | None = None):
        self.reason = reason
        self.signal_name = signal_name
        self.engine = engine
        self.step = step
        self.file = file
        self.op = op
        super().__init__(what, where, fix)


_last_phase: tuple | None = None


def phase(step: str, engine: str, where: str | None = None) -> None:
    """Report, from an isolated child, that a native ``step`` of ``engine`` starts on ``where``.

    Consecutive reports of the same step are sent once (a prediction loop invokes often).

    Example:
        >>> phase("invoke", "litert:ref", "model.tflite") is None     # outside a child: nothing to report to
        True
    """
    global _last_phase
    if _CHANNEL is not None and (step, engine, where) != _last_phase:
        _last_phase = (step, engine, where)
        _write_frame(_CHANNEL, ("phase", step, engine, where))


# ----------------------------------------------------------------------------- frames


def _write_frame(fd: int, payload) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(struct.pack(">Q", len(data)) + data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _FrameReader:
    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = bytearray()
        self.eof = False

    def frames(self) -> list:
        out = []
        while len(self.buffer) >= 8:
            size = struct.unpack(">Q", self.buffer[:8])[0]
            if len(self.buffer) < 8 + size:
                break
            out.append(pickle.loads(bytes(self.buffer[8 : 8 + size])))
            del self.buffer[: 8 + size]
        return out

    def read(self, timeout: float | None) -> bool:
        """Read what is there; False when ``timeout`` passed with nothing to read."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            self.eof = True
        self.buffer.extend(chunk)
        return True


# ----------------------------------------------------------------------------- the parent side


def _child_env(extra_path: Sequence[str]) -> dict[str, str]:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [*extra_path, package_root, env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


class Child:
    """One ``python -m tfcompress.export._child`` process running calls in turn.

    `run_isolated` starts one per call; a caller with many calls (the fuzz census) keeps one
    and starts a new one after a crash. ``memory_limit`` (bytes) caps the child's address
    space (``RLIMIT_AS``).

    Example:
        >>> with Child() as child:
        ...     child.call("math:factorial", (5,)), child.call("math:sqrt", (-1.0,))[0]
        (('result', 120), 'exception')
    """

    def __init__(self, *, memory_limit: int | None = None, extra_path: Sequence[str] = ()):
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tfcompress.export._child"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            env=_child_env(extra_path), start_new_session=True,
        )
        self.reader = _FrameReader(self.process.stdout.fileno())
        self.memory_limit = memory_limit
        self.last_phase: tuple | None = None

    def call(self, target: str, args: tuple = (), kwargs: dict | None = None, *,
             timeout: float | None = None) -> tuple[str, Any]:
        """Run ``target(*args, **kwargs)``; return ``(status, value)``.

        ``status`` is ``"result"`` (value: the return value), ``"error"`` (value: the
        `TfcompressError`), ``"exception"`` (value: (type name, message, traceback text)),
        ``"memory"`` (MemoryError message), ``"signal"`` (signal number), ``"exit"`` (exit code)
        or ``"timeout"`` (seconds). After signal / exit / timeout the child is gone.
        """
        self.last_phase = None
        request = (target, args, kwargs or {}, self.memory_limit)
        try:
            _write_frame(self.process.stdin.fileno(), request)
        except (BrokenPipeError, OSError):
            return self._ended()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for frame in self.reader.frames():
                if frame[0] == "phase":
                    self.last_phase = frame[1:]
                    continue
                return frame[0], _rebuild(frame)
            if self.reader.eof:
                return self._ended()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self.kill()
                return "timeout", timeout
            self.reader.read(remaining)

    def _ended(self) -> tuple[str, Any]:
        code = self.process.wait()
        if code < 0:
            return "signal", -code
        return "exit", code

    def stderr_tail(self, lines: int = 3) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        text = self.stderr.read()[-8192:].decode(errors="replace")
        useful = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("INFO: Created")]
        return " / ".join(useful[-lines:])

    def forward_stderr(self) -> None:
        """Copy what the child wrote to stderr to this process's stderr (file descriptor 2)."""
        self.stderr.flush()
        self.stderr.seek(0)
        data = self.stderr.read()
        if data:
            sys.stderr.flush()
            with contextlib.suppress(OSError):
                os.write(2, data)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process.stdout.close()
        self.stderr.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None and self.process.poll() is None:
            self.kill()  # interrupted (KeyboardInterrupt...): do not wait for the child
        self.close()


def _rebuild(frame):
    kind = frame[0]
    if kind == "error":
        _, cls_path, state, message = frame
        module, _, name = cls_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            cls = TfcompressError
        error = cls.__new__(cls)
        error.args = (message,)
        error.__dict__.update(state)
        return error
    return frame[1]


def signal_text(number: int) -> str:
    """``"SIGSEGV, segmentation fault"`` for 11.

    Example:
        >>> signal_text(11), signal_text(9)
        ('SIGSEGV, segmentation fault', 'SIGKILL, killed')
    """
    try:
        sig = signal.Signals(number)
    except ValueError:
        return f"signal {number}"
    description = signal.strsignal(sig) or ""
    return f"{sig.name}, {description.lower()}" if description else sig.name


class ChildError(RuntimeError):
    """An unexpected (non-tfcompress) exception in the child; ``child_traceback`` holds its traceback.

    Example:
        >>> run_isolated("math:factorial", (-1,), where="<example>")  # a ValueError is not a TfcompressError
        Traceback (most recent call last):
        ...
        tfcompress.export.isolation.ChildError: ...factorial() not defined for negative values...
    """

    def __init__(self, message: str, child_traceback: str = ""):
        super().__init__(message)
        self.child_traceback = child_traceback


def run_isolated(target: str, args: tuple = (), kwargs: dict | None = None, *, where: str,
                 timeout: float | None = None, memory_limit: int | None = None,
                 models: dict[str, bytes] | None = None) -> Any:
    """Run ``target`` (``"module:function"``) in a child process; return what it returns.

    Args:
        target: the function, importable in a fresh interpreter.
        args, kwargs: its arguments (pickled).
        where: the file the call is about, for the error.
        timeout: seconds before the child is killed (None: no limit).
        memory_limit: bytes of address space for the child (None: no limit).
        models: ``{file name: bytes}`` of the models the call runs, so that after a crash
            the op can be found by rerunning prefixes of the model named by the child's last
            `phase` (or of the only one given).

    Raises:
        TfcompressError: what the function raised (its own subclass, with its attributes).
        InterpreterCrashError: the child died (signal, exit without an answer), ran out of
            memory or of time.
        ChildError: the function raised something else (a bug), with the child's traceback.

    Example:
        >>> run_isolated("math:gcd", (12, 18), where="<example>")
        6
    """
    with Child(memory_limit=memory_limit) as child:
        status, value = child.call(target, args, kwargs, timeout=timeout)
        if status in ("result", "error"):
            child.forward_stderr()
        if status == "result":
            return value
        if status == "error":
            raise value
        raise crash_error(status, value, child.last_phase, child.stderr_tail(), where, models or {},
                          timeout=timeout, memory_limit=memory_limit)


def crash_error(status: str, value, last_phase: tuple | None, stderr: str, where: str,
                models: dict[str, bytes], *, timeout: float | None = None,
                memory_limit: int | None = None) -> Exception:
    """The one-line error for a child that did not answer (see `Child.call` for ``status``).

    Example:
        >>> error = crash_error("signal", 11, ("invoke", "tflm", "model.tflite"), "", "model.tflite", {})
        >>> type(error).__name__, error.reason, error.signal_name, error.engine, error.step
        ('InterpreterCrashError', 'signal', 'SIGSEGV', 'tflm', 'invoke')
    """
    step, engine, file = last_phase if last_phase else (None, None, None)
    file = file or where
    if status == "exception":
        name, message, text = value
        return ChildError(f"{name}: {message}", text)
    data = models.get(file) if file in models else (next(iter(models.values())) if len(models) == 1 else None)
    op = None
    if status in ("signal", "timeout") and engine in ENGINES and data is not None:
        op = find_crashing_op(data, engine, timeout=60.0 if status == "signal" else timeout)
    where_text = _ENGINE_TEXT.get(engine, engine or "the interpreter")
    during = f" while {_STEP_TEXT.get(step, step)}" if step else ""
    in_op = f" in op {op}" if op else ""
    if status == "signal":
        detail = f" [{stderr[:200]}]" if stderr else ""
        what = f"{where_text} crashed ({signal_text(value)}){in_op}{during}{detail}"
        reason = "signal"
    elif status == "timeout":
        what = f"{where_text} did not finish within {value:g} s{in_op}{during}"
        reason = "timeout"
    elif status == "memory":
        limit = f" (limit {memory_limit / 2**30:.3g} GiB)" if memory_limit else ""
        what = f"{where_text} ran out of memory{limit}{during}: {value}"
        reason = "memory"
    else:
        what = f"the child process running {where_text} exited with code {value} without an answer{during}"
        reason = "exit"
    fix = ("the file passed tfcompress's verifier yet stops the interpreter: report it with the file; "
           "only the child process running it was affected")
    return InterpreterCrashError(what, file, fix, reason=reason,
                                 signal_name=_signal_name(value) if status == "signal" else None,
                                 engine=engine, step=step, file=file, op=op)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# ----------------------------------------------------------------------------- finding the op


def prefix_model(data: bytes, count: int) -> bytes:
    """The model cut after its first ``count`` ops (main subgraph), their outputs made the outputs.

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, "relu"), keras.layers.Dense(2)])
        >>> _ = to_tflite(model, "model.tflite", quantization=None)
        >>> data = open("model.tflite", "rb").read()
        >>> from tfcompress.export import load_tflite
        >>> [op.name for op in load_tflite(prefix_model(data, 1)).ops]          # the first FULLY_CONNECTED only
        ['FULLY_CONNECTED']
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    main = model.subgraphs[0]
    ops = list(main.operators or [])[:count]
    main.operators = ops
    last = ops[-1]
    import numpy as np

    main.outputs = np.asarray([o for o in last.outputs if o >= 0], dtype=np.int32)
    builder = flatbuffers.Builder(max(1024, len(data)))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _count_ops(data: bytes) -> int:
    from ai_edge_litert import schema_py_generated as schema

    return len(schema.ModelT.InitFromPackedBuf(data, 0).subgraphs[0].operators or [])


def find_crashing_op(data: bytes, engine: str, *, timeout: float | None = 60.0,
                     probe: Callable[[bytes, str, float | None], bool] | None = None) -> str | None:
    """The first op (``"NAME#index"``) whose prefix model crashes ``engine``, by bisection.

    Each probe builds, allocates and runs (on zeros) a prefix of the model in a fresh child;
    ``None`` when the whole model does not crash that way (the crash needed the original
    inputs) or the model cannot be cut.

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, "relu"), keras.layers.Dense(2)])
        >>> _ = to_tflite(model, "model.tflite", quantization=None)
        >>> data = open("model.tflite", "rb").read()
        >>> def fake_probe(prefix, engine, timeout):                  # "crashes" once the second op is in
        ...     return len(load_tflite(prefix).ops) >= 2
        >>> from tfcompress.export import load_tflite
        >>> find_crashing_op(data, "litert:ref", probe=fake_probe)
        'FULLY_CONNECTED#1'
        >>> find_crashing_op(data, "litert:ref", probe=lambda prefix, engine, timeout: False) is None
        True
    """
    probe = probe or _probe_crashes
    try:
        count = _count_ops(data)
        if count == 0 or not probe(data, engine, timeout):
            return None
        low, high = 1, count  # the prefix of `high` ops crashes
        while low < high:
            mid = (low + high) // 2
            if probe(prefix_model(data, mid), engine, timeout):
                high = mid
            else:
                low = mid + 1
        return _op_name(data, high - 1)
    except Exception:  # a model too broken to cut: report the crash without the op
        return None


def _op_name(data: bytes, index: int) -> str:
    from ai_edge_litert import schema_py_generated as schema

    from tfcompress.export.verify import enum_names

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    op = model.subgraphs[0].operators[index]
    code = model.operatorCodes[op.opcodeIndex]
    name = enum_names("BuiltinOperator").get(max(int(code.builtinCode), int(code.deprecatedBuiltinCode)), "?")
    return f"{name}#{index}"


_PROBE_ATTEMPTS = 3


def _probe_crashes(data: bytes, engine: str, timeout: float | None) -> bool:
    # A read through a bad index crashes only when the address it lands on is unmapped, which
    # address-space randomisation changes from process to process (a loaded CI run once named
    # FULLY_CONNECTED#2 for a file whose CONV_2D#0 reads tensor -1): a prefix that did not crash
    # is tried again in fresh children before the bisection calls it safe.
    for _ in range(_PROBE_ATTEMPTS):
        with Child() as child:
            status, _ = child.call("tfcompress.export.isolation:probe", (data, engine), timeout=timeout)
        if status in ("signal", "timeout"):
            return True
    return False


def probe(data: bytes, engine: str) -> str:
    """Build, allocate and run ``data`` once on zeros with ``engine``, without verifying it.

    Only for `find_crashing_op`, on prefixes of a model: returns ``"ok"`` or the error text.

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, "relu"), keras.layers.Dense(2)])
        >>> _ = to_tflite(model, "model.tflite", quantization=None)
        >>> data = open("model.tflite", "rb").read()
        >>> probe(data, "litert:ref")
        'ok'
    """
    import numpy as np

    try:
        if engine == "tflm":
            from tflite_micro.python.tflite_micro import runtime

            phase("allocate", engine)
            interpreter = runtime.Interpreter.from_bytes(data, arena_size=_probe_arena(data))
            for i in range(_count_inputs(data)):
                detail = interpreter.get_input_details(i)
                interpreter.set_input(np.zeros(detail["shape"], detail["dtype"]), i)
            phase("invoke", engine)
            interpreter.invoke()
            return "ok"
        from ai_edge_litert import interpreter as litert

        resolver = litert.OpResolverType
        kinds = {"litert:xnnpack": resolver.AUTO, "litert:none": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                 "litert:ref": resolver.BUILTIN_REF}
        phase("build", engine)
        interpreter = litert.Interpreter(model_content=data, num_threads=1,
                                         experimental_op_resolver_type=kinds[engine])
        phase("allocate", engine)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        phase("invoke", engine)
        interpreter.invoke()
        return "ok"
    except Exception as exc:  # the probe asks only whether the process survives
        return f"{type(exc).__name__}: {exc}"


def _count_inputs(data: bytes) -> int:
    from ai_edge_litert import schema_py_generated as schema

    main = schema.ModelT.InitFromPackedBuf(data, 0).subgraphs[0]
    return len(main.inputs) if main.inputs is not None else 0


def _probe_arena(data: bytes) -> int:
    from ai_edge_litert import schema_py_generated as schema

    total = 0
    for sg in schema.ModelT.InitFromPackedBuf(data, 0).subgraphs:
        for t in sg.tensors or []:
            shape = t.shape if t.shape is not None else []
            size = 8
            for d in shape:
                size *= max(int(d), 1)
            total += size
    return int(min(max(2 * total + (1 << 16), 1 << 16), 1 << 30))


# ----------------------------------------------------------------------------- the child side


def serve() -> None:
    """The child's loop: read requests from stdin, answer each on the frame channel, until EOF.

    Example:
        :class:`Child` starts ``python -m tfcompress.export._child``, which calls ``serve``; the
        loop ends when the parent closes its stdin:

        >>> import subprocess, sys
        >>> subprocess.run([sys.executable, "-m", "tfcompress.export._child"], input=b"", timeout=60).returncode
        0
    """
    global _CHANNEL
    channel = os.dup(1)
    os.dup2(2, 1)  # whatever the function prints goes to stderr, not into the frames
    sys.stdout = os.fdopen(os.dup(2), "w", buffering=1)
    _CHANNEL = channel
    requests = _FrameReader(0)
    limited = False
    while True:
        frames = requests.frames()
        if not frames:
            if requests.eof:
                return
            requests.read(None)
            continue
        for target, args, kwargs, memory_limit in frames:
            global _last_phase
            _last_phase = None
            if memory_limit and not limited:
                import resource

                resource.setrlimit(resource.RLIMIT_AS, (int(memory_limit), int(memory_limit)))
                limited = True
            _write_frame(channel, _answer(target, args, kwargs))


def _answer(target: str, args: tuple, kwargs: dict):
    try:
        module, _, name = target.partition(":")
        function = getattr(importlib.import_module(module), name)
        result = function(*args, **kwargs)
        pickle.dumps(result)  # an unpicklable result is an error here, not a dead channel
        return ("result", result)
    except TfcompressError as exc:
        cls = type(exc)
        state = {k: v for k, v in vars(exc).items() if _picklable(v)}
        return ("error", f"{cls.__module__}.{cls.__qualname__}", state, str(exc))
    except MemoryError as exc:
        return ("memory", str(exc) or "MemoryError")
    except Exception as exc:
        return ("exception", (type(exc).__name__, str(exc).strip().splitlines()[0][:300] if str(exc).strip()
                              else "", traceback.format_exc()[-4000:]))


def _picklable(value) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True

