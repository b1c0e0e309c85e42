"""Drop the tensor names a `.tflite` file carries: flash a microcontroller does not need.

The converter names every tensor after the TensorFlow ops that made it
(``"ensemble_1/member_3_1/conv2_1/BiasAdd;ensemble_1/member_3_1/conv2_1/Conv2D;..."``),
typically 30-100 bytes each; a posterior of S members has S times as many. No interpreter
reads them (LiteRT's signature runner and TFLite Micro address tensors by index; the
signature's input / output names live in the SignatureDef, not in the tensors), so removing
them leaves what the file computes unchanged. The subgraph's input and output tensors keep
their names, for tools that list them.
"""

from __future__ import annotations

import os

from tfcompress.errors import InvalidModelFileError
from tfcompress.export.buffers import _schema, write_model_tree
from tfcompress.export.tflite_file import TFLiteModel, load_tflite

__all__ = ["compact_tflite", "strip_tensor_names"]


def compact_tflite(source: str | os.PathLike | bytes, output: str | os.PathLike) -> TFLiteModel:
    """Rewrite a `.tflite` file in fewer bytes with the same computation: what a device never reads goes.

    Three rewrites, each leaving every interpreter's view of the graph unchanged:

    - the names of intermediate and constant tensors (:func:`strip_tensor_names`);
    - ``shape_signature`` where it equals ``shape`` (the schema: "if not set, the same as
      shape"; a dynamic signature with -1 is kept);
    - the converter's one empty buffer per non-constant tensor: such tensors all point at
      buffer 0, the schema's empty sentinel, and the unused entries are removed.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
        ...                           keras.layers.Dense(4)])
        >>> _ = to_tflite(model, "/tmp/full.tflite", "int8", np.ones((4, 8), "float32"))
        >>> small = compact_tflite("/tmp/full.tflite", "/tmp/compact.tflite")
        >>> full = load_tflite("/tmp/full.tflite")
        >>> small.size_bytes < full.size_bytes, small.weight_stats() == full.weight_stats()
        (True, True)
        >>> len(small._buffers) == len(full._buffers)      # the same constant data
        True
    """
    return _rewrite(source, output, names=True, signatures=True, buffers=True)


def strip_tensor_names(source: str | os.PathLike | bytes, output: str | os.PathLike) -> TFLiteModel:
    """Rewrite a `.tflite` file without the names of its intermediate and constant tensors.

    Buffers stay inside the flatbuffer, 16-byte aligned (as the converter writes them); ops,
    tensors, quantization, signatures and metadata are unchanged. Returns the written file,
    validated by `load_tflite`.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> _ = to_tflite(model, "/tmp/named.tflite", "int8", np.ones((4, 8), "float32"))
        >>> small = strip_tensor_names("/tmp/named.tflite", "/tmp/unnamed.tflite")
        >>> [t.name for t in small.tensors[0] if t.name]           # only the input and output keep theirs
        ['serving_default_keras_tensor...:0', '...PartitionedCall...:0']
        >>> small.op_counts() == load_tflite("/tmp/named.tflite").op_counts()
        True
    """
    return _rewrite(source, output, names=True, signatures=False, buffers=False)


def _rewrite(source, output, *, names: bool, signatures: bool, buffers: bool) -> TFLiteModel:
    import numpy as np

    model = load_tflite(source)
    if model.external_buffers:
        raise InvalidModelFileError("its buffers are stored by offset after the flatbuffer", model.path or "<bytes>",
                                    "move them inside first: tfcompress.export.inline_buffers(src, dst)")
    tree = _schema().ModelT.InitFromPackedBuf(bytearray(model.data), 0)
    for subgraph in tree.subgraphs or []:
        keep = {int(i) for i in (*(subgraph.inputs if subgraph.inputs is not None else ()),
                                 *(subgraph.outputs if subgraph.outputs is not None else ()))}
        for index, tensor in enumerate(subgraph.tensors or []):
            if names and index not in keep:
                tensor.name = None
            signature = tensor.shapeSignature
            if signatures and signature is not None and not isinstance(signature, int) and tensor.shape is not None \
                    and len(signature) == len(tensor.shape) and np.array_equal(signature, tensor.shape):
                tensor.shapeSignature = None
    data = [model._buffers.get(i) for i in range(len(tree.buffers or []))]
    if buffers:
        # every buffer a tensor, the metadata or a signature refers to with data keeps its place
        # in a new, dense numbering; tensors without data point at buffer 0 (always empty)
        used = sorted({int(t.buffer) for sg in tree.subgraphs or [] for t in sg.tensors or []
                       if data[int(t.buffer)] is not None and len(data[int(t.buffer)])}
                      | {int(m.buffer) for m in tree.metadata or []}
                      | {int(b) for b in (tree.metadataBuffer if tree.metadataBuffer is not None else ())})
        if data and (data[0] is None or not len(data[0])):
            renumber = {old: new for new, old in enumerate(used, start=1)}
            for sg in tree.subgraphs or []:
                for t in sg.tensors or []:
                    t.buffer = renumber.get(int(t.buffer), 0)
            for m in tree.metadata or []:
                m.buffer = renumber[int(m.buffer)]
            if tree.metadataBuffer is not None:
                tree.metadataBuffer = [renumber[int(b)] for b in tree.metadataBuffer]
            data = [None, *(data[i] for i in used)]
    return write_model_tree(tree, data, output, len(model.data) + 1024)
