"""The names of the tensors every published model and every V2 request uses, said once.

Bottom layer (beside ``errors``): the data loaders, the repository metadata, the server, the V2
client and the exporters all import these instead of spelling the strings again.
"""

from __future__ import annotations

TENSOR_INPUT = "input"  # the preprocessed FP32 batch the ONNX graph takes
IMAGE_INPUT = "image"  # BYTES: encoded image files
AUDIO_INPUT = "audio"  # BYTES: sound files (WAV, FLAC)
TEXT_INPUT = "text"  # BYTES: UTF-8 text
LOGITS = "logits"  # FP32 [batch, classes], before softmax
PROBABILITIES = "probabilities"  # FP32 [batch, classes]; the classification extension's output

# The raw (encoded) input each preprocessing kind accepts beside ``input``.
RAW_INPUTS = {"image": IMAGE_INPUT, "audio": AUDIO_INPUT, "text": TEXT_INPUT}
