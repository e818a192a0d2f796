"""The offline SDK: a zip with a deployed version's ONNX model, labels, preprocessing and a
predictor that needs only ``onnxruntime``, ``numpy`` and the modality's own libraries (``pillow``
for images; ``soundfile`` and ``soxr`` for sound; nothing more for text).

The modality's module (``data/preprocess.py``, ``data/audio.py`` or ``data/text.py``) is vendored
as it is, minus its training-data loader, with its one ``..errors`` import pointed at a small
``errors.py``: the SDK's preprocessing *is* the server's. A detector also ships
``data/detection.py`` (letterboxing and the box selection after the graph) beside
``preprocess.py``, which it imports.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .._repository import ONNX_FILE, ModelMetadata
from ..errors import InvalidInput

_FILES = resources.files("modelmint._app") / "sdk_files"
_DATA = Path(__file__).parents[1] / "_data"
ERRORS_PY = '''"""The errors the vendored preprocessing raises (modelmint.errors, no HTTP codes)."""


class InvalidInput(ValueError):
    """An input that is malformed: wrong encoding, too long, not decodable."""


class ImageDecodeError(InvalidInput):
    """Bytes that are not a decodable image (or exceed the pixel limit)."""


class AudioDecodeError(InvalidInput):
    """Bytes that are not a decodable sound file (or exceed the duration limit)."""


class DataError(InvalidInput):
    """Not raised by the SDK: named by the vendored module's import line."""
'''
BASE_REQUIREMENTS = "onnxruntime>=1.17\nnumpy>=1.26\n"
_LOADER_IMPORTS = ("from .dataset import TaskData\n", "from .layout import split_items\n")


@dataclass(frozen=True)
class Vendored:
    """How one modality's preprocessing module becomes ``modelmint_sdk/<module>.py``."""

    source: Path
    module: str
    requirements: str
    cut_before: str | None = None  # the training-data loader starts here: not shipped
    dropped_imports: tuple[str, ...] = ()  # imports that only the loader uses
    # Its one relative import, and what it becomes in the SDK.
    relative_import: tuple[str, str] = ("from ..errors import ", "from .errors import ")
    companions: tuple[Vendored, ...] = ()  # the modules it imports, shipped beside it


_IMAGE = Vendored(_DATA / "preprocess.py", "preprocess", "pillow>=10.3\n")
VENDORED = {
    "image": _IMAGE,
    "audio": Vendored(_DATA / "audio.py", "audio", "soundfile>=0.12\nsoxr>=0.3\n",
                      cut_before="def feature_matrix(", dropped_imports=_LOADER_IMPORTS),
    "text": Vendored(_DATA / "text.py", "text", "",
                     cut_before="def _read_rows(", dropped_imports=_LOADER_IMPORTS),
    "letterbox": Vendored(_DATA / "detection.py", "detection", "pillow>=10.3\n",
                          relative_import=("from .preprocess import ", "from .preprocess import "),
                          companions=(_IMAGE,)),
}


def vendored_source(kind: str) -> str:
    """The modality's preprocessing module made standalone. Every rewrite is checked, so that a
    change to the module this does not cover fails the build instead of shipping a broken SDK."""
    return _standalone(VENDORED[kind])


def _standalone(v: Vendored) -> str:
    source = v.source.read_text()
    if v.cut_before is not None:
        if source.count(v.cut_before) != 1:
            raise RuntimeError(f"{v.source}: expected one {v.cut_before!r} to cut the loader at")
        source = source[:source.index(v.cut_before)].rstrip() + "\n"
    for line in v.dropped_imports:
        if source.count(line) != 1:
            raise RuntimeError(f"{v.source}: expected the import {line.strip()!r} once")
        source = source.replace(line, "")
        if line.split()[-1] in source:
            raise RuntimeError(f"{v.source}: {line.split()[-1]} is used outside the loader; "
                               "the SDK cannot vendor it")
    relative, rewritten = v.relative_import
    if source.count(relative) != 1 or source.count("from .") != 1:
        raise RuntimeError(f"{v.source}: expected exactly one relative import "
                           f"({relative}...) to rewrite for the SDK")
    return source.replace(relative, rewritten)


def build_sdk(version_dir: Path) -> tuple[str, bytes]:
    """(file name, zip bytes) for one published version directory."""
    meta = ModelMetadata.load(version_dir)
    spec = meta.preprocessing.to_json()
    kind = spec.get("kind", "image")
    if kind not in VENDORED:
        raise InvalidInput(f"model {meta.name!r}: the offline SDK supports "
                           f"{', '.join(VENDORED)} models; this one takes {kind}")
    vendored = VENDORED[kind]
    folder = f"{meta.name}-v{meta.version}-sdk"
    readme = (_FILES / "README.md.txt").read_text().format(name=meta.name, version=meta.version)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(version_dir / ONNX_FILE, f"{folder}/model.onnx")
        zf.writestr(f"{folder}/labels.json", json.dumps(meta.labels))
        zf.writestr(f"{folder}/preprocessing.json", json.dumps(spec, indent=2))
        zf.writestr(f"{folder}/requirements.txt", BASE_REQUIREMENTS + vendored.requirements)
        zf.writestr(f"{folder}/README.md", readme)
        zf.writestr(f"{folder}/predict.py", (_FILES / "predict.py.txt").read_text())
        zf.writestr(f"{folder}/modelmint_sdk/__init__.py",
                    "from .predictor import Predictor\n\n__all__ = [\"Predictor\"]\n")
        zf.writestr(f"{folder}/modelmint_sdk/errors.py", ERRORS_PY)
        for module in (vendored, *vendored.companions):
            zf.writestr(f"{folder}/modelmint_sdk/{module.module}.py", _standalone(module))
        zf.writestr(f"{folder}/modelmint_sdk/predictor.py",
                    (_FILES / "predictor.py.txt").read_text())
    return f"{folder}.zip", buffer.getvalue()
