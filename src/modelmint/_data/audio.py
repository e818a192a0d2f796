"""Sound: the audio preprocessing spec (one implementation for training, the server and any
SDK) and the loader of ``root/<class>/*.wav`` folders.

Serving imports only NumPy, ``soundfile`` (libsndfile) and ``soxr`` from here, never torch.
Features are log-mel spectrograms: peak-normalised mono audio at ``sample_rate``, padded or cut
to ``duration_s``, STFT with a periodic Hann window (centred frames, zero padding), power
spectrum, a mel filterbank and ``log(mel + log_floor)``. The filterbank is librosa's
``filters.mel(htk=False, norm="slaney")`` (Slaney mel scale, area-normalised triangles),
reproduced below in NumPy so a server does not need librosa and numba.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import AudioDecodeError, DataError
from .dataset import TaskData
from .layout import split_items

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
TASK = "audio-classification"


@dataclass(frozen=True)
class AudioSpec:
    """How a sound file becomes the model's FP32 ``[1, n_mels, frames]`` input."""

    sample_rate: int = 16000
    duration_s: float = 1.0  # clips are zero-padded or cut (from the start) to this length
    n_fft: int = 512
    win_length: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms at 16 kHz
    n_mels: int = 64
    fmin: float = 20.0
    fmax: float = 8000.0
    log_floor: float = 1e-4  # far under speech energy (up to ~e^5): hides resampler residue
    # Refuse longer inputs before resampling: bounds the CPU one request can take.
    max_input_s: float = 60.0
    kind: str = field(default="audio")

    @property
    def samples(self) -> int:
        return round(self.sample_rate * self.duration_s)

    @property
    def frames(self) -> int:
        return 1 + self.samples // self.hop_length

    @property
    def shape(self) -> list[int]:
        return [1, self.n_mels, self.frames]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AudioSpec:
        if data.get("kind", "audio") != "audio":
            raise ValueError(f"preprocessing kind is {data.get('kind')!r}, expected 'audio'")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# --- decoding ---------------------------------------------------------------------------------

_MIB = 1024 * 1024
_BLOCK_FRAMES = 1 << 16  # read a block at a time: only the mono waveform is ever whole
_WORKING_BYTES = 16 * _MIB  # the resampler's and the features' own buffers


class MemoryBudget(Protocol):
    """Memory that the decodes in flight share (a server's). ``reserve`` waits until ``nbytes``
    fit beside the other decodes and holds them until the block exits. (The same protocol as
    the image module's: each module is vendored alone.)"""

    @property
    def limit(self) -> int: ...

    def reserve(self, nbytes: int) -> AbstractContextManager[object]: ...


def decode_bytes(frames: int, channels: int, rate: int, spec: AudioSpec) -> int:
    """The peak memory, in bytes, of decoding ``frames`` of ``channels`` at ``rate`` Hz (from
    the file's header) to mono at ``spec.sample_rate``: the mono waveform, its resampled copy
    and one block of frames."""
    resampled = 0 if rate == spec.sample_rate else math.ceil(frames * spec.sample_rate / rate)
    return _WORKING_BYTES + 4 * (frames + resampled) + 8 * _BLOCK_FRAMES * channels


def decode_audio(source: bytes | str | Path, spec: AudioSpec, name: str | None = None,
                 budget: MemoryBudget | None = None) -> np.ndarray:
    """A sound file (bytes or path) → mono FP32 waveform at ``spec.sample_rate``; refused over
    the duration limit or, given a ``budget``, when it needs more memory than that allows."""
    import soundfile as sf

    label = name or (str(source) if isinstance(source, (str, Path)) else "request audio")
    fp: Any = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with sf.SoundFile(fp) as f:
            rate, frames, channels = f.samplerate, f.frames, f.channels
            if frames > spec.max_input_s * rate:
                raise AudioDecodeError(f"{label}: {frames / rate:.1f} s of sound exceeds the "
                                       f"limit of {spec.max_input_s:g} s")
            with _reserve(frames, channels, rate, spec, budget, label):
                mono = _read_mono(f, frames)
                if mono.size == 0:
                    raise AudioDecodeError(f"{label}: the sound file holds no samples")
                if rate != spec.sample_rate:
                    import soxr

                    mono = soxr.resample(mono, rate, spec.sample_rate, quality="HQ")
                return np.asarray(mono, np.float32)
    except AudioDecodeError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as exc:
        raise AudioDecodeError(f"{label}: not a decodable sound file such as WAV ({exc})"
                               ) from exc


