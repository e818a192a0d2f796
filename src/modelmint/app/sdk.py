"""The offline SDK: a zip with a deployed version's ONNX model, labels, preprocessing and a
predictor that needs only ``onnxruntime``, ``numpy`` and ``pillow``.

``modelmint/data/preprocess.py`` is vendored as it is, with its one relative import
(``..errors``) pointed at a two-line ``errors.py``: the SDK's preprocessing *is* the server's.
"""

from __future__ import annotations

import io
import json
import zipfile
from importlib import resources
from pathlib import Path

from ..errors import InvalidInput
from ..repository import ONNX_FILE, ModelMetadata

_FILES = resources.files("modelmint.app") / "sdk_files"
PREPROCESS_SOURCE = Path(__file__).parents[1] / "data" / "preprocess.py"
RELATIVE_IMPORT = "from ..errors import ImageDecodeError"
ERRORS_PY = '''"""The one error the vendored preprocessing raises."""


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image (or exceed the pixel limit)."""
'''
REQUIREMENTS = "onnxruntime>=1.17\nnumpy>=1.26\npillow>=10.3\n"


def vendored_preprocess() -> str:
    source = PREPROCESS_SOURCE.read_text()
    if source.count(RELATIVE_IMPORT) != 1 or source.count("from ..") != 1:
        raise RuntimeError(f"{PREPROCESS_SOURCE}: expected exactly one relative import "
                           f"({RELATIVE_IMPORT!r}) to rewrite for the SDK")
    return source.replace(RELATIVE_IMPORT, "from .errors import ImageDecodeError")


def build_sdk(version_dir: Path) -> tuple[str, bytes]:
    """(file name, zip bytes) for one published version directory."""
    meta = ModelMetadata.load(version_dir)
    spec = meta.preprocessing.to_json()
    if spec.get("kind", "image") != "image":
        raise InvalidInput(f"model {meta.name!r}: the offline SDK supports image models; this "
                           f"one takes {spec.get('kind')}")
    folder = f"{meta.name}-v{meta.version}-sdk"
    readme = (_FILES / "README.md.txt").read_text().format(name=meta.name, version=meta.version)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(version_dir / ONNX_FILE, f"{folder}/model.onnx")
        zf.writestr(f"{folder}/labels.json", json.dumps(meta.labels))
        zf.writestr(f"{folder}/preprocessing.json", json.dumps(spec, indent=2))
        zf.writestr(f"{folder}/requirements.txt", REQUIREMENTS)
        zf.writestr(f"{folder}/README.md", readme)
        zf.writestr(f"{folder}/predict.py", (_FILES / "predict.py.txt").read_text())
        zf.writestr(f"{folder}/modelmint_sdk/__init__.py",
                    "from .predictor import Predictor\n\n__all__ = [\"Predictor\"]\n")
        zf.writestr(f"{folder}/modelmint_sdk/errors.py", ERRORS_PY)
        zf.writestr(f"{folder}/modelmint_sdk/preprocess.py", vendored_preprocess())
        zf.writestr(f"{folder}/modelmint_sdk/predictor.py",
                    (_FILES / "predictor.py.txt").read_text())
    return f"{folder}.zip", buffer.getvalue()
