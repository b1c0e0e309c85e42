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

from tfcompress._io import write_bytes_atomic
from tfcompress.errors import InvalidModelFileError
from tfcompress.export.buffers import _AlignedBuffer, _schema
from tfcompress.export.tflite_file import TFLiteModel, load_tflite

__all__ = ["strip_tensor_names"]


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
        ['serving_default_keras_tensor:0', 'StatefulPartitionedCall...:0']
        >>> small.op_counts() == load_tflite("/tmp/named.tflite").op_counts()
        True
    """
    import flatbuffers

    model = load_tflite(source)
    if model.external_buffers:
        raise InvalidModelFileError("its buffers are stored by offset after the flatbuffer", model.path or "<bytes>",
                                    "move them inside first: tfcompress.export.inline_buffers(src, dst)")
    tree = _schema().ModelT.InitFromPackedBuf(bytearray(model.data), 0)
    for subgraph in tree.subgraphs or []:
        keep = {int(i) for i in (*(subgraph.inputs if subgraph.inputs is not None else ()),
                                 *(subgraph.outputs if subgraph.outputs is not None else ()))}
        for index, tensor in enumerate(subgraph.tensors or []):
            if index not in keep:
                tensor.name = None
    tree.buffers = [_AlignedBuffer(model._buffers.get(i)) for i in range(len(tree.buffers or []))]
    builder = flatbuffers.Builder(len(model.data) + 1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    write_bytes_atomic(output, bytes(builder.Output()))
    return load_tflite(output)