def _reserve(frames: int, channels: int, rate: int, spec: AudioSpec,
             budget: MemoryBudget | None, label: str) -> AbstractContextManager[object]:
    if budget is None:
        return nullcontext()
    need = decode_bytes(frames, channels, rate, spec)
    if need > budget.limit:
        raise AudioDecodeError(
            f"{label}: decoding {frames} frames of {channels} channel(s) at {rate} Hz needs "
            f"about {need / _MIB:.0f} MiB, over this server's decode memory budget of "
            f"{budget.limit / _MIB:.0f} MiB")
    return budget.reserve(need)


def _read_mono(f: Any, frames: int) -> np.ndarray:
    """At most ``frames`` (the header's count, which the budget was checked against), averaged
    over the channels a block at a time: a row's mean does not depend on the other rows."""
    mono = np.empty(frames, np.float32)
    done = 0
    while done < frames:
        block = f.read(min(_BLOCK_FRAMES, frames - done), dtype="float32", always_2d=True)
        if len(block) == 0:
            break
        mono[done:done + len(block)] = block.mean(axis=1)
        done += len(block)
    return mono[:done]


# --- features ---------------------------------------------------------------------------------

def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney: linear below 1 kHz, logarithmic above (librosa.hz_to_mel, htk=False).
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    hz = np.asarray(hz, np.float64)
    mel = hz / f_sp
    high = hz >= min_log_hz
    mel[high] = min_log_mel + np.log(hz[high] / min_log_hz) / logstep
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    mel = np.asarray(mel, np.float64)
    hz = mel * f_sp
    high = mel >= min_log_mel
    hz[high] = min_log_hz * np.exp(logstep * (mel[high] - min_log_mel))
    return hz


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float
                   ) -> np.ndarray:
    """``[n_mels, n_fft // 2 + 1]``: librosa.filters.mel(htk=False, norm="slaney")."""
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array([fmin]))[0],
                                   _hz_to_mel(np.array([fmax]))[0], n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    weights = np.zeros((n_mels, fft_hz.size))
    for i in range(n_mels):
        lower = -ramps[i] / widths[i]
        upper = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:n_mels + 2] - edges[:n_mels]))[:, None]
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=8)
def _window(n_fft: int, win_length: int) -> np.ndarray:
    # Periodic Hann (scipy.signal.get_window("hann") / librosa), centred in n_fft.
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    left = (n_fft - win_length) // 2
    window = np.zeros(n_fft)
    window[left:left + win_length] = hann
    window.setflags(write=False)
    return window


