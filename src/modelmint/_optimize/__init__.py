"""Inference optimization: graph passes, INT8 with an accuracy gate, measured auto-selection.

``optimize(path)`` takes ``REPO/<model>`` (its latest version) or ``REPO/<model>/<n>`` and
publishes a new version whose ``model.onnx`` is the fastest candidate that passed the gate.
See docs/optimize.md.
"""

from __future__ import annotations

from .pipeline import REPORT_FILE, OptimizeResult, optimize, resolve

__all__ = ["REPORT_FILE", "OptimizeResult", "optimize", "resolve"]
