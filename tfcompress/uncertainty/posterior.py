"""A posterior compiled into one deterministic graph: S members, one input, uncertainty outputs.

The randomness of a Bayesian model is drawn at export, never on the device (Vadera et al.
2021, section 2.2.4: every method needs S Monte Carlo samples at test time): S ensemble
members, S frozen dropout masks (:mod:`tfcompress.uncertainty.mc_dropout`) or S draws of a
variational posterior become S deterministic branches (or one branch on a batch of S, when
they share weights) that read one input ("batching models instead of inputs", section
2.2.1), followed by :class:`~tfcompress.uncertainty.predictive.UncertaintyHead`. The result
converts to a single-subgraph, all-int8 TFLite file whose named outputs are the posterior
predictive and the three uncertainties of eq. (3).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tfcompress.errors import ConversionError, TfcompressError
from tfcompress.uncertainty.predictive import OUTPUT_NAMES, UncertaintyHead, decompose

__all__ = ["Posterior", "PosteriorExport", "ensemble", "from_stacked", "run_tflite"]

# ops that draw random numbers on the device: a posterior must not contain any
RANDOM_OPS = frozenset({"RANDOM_UNIFORM", "RANDOM_STANDARD_NORMAL", "MULTINOMIAL"})


@dataclass
class PosteriorExport:
    """What :meth:`Posterior.to_tflite` wrote, and its cost against one member's file.

    ``*_ratio`` fields divide the posterior file's figure by the single member's (exported the
    same way); ``arena_*`` and ``tflm_identical`` are filled when ``micro=True`` (measured by
    :func:`tfcompress.export.to_micro` on the TFLite Micro interpreter).

    Example:
        >>> import keras
        >>> members = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(3)]
        >>> x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
        >>> report = ensemble(members).to_tflite("posterior.tflite", x)
        >>> report.kind, report.members, report.single_size_bytes < report.size_bytes     # against one member's file
        ('ensemble', 3, True)
    """

    path: str
    members: int
    kind: str
    size_bytes: int
    ops: dict[str, int]
    int8_coverage: float
    subgraphs: int
    outputs: list[str]
    macs: int
    single_size_bytes: int | None = None
    single_macs: int | None = None
    size_ratio: float | None = None
    macs_ratio: float | None = None
    arena_bytes: int | None = None
    single_arena_bytes: int | None = None
    arena_ratio: float | None = None
    tflm_identical: bool | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = [f"wrote {self.path}: {self.kind}, {self.members} members in one graph",
                 f"  size      {self.size_bytes:,} B" + _ratio(self.size_ratio),
                 f"  MACs      {self.macs:,}" + _ratio(self.macs_ratio),
                 f"  int8      {self.int8_coverage:.1%} of {sum(self.ops.values())} ops, "
                 f"{self.subgraphs} subgraph(s)",
                 f"  outputs   {', '.join(self.outputs)}"]
        if self.arena_bytes is not None:
            lines.append(f"  arena     {self.arena_bytes:,} B" + _ratio(self.arena_ratio)
                         + f"; TFLM {'bit-exact with' if self.tflm_identical else 'DIFFERS from'} "
                         "LiteRT's reference kernels")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return f"  ({value:.2f}x one member)" if value is not None else ""


class Posterior:
    """S posterior samples as one Keras graph: ``x -> {probs, log_probs, total, data, knowledge}``.

    Build one with :func:`ensemble` (S member models), :func:`tfcompress.uncertainty.mc_dropout`
    (S frozen dropout masks on one model) or :func:`from_stacked` (a model that already
    returns ``[batch, S, classes]`` logits, e.g. BatchEnsemble or MIMO).

    Attributes:
        logits_model: ``x -> [batch, S, classes]`` member logits.
        model: ``logits_model`` followed by :class:`UncertaintyHead` (dict outputs).
        members: S.
        kind: ``"ensemble"``, ``"mc_dropout"`` or ``"stacked"``.
        single: one member as a plain model (the cost reference), when there is one.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.uncertainty import ensemble
        >>> members = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(2)]
        >>> posterior = ensemble(members)
        >>> out = posterior.predict(np.zeros((5, 4), "float32"))
        >>> sorted(out), out["probs"].shape
        (['data', 'knowledge', 'log_probs', 'probs', 'total'], (5, 3))
    """

    def __init__(self, logits_model, *, kind: str, single=None,
                 rebuild: Callable[[Callable], Posterior] | None = None, temperature: float = 1.0):
        shape = tuple(logits_model.outputs[0].shape) if getattr(logits_model, "outputs", None) else ()
        if len(shape) != 3 or shape[1] is None or shape[2] is None:
            raise TfcompressError(
                f"the logits model must return [batch, members, classes], it returns {shape}",
                getattr(logits_model, "name", type(logits_model).__name__),
                "stack the members' logits on axis 1 (see tfcompress.uncertainty.ensemble)",
            )
        if shape[1] < 2:
            raise TfcompressError(f"a posterior needs at least 2 members, got {shape[1]}",
                                  logits_model.name, "pass 2 or more members / samples")
        self.logits_model = logits_model
        self.members = int(shape[1])
        self.classes = int(shape[2])
        self.kind = kind
        self.single = single
        self.temperature = float(temperature)
        # rebuild(transform) builds the same posterior from transform(member) for each member
        # model (ensemble, mc_dropout); with_temperature uses it to fold 1 / T into the members
        self._rebuild = rebuild
        inputs = logits_model.inputs[0] if len(logits_model.inputs) == 1 else logits_model.inputs
        self.model = keras.Model(inputs, UncertaintyHead(name="uncertainty")(logits_model.outputs[0]),
                                 name=f"{logits_model.name}_posterior")

    def predict(self, x, batch_size: int = 256) -> dict[str, np.ndarray]:
        """The Keras float outputs (:data:`OUTPUT_NAMES`) for inputs ``x``."""
        out = self.model.predict(x, batch_size=batch_size, verbose=0)
        return {name: np.asarray(out[name]) for name in OUTPUT_NAMES}

    def member_logits(self, x, batch_size: int = 256) -> np.ndarray:
        """``[batch, S, classes]`` member logits for ``x``."""
        return np.asarray(self.logits_model.predict(x, batch_size=batch_size, verbose=0))

    def reference(self, x, batch_size: int = 256) -> dict[str, np.ndarray]:
        """The float64 NumPy reference of the outputs (:func:`decompose` of the member logits)."""
        return decompose(self.member_logits(x, batch_size))

    def with_temperature(self, temperature: float) -> Posterior:
        """The same posterior with every member's logits divided by ``temperature``.

        Folded into each member's last ``Dense`` / ``Conv`` where it is linear (no op is added
        to the file); a ``Rescaling`` layer (one int8 ``MUL``) otherwise
        (:func:`tfcompress.uncertainty.calibration.scale_logits`). ``self`` is unchanged.

        Example:
            >>> import keras, numpy as np
            >>> from tfcompress.uncertainty import ensemble
            >>> members = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(2)]
            >>> x = np.ones((2, 4), "float32")
            >>> posterior = ensemble(members)
            >>> warm = posterior.with_temperature(2.0)
            >>> bool(np.allclose(warm.member_logits(x), posterior.member_logits(x) / 2.0, atol=1e-5))
            True
        """
        from tfcompress.uncertainty.calibration import scale_logits

        temperature = float(temperature)
        if not np.isfinite(temperature) or temperature <= 0.0:
            raise TfcompressError(f"the temperature must be finite and > 0, got {temperature}",
                                  self.logits_model.name, "fit one with Posterior.calibrate(x_val, y_val)")
        factor = self.temperature / temperature  # relative to the temperature already folded in
        if self._rebuild is not None:
            tempered = self._rebuild(lambda member: scale_logits(member, factor))
        else:
            x = self.logits_model.inputs[0]
            z = keras.layers.Rescaling(factor, name="temperature")(self.logits_model.outputs[0])
            tempered = Posterior(keras.Model(x, z, name=f"{self.logits_model.name}_tempered"),
                                 kind=self.kind, single=self.single)
        tempered.temperature = temperature
        return tempered

    def calibrate(self, x, y, *, batch_size: int = 256) -> Posterior:
        """Temperature scaling (Guo et al. 2017, sec. 4.2) fitted on held-out ``(x, y)``.

        One ``T`` shared by all members minimises the NLL of the posterior predictive on
        ``(x, y)`` (:func:`tfcompress.uncertainty.calibration.fit_temperature`), then
        :meth:`with_temperature` folds it in. Use data the members were not trained on.

        Returns:
            The calibrated posterior; its ``temperature`` attribute is ``T``.

        Example:
            >>> import keras, numpy as np
            >>> from tfcompress.uncertainty import ensemble
            >>> members = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(2)]
            >>> rng = np.random.default_rng(0)
            >>> x, y = rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 3, 64)
            >>> calibrated = ensemble(members).calibrate(x, y)
            >>> calibrated.temperature > 0
            True
        """
        from tfcompress.uncertainty.calibration import fit_temperature

        logits = self.member_logits(x, batch_size) * self.temperature  # back to the members' own logits
        return self.with_temperature(fit_temperature(logits, np.asarray(y)))

    def save(self, path: str | os.PathLike) -> None:
        """Save the combined model (head included) as a ``.keras`` file.

        ``keras.models.load_model(path)`` gives it back; ``tfcompress convert`` exports it.
        """
        self.model.save(path)

    def to_tflite(self, path: str | os.PathLike, representative_data=None, *, io_dtype: str | None = None,
                  calibration_samples: int | None = None, compare_single: bool = True,
                  micro: bool = False, micro_samples: np.ndarray | None = None,
                  compact: bool = True) -> PosteriorExport:
        """Export as one full-int8, single-subgraph TFLite file with the outputs as named signature outputs.

        Dense layers are written as 1x1 convolutions (``dense_as_conv``), so TFLite Micro
        runs the file bit-exactly as LiteRT's reference kernels do.

        Args:
            path: the ``.tflite`` file (written atomically).
            representative_data: calibration inputs (see :func:`tfcompress.export.to_tflite`).
            io_dtype: ``"int8"`` (default) or ``"float32"`` I/O around the integer graph.
            calibration_samples: at most this many calibration samples.
            compare_single: also export one member the same way and report size / MAC ratios.
            micro: run both files on TFLite Micro (:func:`tfcompress.export.to_micro`) to
                measure the arenas and check TFLM against LiteRT's reference kernels.
            micro_samples: inputs for that check (default: the first 16 calibration samples).
            compact: drop what no interpreter reads (:func:`tfcompress.export.compact_tflite`:
                intermediate tensor names, shape signatures equal to the shapes, empty buffers):
                S members carry S times the converter's names (the outputs keep theirs).

        Raises:
            ConversionError: a random op or a layer that would run differently on the device is
                in the graph, or the file has more than one subgraph.

        Example:
            >>> import keras, numpy as np
            >>> from tfcompress.uncertainty import ensemble
            >>> members = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(2)]
            >>> x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
            >>> report = ensemble(members).to_tflite("posterior.tflite", x, compare_single=False)
            >>> report.members, report.subgraphs, report.int8_coverage, report.outputs
            (2, 1, 1.0, ['probs', 'log_probs', 'total', 'data', 'knowledge'])
        """
        from tfcompress.export import compact_tflite, load_tflite, to_micro, to_tflite
        from tfcompress.export.convert import DEFAULT_CALIBRATION_SAMPLES
        from tfcompress.metrics import tflite_macs

        refuse_stochastic(self.logits_model)
        samples = DEFAULT_CALIBRATION_SAMPLES if calibration_samples is None else calibration_samples
        to_tflite(self.model, path, "int8", representative_data, io_dtype, calibration_samples=samples,
                  dense_as_conv=True)
        parsed = compact_tflite(path, path) if compact else load_tflite(path)
        random_ops = [op for op in parsed.ops if op.name in RANDOM_OPS]
        if random_ops:
            Path(path).unlink(missing_ok=True)
            raise ConversionError(f"the graph draws random numbers on the device ({random_ops[0].name})",
                                  str(path), "draw the randomness at export: freeze it into members "
                                  "(mc_dropout, sample_members) before compiling")
        if len(parsed.tensors) != 1:
            Path(path).unlink(missing_ok=True)
            raise ConversionError(f"the file has {len(parsed.tensors)} subgraphs", str(path),
                                  "remove control flow (tf.cond / while) from the members")
        report = PosteriorExport(
            path=str(path), members=self.members, kind=self.kind, size_bytes=parsed.size_bytes,
            ops=parsed.op_counts(), int8_coverage=parsed.int8_coverage(), subgraphs=len(parsed.tensors),
            outputs=list(output_positions(parsed.data)), macs=sum(r["macs"] for r in tflite_macs(parsed)))
        single_path = None
        if compare_single and self.single is not None:
            single_path = Path(tempfile.mkdtemp(prefix="tfcompress_single_")) / "single.tflite"
            to_tflite(self.single, single_path, "int8", representative_data, io_dtype,
                      calibration_samples=samples, dense_as_conv=True)
            single = compact_tflite(single_path, single_path) if compact else load_tflite(single_path)
            report.single_size_bytes = single.size_bytes
            report.single_macs = sum(r["macs"] for r in tflite_macs(single))
            report.size_ratio = report.size_bytes / report.single_size_bytes
            report.macs_ratio = report.macs / max(report.single_macs, 1)
        if micro:
            check = micro_samples if micro_samples is not None else _first_samples(representative_data, 16)
            with tempfile.TemporaryDirectory(prefix="tfcompress_micro_") as out_dir:
                posterior_micro = to_micro(path, out_dir, "posterior", samples=check)
                report.arena_bytes = posterior_micro.arena_total_bytes
                report.tflm_identical = posterior_micro.identical
                if single_path is not None:
                    single_micro = to_micro(single_path, out_dir, "single", samples=check)
                    report.single_arena_bytes = single_micro.arena_total_bytes
                    report.arena_ratio = report.arena_bytes / report.single_arena_bytes
        return report


def _first_samples(data, n: int) -> np.ndarray | None:
    if isinstance(data, np.ndarray):
        return data[:n]
    return None


def ensemble(members, *, name: str = "ensemble") -> Posterior:
    """Deep / snapshot / SG-MCMC ensemble: S member models (input -> logits) on one input.

    Each member is a Keras model whose output is class logits ``[batch, classes]`` (no
    softmax). The posterior predictive is their average, eq. (4) of Vadera et al. (2021); the
    members keep their own weights (storage S x one model) and run as S branches of one graph.
    Members that share a name (clones of one model) are renamed ``NAME_member_I``.

    Example:
        >>> import keras
        >>> members = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(3)]
        >>> ensemble(members).members
        3
    """
    members = list(members)
    if len(members) < 2:
        raise TfcompressError(f"an ensemble needs at least 2 members, got {len(members)}", "members",
                              "pass a list of 2 or more models")
    first = _check_member(members[0], 0)
    for i, member in enumerate(members[1:], start=1):
        if _check_member(member, i) != first:
            raise TfcompressError(
                f"member {i} maps {_check_member(member, i)}, member 0 maps {first}",
                f"members[{i}] ({member.name})", "give every member the same input shape and classes")
    names: set[str] = set()
    for i, member in enumerate(members):
        refuse_stochastic(member)
        if member.name in names:
            # clones of one model share its name; a Functional model needs unique layer names
            member.name = f"{member.name}_member_{i}"
        names.add(member.name)
    input_shape, classes = first
    x = keras.Input(shape=input_shape, name=members[0].inputs[0].name.split(":")[0])
    stacked = [keras.layers.Reshape((1, classes), name=f"member_{i}_logits")(m(x)) for i, m in enumerate(members)]
    logits = keras.layers.Concatenate(axis=1, name="members")(stacked)
    return Posterior(keras.Model(x, logits, name=name), kind="ensemble", single=members[0],
                     rebuild=lambda transform: ensemble([transform(m) for m in members], name=name))


def from_stacked(model, *, single=None, kind: str = "stacked") -> Posterior:
    """A posterior from a model that already returns ``[batch, S, classes]`` logits.

    For single-pass ensembles (BatchEnsemble, MIMO) whose S members are computed together.

    Example:
        >>> import keras
        >>> x = keras.Input((4,))
        >>> model = keras.Model(x, keras.layers.Reshape((2, 3))(keras.layers.Dense(6)(x)))
        >>> from_stacked(model).members
        2
    """
    refuse_stochastic(model)
    return Posterior(model, kind=kind, single=single)


def _check_member(member, index: int) -> tuple[tuple, int]:
    where = f"members[{index}]"
    if not isinstance(member, keras.Model) or not getattr(member, "inputs", None):
        raise TfcompressError(f"member {index} is not a built Functional / Sequential Keras model",
                              where, "build each member with keras.Input")
    if len(member.inputs) != 1 or len(member.outputs) != 1:
        raise TfcompressError(f"member {index} has {len(member.inputs)} inputs and {len(member.outputs)} outputs",
                              f"{where} ({member.name})", "members take one input and return class logits")
    out = tuple(member.outputs[0].shape)
    if len(out) != 2 or out[1] is None:
        raise TfcompressError(f"member {index} returns shape {out}, not [batch, classes] logits",
                              f"{where} ({member.name})", "end each member with Dense(classes) logits")
    if _ends_in_probabilities(member):
        raise TfcompressError(
            f"member {index} ends in a softmax: the posterior averages probabilities it computes from logits",
            f"{where} ({member.name})",
            "drop the final softmax (Dense(classes) with no activation) or pass a logits model")
    return tuple(member.inputs[0].shape[1:]), int(out[1])


def _ends_in_probabilities(member) -> bool:
    from tfcompress.core import trace

    graph = trace(member)
    node = graph.producer(graph.outputs[0])
    if node is None or not node.is_layer:
        return False
    activation = getattr(node.op, "activation", None)
    return getattr(activation, "__name__", "") == "softmax" or isinstance(node.op, keras.layers.Softmax)


def refuse_stochastic(model) -> None:
    """Raise if a layer of ``model`` is called with ``training=True``.

    Such a layer (an MC-dropout ``Dropout(...)(x, training=True)``, a BatchNormalization in
    training mode) is random or batch-dependent in Keras but converts to its inference form: the
    file would silently compute another model. The error names it and what to do instead.
    """
    from tfcompress.core import trace

    graph = trace(model, where="tfcompress.uncertainty")
    for node in graph.nodes:
        if node.kwargs.get("training") is True:
            raise ConversionError(
                f"layer {node.name!r} ({type(node.op).__name__}) is called with training=True: "
                "TFLite computes it in inference mode, so its randomness would vanish from the file",
                getattr(model, "name", "model"),
                "freeze it into S deterministic members with tfcompress.uncertainty.mc_dropout(model, "
                "samples=S), or call the layer without training=True")


def output_positions(data: bytes) -> dict[str, int]:
    """The positions of a posterior file's named outputs among its output tensors.

    The converter orders a dict's outputs its own way; the serving signature names them.
    """
    from tfcompress.export.runtime import ModelRunner

    runner = ModelRunner(data, delegate="none")
    signatures = runner.interpreter._get_full_signature_list()
    if not signatures:
        return {f"output_{i}": i for i in range(len(runner.output_details))}
    outputs = next(iter(signatures.values()))["outputs"]
    position = {d["index"]: i for i, d in enumerate(runner.output_details)}
    named = {name: position[index] for name, index in outputs.items()}
    return {name: named[name] for name in OUTPUT_NAMES if name in named} | {
        n: p for n, p in named.items() if n not in OUTPUT_NAMES}


def run_tflite(path: str | os.PathLike | bytes, x: np.ndarray, **runner_kwargs: Any) -> dict[str, np.ndarray]:
    """Run a posterior ``.tflite`` file on ``x``; return its dequantized outputs by name.

    ``runner_kwargs`` go to :class:`tfcompress.export.ModelRunner` (e.g.
    ``reference_kernels=True``, ``delegate="none"``).

    Example:
        >>> import keras
        >>> members = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(2)]
        >>> x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
        >>> _ = ensemble(members).to_tflite("posterior.tflite", x, compare_single=False)
        >>> out = run_tflite("posterior.tflite", x)
        >>> sorted(out), out["knowledge"].shape, bool(np.allclose(out["probs"].sum(-1), 1.0, atol=0.05))
        (['data', 'knowledge', 'log_probs', 'probs', 'total'], (32,), True)
    """
    from tfcompress.export.runtime import ModelRunner

    runner = ModelRunner(path, **runner_kwargs)
    positions = output_positions(runner.model.data)
    x = np.asarray(x)
    step = runner.batch_size
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in positions}
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        rows = len(chunk)
        if rows < step:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - rows, axis=0)])
        raw = runner.invoke_raw([runner.quantize_input(chunk)])
        for name, i in positions.items():
            chunks[name].append(runner.dequantize_output(raw[i], i)[:rows])
    return {name: np.concatenate(parts) for name, parts in chunks.items()}
