"""A frozen prefix is inference, not training: run it in an inference engine.

When the first layers of a fine-tuned network never train (no parameter requires grad, BatchNorm
in eval mode), every step re-runs a pure inference graph through eager PyTorch. ONNX Runtime
runs that same graph with BatchNorm folded into the convolutions, conv+activation fused and
NHWC kernels: measured on this 2-core CPU for MobileNetV2 ``features[:18]`` at batch 32, several
times faster than eager NCHW (see ``benchmarks/profile_autotune.py``). The gradient is
unaffected: nothing before the first trainable layer needs one.

:class:`OnnxFrozenPrefix` swaps the module in place; :func:`frozen_prefix_facts` tells the
advisor how much of the network is frozen and which engine runs it.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._repository import OPSET

ENGINE_TORCH = "torch"
ENGINE_ORT = "onnxruntime"


def is_frozen(module: nn.Module) -> bool:
    """No parameter trains and no BatchNorm updates its running statistics."""
    params = list(module.parameters())
    bn_training = any(m.training for m in module.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm))
    return bool(params) and not any(p.requires_grad for p in params) and not bn_training


def frozen_prefix_facts(prefix: nn.Module, whole: nn.Module, name: str) -> dict[str, Any]:
    """What the advisor reads: the prefix's share of the parameters and its engine."""
    total = sum(p.numel() for p in whole.parameters()) or 1
    engine = ENGINE_ORT if isinstance(prefix, OnnxFrozenPrefix) else ENGINE_TORCH
    inner = prefix.module if isinstance(prefix, OnnxFrozenPrefix) else prefix
    return {"module": name, "engine": engine, "frozen": is_frozen(inner),
            "parameter_share": sum(p.numel() for p in inner.parameters()) / total}


class OnnxFrozenPrefix(nn.Module):
    """``module`` (frozen, eval mode) exported once to ONNX and run by ONNX Runtime.

    Inputs and outputs are torch tensors on the CPU; the output carries no autograd history,
    which is exactly what eager PyTorch produces for a frozen prefix on an input that needs no
    gradient. Spinning is off so that idle ORT threads do not steal the cores the trainable
    layers and the DataLoader workers need right after."""

    def __init__(self, module: nn.Module, example: torch.Tensor, threads: int | None = None
                 ) -> None:
        super().__init__()
        import onnxruntime as ort

        if not is_frozen(module):
            raise ValueError("OnnxFrozenPrefix: the module has trainable parameters or "
                             "BatchNorm layers in training mode")
        self.module = module  # kept for facts and state_dict; never called
        with tempfile.TemporaryDirectory(prefix="mint-frozen-") as tmp, \
                warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            path = Path(tmp) / "prefix.onnx"
            sample = module.eval()(example[:1].contiguous())
            self.outputs = [f"y{i}" for i in range(len(sample))] \
                if isinstance(sample, tuple) else ["y"]
            torch.onnx.export(module, (example.contiguous(),), str(path),
                              input_names=["x"], output_names=self.outputs,
                              opset_version=OPSET,
                              dynamic_axes={name: {0: "batch"} for name in ["x", *self.outputs]},
                              dynamo=False)
            graph = path.read_bytes()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(graph, options,
                                            providers=["CPUExecutionProvider"])

    def train(self, mode: bool = True) -> OnnxFrozenPrefix:
        return self  # frozen: model.train() must not switch its BatchNorm to batch statistics

    def forward(self, x: torch.Tensor) -> Any:
        """A tensor, or a tuple of them where the module returns a tuple."""
        inputs = np.ascontiguousarray(x.detach().contiguous().numpy(), dtype=np.float32)
        out = [torch.from_numpy(y) for y in self.session.run(self.outputs, {"x": inputs})]
        return tuple(out) if self.outputs != ["y"] else out[0]
