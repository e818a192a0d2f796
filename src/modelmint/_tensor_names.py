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

# A detector's graph: dense candidates, selected after the graph (``_data.detection``).
DENSE_BOXES = "dense_boxes"  # FP32 [batch, A, 4]: x1, y1, x2, y2 in pixels of the S x S input
DENSE_SCORES = "dense_scores"  # FP32 [batch, A, classes]: a probability per class
# A detector's served outputs, K rows per image (padding: score 0, class -1).
BOXES = "boxes"  # FP32 [batch, K, 4]: original image pixels for ``image``, else tensor pixels
SCORES = "scores"  # FP32 [batch, K]
CLASSES = "classes"  # INT32 [batch, K]: index into the version's labels
COUNT = "count"  # INT32 [batch]: the detections before the padding
# Request parameters of a detector.
SCORE_THRESHOLD = "score_threshold"
MAX_DETECTIONS = "max_detections"

# The raw (encoded) input each preprocessing kind accepts beside ``input``.
RAW_INPUTS = {"image": IMAGE_INPUT, "audio": AUDIO_INPUT, "text": TEXT_INPUT,
              "letterbox": IMAGE_INPUT}
