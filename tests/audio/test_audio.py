"""Sound classification end to end: log-mel preprocessing (resampling, filterbank, bad bytes),
the folder loader, and a spoken-digit model with a "none of these" class trained by the
search, served by the real server and queried with tritonclient over HTTP and gRPC."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from scipy.signal import resample_poly
from tritonclient.utils import InferenceServerException

from live_server import full_server
from modality_server import train
from modelmint._data.audio import (
    AudioSpec,
    load_audio_data,
    log_mel,
    mel_filterbank,
    preprocess_audio,
)
from modelmint._repository import ModelMetadata
from modelmint.errors import AudioDecodeError

DIGITS = Path(__file__).resolve().parents[3] / "shared" / "data" / "spoken_digits"
SPEC = AudioSpec()


def _wav(wave: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.mark.parametrize("up,down,rate", [(2, 1, 16000), (441, 80, 44100)])
def test_same_sound_at_another_sample_rate_gives_the_same_features(up: int, down: int,
                                                                   rate: int) -> None:
    for digit in ("0", "7"):
        original = DIGITS / digit / f"{digit}_theo_1.wav"
        wave, sr = sf.read(original, dtype="float32")
        assert sr == 8000
        resampled = _wav(resample_poly(wave, up, down).astype(np.float32), rate)
        ours = preprocess_audio(original.read_bytes(), SPEC)
        theirs = preprocess_audio(resampled, SPEC)
        diff = np.abs(ours - theirs)
        assert diff.mean() < 0.05 and np.percentile(diff, 99) < 0.5
        # Control: another take of the same digit by the same speaker is far more different.
        other = preprocess_audio((DIGITS / digit / f"{digit}_theo_2.wav").read_bytes(), SPEC)
        assert np.abs(ours - other).mean() > 10 * diff.mean()


def test_mel_filterbank_is_slaney_and_a_tone_lands_in_its_band() -> None:
    bank = mel_filterbank(16000, 512, 64, 20.0, 8000.0)
    assert bank.shape == (64, 257) and (bank >= 0).all()
    # Slaney normalisation: every triangle has area 2 / (upper edge - lower edge) * width / 2,
    # so narrow low bands have high peaks and the peak falls as bands widen.
    peaks = bank.max(1)
    assert peaks[0] > peaks[-1] * 5
    t = np.arange(16000) / 16000
    for hz in (300.0, 1000.0, 3000.0):
        band = int(log_mel((0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32),
                           SPEC)[0].mean(1).argmax())
        centre = np.fft.rfftfreq(512, 1 / 16000)[bank[band].argmax()]
        assert abs(centre - hz) / hz < 0.1


def test_bad_bytes_name_the_input() -> None:
    with pytest.raises(AudioDecodeError, match=r"audio\[3\]: not a decodable sound file"):
        preprocess_audio(b"RIFF\x00\x00not really a wav", SPEC, name="audio[3]")
    with pytest.raises(AudioDecodeError, match="holds no samples"):
        preprocess_audio(_wav(np.zeros(0, np.float32), 8000), SPEC, name="x")


def test_loader_splits_by_speaker_with_group_by() -> None:
    data = load_audio_data(DIGITS, seed=0, group_by="_([a-z]+)_")
    assert data.labels == [str(d) for d in range(10)]
    train_speakers = {data.groups[i] for i, _ in data.train}
    val_speakers = {data.groups[i] for i, _ in data.val}
    assert val_speakers and not train_speakers & val_speakers
    assert "held out" in data.split_note


@pytest.fixture(scope="module")
def digits_with_reject(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Digits 0-4 as classes, 5-9 as the --reject-dir folder (file links, not copies:
    folder discovery does not follow directory links)."""
    tmp = tmp_path_factory.mktemp("digits")
    for digit in range(10):
        folder = tmp / ("data" if digit < 5 else "reject") / str(digit)
        folder.mkdir(parents=True)
        for wav in (DIGITS / str(digit)).glob("*.wav"):
            (folder / wav.name).symlink_to(wav)
    return train(tmp / "data", tmp, ["logmel-stats+lr"], budget=120,
                 reject_dir=str(tmp / "reject"))


@pytest.fixture(scope="module")
def digits_server(digits_with_reject: dict[str, Any]) -> Iterator[tuple[str, str]]:
    with full_server(Path(digits_with_reject["version_dir"]).parents[1],
                     isolation="process") as (server, _):
        assert server.grpc is not None
        yield server.url.removeprefix("http://"), server.grpc.address


def test_search_publishes_a_sound_model_with_an_other_class(
        digits_with_reject: dict[str, Any]) -> None:
    assert digits_with_reject["task"] == "audio-classification"
    meta = ModelMetadata.load(Path(digits_with_reject["version_dir"]))
    assert meta.labels == ["0", "1", "2", "3", "4", "other"]
    assert meta.preprocessing.kind == "audio"
    inputs, _ = meta.signature
    assert [(t.name, t.datatype, t.shape) for t in inputs] == [
        ("input", "FP32", [-1, *SPEC.shape]), ("audio", "BYTES", [-1])]
    assert digits_with_reject["val_accuracy"] > 0.85


def _val_files(result: dict[str, Any]) -> list[tuple[Path, str]]:
    meta = ModelMetadata.load(Path(result["version_dir"]))
    root = Path(meta.provenance["data_root"])
    return [(root / item, label) for item, label in meta.provenance["split"]["val"]]


