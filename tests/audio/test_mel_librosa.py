"""The NumPy log-mel features against librosa, which they reproduce so a server needs neither
librosa nor numba: the Slaney filterbank, and the whole log-mel of real recordings."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest

from modelmint._data.audio import AudioSpec, decode_audio, fix_length, log_mel, mel_filterbank

DIGITS = Path(__file__).resolve().parents[3] / "shared" / "data" / "spoken_digits"


@pytest.mark.parametrize("sample_rate,n_fft,n_mels,fmin,fmax", [
    (16000, 512, 64, 20.0, 8000.0),  # the default spec
    (16000, 400, 80, 0.0, 8000.0),  # an FFT size that is not a power of two
    (22050, 2048, 128, 0.0, 11025.0),
    (8000, 256, 40, 50.0, 3500.0),  # fmax under Nyquist: the top bins get no weight
    (44100, 1024, 32, 300.0, 16000.0),  # every band above the linear part of the mel scale
])
def test_filterbank_matches_librosa_slaney(sample_rate: int, n_fft: int, n_mels: int,
                                           fmin: float, fmax: float) -> None:
    ours = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    theirs = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
                                 fmax=fmax, htk=False, norm="slaney", dtype=np.float64)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)


def librosa_log_mel(wave: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """The documented recipe spelled with librosa: centred frames with zero padding, a
    periodic Hann window of ``win_length`` inside ``n_fft``, power 2, Slaney mel."""
    power_mel = librosa.feature.melspectrogram(
        y=fix_length(wave, spec).astype(np.float64), sr=spec.sample_rate, n_fft=spec.n_fft,
        hop_length=spec.hop_length, win_length=spec.win_length, window="hann", center=True,
        pad_mode="constant", power=2.0, n_mels=spec.n_mels, fmin=spec.fmin, fmax=spec.fmax,
        htk=False, norm="slaney")
    return np.log(power_mel + spec.log_floor)


@pytest.mark.parametrize("recording", ["0/0_theo_1.wav", "3/3_jackson_7.wav",
                                       "9/9_nicolas_20.wav"])
@pytest.mark.parametrize("spec", [AudioSpec(), AudioSpec(n_fft=1024, win_length=1024,
                                                         hop_length=256, n_mels=40, fmin=0.0)],
                         ids=["default", "wide-window"])
def test_log_mel_of_a_recording_matches_librosa(recording: str, spec: AudioSpec) -> None:
    path = DIGITS / recording
    if not path.is_file():
        pytest.fail(f"sample data missing: {path} (shared/ must sit beside the repo)")
    wave = decode_audio(path, spec)
    ours = log_mel(wave, spec)
    theirs = librosa_log_mel(wave, spec)
    assert ours.shape == (1, *theirs.shape) == (1, spec.n_mels, spec.frames)
    # Ours is cast to FP32 at the end: its rounding is the only difference allowed.
    np.testing.assert_allclose(ours[0], theirs, rtol=0, atol=2e-6)
    assert theirs.max() - theirs.min() > 5  # a real recording, not silence at the floor
