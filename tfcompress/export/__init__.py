"""Export: Keras 3 -> verified TFLite for LiteRT, TFLite Micro and the Edge TPU."""

from tfcompress.export.bench import BenchReport, benchmark
from tfcompress.export.buffers import OffsetBuffer, inline_buffers, offset_buffers
from tfcompress.export.calibration import load_calibration_file, representative_samples
from tfcompress.export.compare import ComparisonReport, LayerError, compare
from tfcompress.export.convert import ExportReport, load_keras_model, to_tflite
from tfcompress.export.edgetpu import EdgeTPUReport, edgetpu_report
from tfcompress.export.micro import MicroReport, to_micro
from tfcompress.export.precision import PrecisionError, quantize_tflite
from tfcompress.export.precision_search import MixedPrecisionReport, mixed_precision
from tfcompress.export.runtime import Agreement, Evaluation, ModelRunner, agreement, evaluate
from tfcompress.export.tensor_names import compact_tflite, strip_tensor_names
from tfcompress.export.tflite_file import TFLiteModel, gzip_size, load_tflite, validate_tflite

__all__ = [
    "Agreement",
    "BenchReport",
    "ComparisonReport",
    "EdgeTPUReport",
    "MicroReport",
    "MixedPrecisionReport",
    "Evaluation",
    "LayerError",
    "ExportReport",
    "ModelRunner",
    "OffsetBuffer",
    "PrecisionError",
    "TFLiteModel",
    "agreement",
    "benchmark",
    "compact_tflite",
    "compare",
    "edgetpu_report",
    "evaluate",
    "gzip_size",
    "inline_buffers",
    "load_calibration_file",
    "load_keras_model",
    "load_tflite",
    "mixed_precision",
    "offset_buffers",
    "quantize_tflite",
    "representative_samples",
    "strip_tensor_names",
    "to_micro",
    "to_tflite",
    "validate_tflite",
]