def test_held_out_out_of_domain_digits_come_back_other_over_grpc(
        digits_server: tuple[str, str], digits_with_reject: dict[str, Any]) -> None:
    val = _val_files(digits_with_reject)
    others = [path for path, label in val if label == "other"]
    digits = [(path, label) for path, label in val if label != "other"]
    assert len(others) >= 100 and all(path.name[0] in "56789" for path in others)
    client = grpcclient.InferenceServerClient(digits_server[1])

    def labels(paths: list[Path]) -> list[str]:
        out = []
        for start in range(0, len(paths), 32):
            chunk = paths[start:start + 32]
            tensor = grpcclient.InferInput("audio", [len(chunk)], "BYTES")
            tensor.set_data_from_numpy(np.array([p.read_bytes() for p in chunk], np.object_))
            wanted = grpcclient.InferRequestedOutput("probabilities", class_count=1)
            rows = client.infer("m", [tensor], outputs=[wanted]).as_numpy("probabilities")
            out += [row[0].decode().split(":")[2] for row in rows]
        return out

    assert np.mean([label == "other" for label in labels(others)]) >= 0.85
    predicted = labels([path for path, _ in digits])
    assert np.mean([p == t for p, (_, t) in zip(predicted, digits, strict=True)]) >= 0.85


def test_wav_bytes_over_http_and_bad_bytes_are_a_400(digits_server: tuple[str, str]) -> None:
    client = httpclient.InferenceServerClient(digits_server[0])
    three = (DIGITS / "3" / "3_jackson_0.wav").read_bytes()
    resampled = _wav(resample_poly(sf.read(io.BytesIO(three), dtype="float32")[0], 2, 1)
                     .astype(np.float32), 16000)
    tensor = httpclient.InferInput("audio", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([three, resampled], np.object_))
    probs = client.infer("m", [tensor]).as_numpy("probabilities")
    assert probs.shape == (2, 6)
    # Same answer; the logistic regression is sharp enough that 0.02 of log-mel difference
    # moves probabilities by up to ~0.2.
    assert probs[0].argmax() == probs[1].argmax() == 3
    np.testing.assert_allclose(probs[0], probs[1], atol=0.3)
    bad = httpclient.InferInput("audio", [2], "BYTES")
    bad.set_data_from_numpy(np.array([three, b"definitely not audio"], np.object_))
    with pytest.raises(InferenceServerException, match=r"audio\[1\]: not a decodable") as err:
        client.infer("m", [bad])
    assert err.value.status() == "400"


def test_sdk_predicts_wav_files_over_http(digits_server: tuple[str, str], tmp_path: Path) -> None:
    from modelmint._client import predict

    (tmp_path / "broken.wav").write_bytes(b"RIFF nonsense")
    files = [DIGITS / "2" / "2_lucas_7.wav", DIGITS / "8" / "8_lucas_7.wav", tmp_path]
    preds = predict(files, "m", url=digits_server[0], top_k=1)
    assert [p.label for p in preds[:2]] == ["2", "other"]
    assert preds[2].error is not None and "not a decodable sound file" in preds[2].error


@pytest.fixture(scope="module")
def three_digits() -> Any:
    """3 classes, ~36 training and ~18 validation clips of the random split."""
    data = load_audio_data(DIGITS, seed=0)
    data.train = [it for it in data.train if it[1] < 3][::20]
    data.val = [it for it in data.val if it[1] < 3][::10]
    data.labels = data.labels[:3]
    return data


def test_cnn_candidate_trains_within_its_deadline_and_exports(three_digits: Any,
                                                              tmp_path: Path) -> None:
    import time

    from modelmint._tasks.audio.candidates import SpectrogramCNNCandidate, one_cycle

    started = time.monotonic()
    fitted = SpectrogramCNNCandidate().fit(three_digits, None, started + 4.0, tmp_path / "t")
    assert time.monotonic() - started < 30  # the deadline, plus the last epoch and features
    assert fitted.val_predictions().shape == (len(three_digits.val), 3)
    fitted.export(tmp_path)  # raises unless ONNX agrees with torch
    assert (tmp_path / "model.onnx").is_file()
    assert one_cycle(1.0, 0.3) == pytest.approx(1.0, abs=1e-5) and one_cycle(1.0, 1.0) < 1e-3


def test_segment_features_ignore_leading_silence_and_the_mlp_exports(
        three_digits: Any, tmp_path: Path) -> None:
    import time

    import torch
    from scipy.fft import dct

    from modelmint._tasks.audio.segments import (
        SegmentFeatures,
        SegmentMLPCandidate,
        dct_matrix,
        warp_mels,
    )

    np.testing.assert_allclose(dct_matrix(64, 20), dct(np.eye(64), axis=0, norm="ortho")[:20],
                               atol=1e-6)

    wave, _ = sf.read(DIGITS / "4" / "4_george_3.wav", dtype="float32")
    late = np.concatenate([np.zeros(1600, np.float32), wave])  # 0.1 s more silence first
    features = SegmentFeatures(SPEC.n_mels)
    with torch.inference_mode():
        on_time, delayed = (features(torch.from_numpy(preprocess_audio(_wav(w, 8000), SPEC)[None]))
                            for w in (wave, late))
    assert torch.allclose(on_time, delayed, atol=0.05 * float(on_time.abs().mean()))
    x = torch.randn(2, 1, 8, 5)
    assert torch.equal(warp_mels(x, torch.Generator().manual_seed(0), 0.0), x)

    started = time.monotonic()
    fitted = SegmentMLPCandidate().fit(three_digits, None, started + 3.0, tmp_path / "t")
    assert fitted.val_predictions().shape == (len(three_digits.val), 3)
    fitted.export(tmp_path)  # raises unless ONNX agrees with torch
