"""Training building blocks: ImageNet backbones split into a frozen prefix and a tail, cached
activations, the two-stage loop with checkpoints, ONNX export, evaluation metrics."""
