"""The accuracy gate, the CPU-feature rule for INT8 types, and the choice among candidates."""

from __future__ import annotations

import numpy as np
from onnxruntime.quantization import QuantType

from modelmint._optimize.measure import Candidate, Timing, measure
from modelmint._optimize.quantize import ArrayReader, choose_quant_config, cpu_features
from modelmint._optimize.select import LabelledImages, assess, choose

LABELS = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
VAL = np.array([False] * 5 + [True] * 5)
DATA = LabelledImages(np.zeros((10, 3, 2, 2), np.float32), LABELS, VAL)


def test_gate_passes_identical_predictions() -> None:
    gate = assess(LABELS.copy(), LABELS.copy(), DATA, max_accuracy_drop=1.0)
    assert gate.passed and gate.val_drop == 0 and gate.agreement == 100


def test_gate_fails_on_accuracy_drop_and_on_disagreement() -> None:
    worse = LABELS.copy()
    worse[9] = 0  # one val image wrong: -20 points, 90 % agreement
    gate = assess(worse, LABELS, DATA, max_accuracy_drop=1.0)
    assert not gate.passed
    assert "drops 20.00 points" in gate.reason and "agreement" in gate.reason


def test_gate_catches_traded_errors_that_accuracy_alone_misses() -> None:
    # Two train-split answers change: val accuracy is untouched, agreement falls to 80 %.
    traded = LABELS.copy()
    traded[0], traded[1] = 1, 0
    gate = assess(traded, LABELS, DATA, max_accuracy_drop=1.0)
    assert gate.val_drop == 0 and not gate.passed and "agreement" in gate.reason


def test_impossible_drop_rejects_even_identical_predictions() -> None:
    assert not assess(LABELS.copy(), LABELS, DATA, max_accuracy_drop=-1.0).passed
    assert assess(LABELS.copy(), LABELS, DATA, max_accuracy_drop=-1.0, exact=True).passed


def test_quant_types_follow_cpu_flags() -> None:
    plain = choose_quant_config(cpu_features("flags\t: fpu sse4_2 avx avx2 fma\ncpu MHz\t: 2450.0"))
    assert (plain.activation, plain.weight, plain.reduce_range) == (
        QuantType.QUInt8, QuantType.QInt8, True)
    vnni = choose_quant_config(cpu_features("flags\t: avx2 avx512f avx512_vnni\n"))
    assert vnni.reduce_range is False and vnni.activation == QuantType.QUInt8
    assert cpu_features("flags : avx_vnni\ncpu MHz : 3000\n").mhz == 3000.0


def test_calibration_reader_batches_and_rewinds() -> None:
    reader = ArrayReader(np.zeros((10, 3, 2, 2), np.float32), batch=4)
    sizes = []
    while (item := reader.get_next()) is not None:
        sizes.append(len(item["input"]))
    assert sizes == [4, 4, 2]
    reader.rewind()
    assert reader.get_next() is not None


def _cand(name: str, onnx: bool) -> Candidate:
    return Candidate(name, "onnxruntime" if onnx else "torch", "fp32", lambda x: x,
                     f"{name}.onnx" if onnx else None)


def test_choice_is_fastest_passing_and_a_torch_winner_publishes_onnx() -> None:
    cands = [_cand("ort-fp32", True), _cand("int8", True), _cand("torch-eager", False)]
    timings = {"ort-fp32": {1: Timing(7, 9, 0.1, 5), 8: Timing(45, 50, 0.1, 5)},
               "int8": {1: Timing(5, 6, 0.1, 5), 8: Timing(28, 30, 0.1, 5)},
               "torch-eager": {1: Timing(1, 2, 0.1, 5), 8: Timing(8, 9, 0.1, 5)}}
    ok = assess(LABELS, LABELS, DATA, 1.0)
    bad = assess(1 - LABELS, LABELS, DATA, 1.0)
    choice = choose(cands, timings, {"ort-fp32": ok, "int8": ok, "torch-eager": ok})
    assert (choice.chosen, choice.published) == ("torch-eager", "int8")
    assert "ONNX server cannot run" in choice.reason
    choice = choose(cands, timings, {"ort-fp32": ok, "int8": bad, "torch-eager": bad})
    assert (choice.chosen, choice.published) == ("ort-fp32", "ort-fp32")
    assert "rejected by the gate: int8" in choice.reason


def test_measure_interleaves_and_reports_every_batch() -> None:
    calls: list[tuple[str, int]] = []

    def runner(name: str) -> Candidate:
        return Candidate(name, "torch", "fp32", lambda x: calls.append((name, len(x))))

    timings = measure([runner("a"), runner("b")], (1, 8), np.zeros((3, 1), np.float32),
                      rounds=2, iters=1, warmup=1)
    assert set(timings) == {"a", "b"} and set(timings["a"]) == {1, 8}
    assert timings["a"][8].samples == 2
    timed = calls[4:]  # after 2 candidates x 2 batches of warm-up
    assert [n for n, _ in timed] == ["a", "a", "b", "b", "b", "b", "a", "a"]  # rotated order
    assert {b for _, b in calls} == {1, 8}
