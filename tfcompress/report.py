"""`CompressionReport`: what a compression step changed, what it left alone and why, what to do.

``prune``, ``quantize``, ``bayesian.convert`` and ``to_tflite`` build one and hang it on what
they return (``model.compression_report``, ``ExportReport.layers``), instead of one log line per
layer left alone. It is printed once, as a table (``str(report)``), and is available as data
(``to_dict`` / ``to_json``), as Keras' own ``quantize`` reports what it quantized and what it
skipped. Each row is one layer (or, for ``to_tflite``, one op): its ``action`` says what the step
did to it (``"skipped"`` when it left it alone), ``reason`` why, and ``fix`` what the user can do.

Example:

>>> from tfcompress.report import CompressionReport
>>> report = CompressionReport("prune")
>>> report.add("fc1", "Dense", "pruned", "granularity weight, scope layer")
>>> report.add("lstm", "LSTM", "skipped", "LSTM layers are not supported", "replace it by Conv1D",
...            important=True)
>>> [row.layer for row in report.skipped]
['lstm']
>>> print(report)
prune: 1 layer changed, 1 left alone
  layer  type   action   reason                           fix
  fc1    Dense  pruned   granularity weight, scope layer
  lstm   LSTM   skipped  LSTM layers are not supported    replace it by Conv1D
>>> report.to_dict()["rows"][1]["fix"]
'replace it by Conv1D'
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger("tfcompress")

#: the action of a row the step left alone
SKIPPED = "skipped"
VERBOSE_LEVELS = (0, 1, 2)


@dataclass
class ReportRow:
    """One layer (or op) in a `CompressionReport`.

    Attributes:
        layer: the layer's (or op's) name.
        type: its class (or TFLite op) name.
        action: what the step did (``"pruned"``, ``"quantized"``, ``"converted"``, ...), or
            ``"skipped"`` when it left it alone.
        reason: why (for a skipped row: why it could not be changed).
        fix: what the user can do about it ("" when nothing is needed).
        important: a loss the user should hear about (a weight matrix left dense, a layer the
            user asked for, an op left in float).

    Example:
        >>> row = ReportRow("fc1", "Dense", "skipped", "units=1 is too few to prune", important=True)
        >>> row.action, row.fix
        ('skipped', '')
    """

    layer: str
    type: str
    action: str
    reason: str = ""
    fix: str = ""
    important: bool = False


@dataclass
class CompressionReport:
    """The rows of one compression step (``step``: ``"prune"``, ``"quantize"``, ...).

    Example:
        >>> report = CompressionReport("quantize")
        >>> report.add("fc1", "Dense", "quantized", "int8 per-channel weights")
        >>> report.summary()
        'quantize: 1 layer changed, 0 left alone'
        >>> report.row("fc1").reason
        'int8 per-channel weights'
        >>> report.to_json()
        '{"step": "quantize", "changed": 1, "skipped": 0, "rows": [{"layer": "fc1", ...}], "notes": []}'
    """

    step: str
    rows: list[ReportRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, layer: str, type: str, action: str, reason: str = "", fix: str = "", *,
            important: bool = False) -> None:
        """Append a row (see `ReportRow`)."""
        self.rows.append(ReportRow(str(layer), str(type), str(action), str(reason), str(fix), bool(important)))

    @property
    def changed(self) -> list[ReportRow]:
        """The rows the step changed."""
        return [row for row in self.rows if row.action != SKIPPED]

    @property
    def skipped(self) -> list[ReportRow]:
        """The rows the step left alone."""
        return [row for row in self.rows if row.action == SKIPPED]

    def row(self, layer: str) -> ReportRow:
        """The row of ``layer`` (KeyError if it has none)."""
        for row in self.rows:
            if row.layer == layer:
                return row
        raise KeyError(layer)

    def summary(self) -> str:
        """One line: how many rows changed and how many were left alone."""
        changed, skipped = len(self.changed), len(self.skipped)
        return (f"{self.step}: {changed} layer{'s' if changed != 1 else ''} changed, "
                f"{skipped} left alone")

    def __str__(self) -> str:
        header = ("layer", "type", "action", "reason", "fix")
        table = [header] + [(r.layer, r.type, r.action, r.reason, r.fix) for r in self.rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        lines = [self.summary()]
        if self.rows:
            lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                      for line in table]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def text(self) -> str:
        """The table (``str(report)``)."""
        return str(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``{"step", "changed", "skipped", "rows": [...], "notes"}``."""
        return {"step": self.step, "changed": len(self.changed), "skipped": len(self.skipped),
                "rows": [asdict(row) for row in self.rows], "notes": list(self.notes)}

    def to_json(self, **kwargs: Any) -> str:
        """``to_dict()`` as JSON (``kwargs`` go to ``json.dumps``, e.g. ``indent=2``)."""
        return json.dumps(self.to_dict(), **kwargs)

    def emit(self, verbose: int, *, warn: bool = False) -> None:
        """Show the report once: ``verbose=0`` nothing; ``1`` one log record on the ``tfcompress``
        logger (a warning when a row is ``important`` or ``warn``, else info); ``2`` the table on
        stdout."""
        if verbose == 2:
            print(self)
        elif verbose == 1:
            important = warn or any(row.important for row in self.rows)
            logger.log(logging.WARNING if important else logging.INFO, "%s", self)


def check_verbose(verbose: Any, where: str) -> int:
    """``verbose`` as 0, 1 or 2, or a TfcompressError.

    Example:
        >>> check_verbose(2, "prune")
        2
        >>> check_verbose("loud", "prune")
        Traceback (most recent call last):
        ...
        tfcompress.errors.TfcompressError: prune: verbose must be 0, 1 or 2, got 'loud' Fix: ...
    """
    from tfcompress.errors import TfcompressError

    if isinstance(verbose, bool) or verbose not in VERBOSE_LEVELS:
        raise TfcompressError(f"verbose must be 0, 1 or 2, got {verbose!r}", where,
                              "0: silent, 1: log the report once (default), 2: print it")
    return int(verbose)


def attach(model: Any, report: CompressionReport) -> Any:
    """Hang ``report`` on ``model`` as ``model.compression_report`` (outside Keras' attribute
    tracking: it is not part of the model's config or weights) and return the model.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> attach(model, CompressionReport("prune")).compression_report.step
        'prune'
    """
    object.__setattr__(model, "compression_report", report)
    return model