def fix_length(wave: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """Peak-normalise, then cut or zero-pad to ``spec.samples`` (recording gain differs by
    microphone and speaker; the model should not have to learn it)."""
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak > 0:
        wave = wave / peak
    out = np.zeros(spec.samples, np.float32)
    n = min(spec.samples, wave.size)
    out[:n] = wave[:n]
    return out


def log_mel(wave: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """A waveform at ``spec.sample_rate`` → FP32 ``[1, n_mels, frames]``."""
    wave = fix_length(wave, spec).astype(np.float64)
    pad = spec.n_fft // 2
    padded = np.pad(wave, pad)
    frames = np.lib.stride_tricks.sliding_window_view(padded, spec.n_fft)[::spec.hop_length]
    power = np.abs(np.fft.rfft(frames * _window(spec.n_fft, spec.win_length), axis=1)) ** 2
    fb = mel_filterbank(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax)
    # einsum, not ``@``: a 64x257 by 257x101 product is too small for BLAS threads, which
    # thrash (10x slower) on a loaded 2-core machine.
    mel: np.ndarray = np.einsum("mf,tf->mt", fb, power)
    return np.log(mel + spec.log_floor).astype(np.float32)[None]


def preprocess_audio(source: bytes | str | Path, spec: AudioSpec, name: str | None = None,
                     budget: MemoryBudget | None = None) -> np.ndarray:
    """Sound file (bytes or path) → FP32 ``[1, n_mels, frames]``."""
    return log_mel(decode_audio(source, spec, name, budget), spec)


def preprocess_audio_batch(sources: list[bytes], spec: AudioSpec, name: str = "audio",
                           budget: MemoryBudget | None = None) -> np.ndarray:
    """Sound files → FP32 ``[N, 1, n_mels, frames]``; errors name the element index. The files
    are decoded one at a time, each under ``budget``."""
    out = np.empty([len(sources), *spec.shape], np.float32)
    for i, blob in enumerate(sources):
        out[i] = preprocess_audio(blob, spec, name=f"{name}[{i}]", budget=budget)
    return out


def feature_matrix(data: TaskData, items: list[tuple[str, int]], spec: AudioSpec
                   ) -> np.ndarray:
    """Log-mels of ``items``, computed once per spec and kept in ``data.extra`` (several
    candidates and trials share them)."""
    key = f"audio-features:{sorted(spec.to_json().items())}"
    cache: dict[str, np.ndarray] = data.extra.setdefault(key, {})
    missing = [item for item, _ in items if item not in cache]
    if missing:
        from concurrent.futures import ThreadPoolExecutor

        # libsndfile, soxr and NumPy's FFT release the GIL for most of the work.
        with ThreadPoolExecutor(max_workers=2) as pool:
            for item, feats in zip(missing, pool.map(
                    lambda it: preprocess_audio(data.path(it), spec), missing), strict=True):
                cache[item] = feats
    return np.stack([cache[item] for item, _ in items]) if items else np.empty(
        [0, *spec.shape], np.float32)


# --- the data loader --------------------------------------------------------------------------

def load_audio_data(path: str | Path, *, seed: int = 0, group_by: str | None = None,
                    **_: Any) -> TaskData:
    """``root/<class>/*.wav`` → :class:`TaskData`: every file is checked to decode (bad ones are
    skipped with a warning), exact duplicate files are dropped (reported), then split (grouped
    with ``group_by``). Item ids are paths relative to ``root``."""
    import soundfile as sf

    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: sound data must be a folder laid out as root/<class>/*.wav")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    warnings: list[str] = []
    max_seconds = AudioSpec().max_input_s
    found: dict[str, list[str]] = {label: [] for label in classes}
    unusable: dict[str, Counter[str]] = {label: Counter() for label in classes}
    seen: dict[str, str] = {}
    duplicates = 0
    for label in classes:
        for file in sorted((root / label).rglob("*")):
            rel = file.relative_to(root)
            if not file.is_file() or any(part.startswith(".") for part in rel.parts):
                continue
            if file.suffix.lower() not in AUDIO_SUFFIXES:
                unusable[label][f"{file.suffix.lower() or '(no extension)'} files"] += 1
                continue
            try:
                seconds = sf.info(str(file)).duration  # the header only: no file read whole
            except (sf.LibsndfileError, RuntimeError) as exc:
                warnings.append(f"{rel}: skipped, not a decodable sound file ({exc})")
                unusable[label]["undecodable sound files"] += 1
                continue
            if seconds > max_seconds:  # decoding it for features would fail mid-training
                warnings.append(f"{rel}: skipped, {seconds:.1f} s of sound exceeds the limit of "
                                f"{max_seconds:g} s")
                unusable[label]["too long sound files"] += 1
                continue
            with file.open("rb") as stream:
                digest = hashlib.file_digest(stream, "sha256").hexdigest()
            if digest in seen:
                duplicates += 1
                warnings.append(f"{rel}: skipped, exact duplicate of {seen[digest]}")
                unusable[label]["duplicates"] += 1
                continue
            seen[digest] = rel.as_posix()
            found[label].append(rel.as_posix())
    held = {label: f"{label}/: {len(found[label])} usable sound file(s)" + (
        f" ({', '.join(f'{n} {what}' for what, n in unusable[label].most_common())} skipped)"
        if unusable[label] else "") for label in classes}
    if len(classes) < 2:
        raise DataError(f"{root}: found {len(classes)} class folder(s) "
                        f"({'; '.join(held.values()) or 'none'}); expected at least 2, laid out "
                        f"as root/<class>/*.wav ({', '.join(sorted(AUDIO_SUFFIXES))})")
    small = [label for label in classes if len(found[label]) < 2]
    if small:
        raise DataError(f"{root}: class folder(s) {', '.join(f'{c}/' for c in small)} have fewer "
                        "than 2 usable sound files; each class needs 2 or more, one for training "
                        f"and one for validation. Found: {'; '.join(held.values())}")
    counts = {label: len(files) for label, files in found.items()}
    items = [(file, index) for index, label in enumerate(classes) for file in found[label]]
    train, val, groups, note = split_items(items, seed=seed, group_by=group_by,
                                           group_key=lambda item: Path(item).name, labels=classes)
    return TaskData(task=TASK, root=root, labels=classes, train=train, val=val, split_note=note,
                    groups=groups, warnings=warnings,
                    extra={"duplicates_removed": duplicates, "class_counts": counts})
