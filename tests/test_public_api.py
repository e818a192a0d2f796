"""The public Python API is small and pinned: what ``modelmint`` exports, and that importing it
stays light."""

from __future__ import annotations

import inspect
import subprocess
import sys

import modelmint

PUBLIC = ["AudioDecodeError", "Conflict", "DataError", "DeadlineExceeded", "ImageDecodeError",
          "InvalidInput", "MintError", "ModelNotReady", "ModelRepository", "NotFound",
          "PayloadTooLarge", "RepositoryError", "ServerBusy", "TrainingInterrupted",
          "Unauthorized", "optimize", "predict", "serve", "train"]


def test_all_is_pinned() -> None:
    assert sorted(modelmint.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(modelmint, name) is not None


def test_the_functions_stay_functions_after_the_implementation_is_imported() -> None:
    # A public function must not be shadowed by a subpackage of the same name once that
    # subpackage is imported (why the implementation packages are private).
    import modelmint._optimize.pipeline
    import modelmint._search.run
    import modelmint._serve.server

    for name in ("train", "predict", "serve", "optimize"):
        assert inspect.isfunction(getattr(modelmint, name)), name


def test_the_error_tree_has_one_root() -> None:
    for name in PUBLIC:
        value = getattr(modelmint, name)
        if inspect.isclass(value) and name != "ModelRepository":
            assert issubclass(value, modelmint.MintError), name


def test_importing_modelmint_loads_no_heavy_library() -> None:
    code = ("import sys, modelmint; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'optuna', 'onnxruntime', 'sklearn', 'torchvision'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
