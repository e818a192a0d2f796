"""One module builds KServe V2 requests: ``modelmint._serve.v2client``.

Walks every module of the package and of ``benchmarks/`` and fails on a V2 request built by
hand elsewhere (a JSON body as a dict literal, or an ``InferRequest`` object), and on tensor
names spelled as string literals in the modules that build requests: they come from
``modelmint._tensor_names``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelmint import _tensor_names

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "modelmint"
CLIENT = "src/modelmint/_serve/v2client.py"
TENSOR_NAMES = frozenset({_tensor_names.TENSOR_INPUT, _tensor_names.IMAGE_INPUT,
                          _tensor_names.AUDIO_INPUT, _tensor_names.TEXT_INPUT,
                          _tensor_names.LOGITS, _tensor_names.PROBABILITIES})

# Modules that match a rule for a reason other than building a request. Each entry must still
# match (see test_every_exclusion_is_still_needed), so none outlives its reason.
BODY_EXCLUSIONS = {
    # MLServer's model-settings.json: the peer server's model signature (name, datatype,
    # shape of each input and output), which has the same shape as a request's inputs.
    "benchmarks/_mlserver.py",
}
REQUEST_OBJECT_EXCLUSIONS = {
    # The server's request decoders: they turn a JSON/binary body, a gRPC message or a TF
    # Serving body into the InferRequest the data plane answers; they send nothing.
    "src/modelmint/_serve/codec.py",
    "src/modelmint/_serve/grpc.py",
    "src/modelmint/_serve/tfserving.py",
}
# Calls whose string arguments are tensor names: request objects (ours and tritonclient's)
# and reading outputs back.
NAMING_CALLS = frozenset({"InferInput", "InferRequestedOutput", "RequestedOutput",
                          "InferOutput", "bytes_request", "tensor_request", "warmup_request",
                          "output_array", "classifications", "as_numpy", "get_output",
                          "output"})


def modules() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")])


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _key(node: ast.expr | None) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def _dicts(value: ast.expr) -> Iterator[ast.Dict]:
    """The dict literals a list literal or list comprehension is made of."""
    if isinstance(value, ast.List):
        yield from (e for e in value.elts if isinstance(e, ast.Dict))
    elif isinstance(value, ast.ListComp) and isinstance(value.elt, ast.Dict):
        yield value.elt


def request_bodies(tree: ast.AST) -> list[int]:
    """Lines of dict literals shaped like a V2 request: ``"inputs"`` holding tensors with a
    ``"datatype"``, or ``"outputs"`` asking for ``"parameters"`` / ``"classification"``."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Dict):
            continue
        for key, value in zip(node.keys, node.values, strict=True):
            entries = list(_dicts(value))
            keys = [{_key(k) for k in entry.keys} for entry in entries]
            asks = _key(key) == "outputs" and any(
                "parameters" in k or _classification(entry)
                for k, entry in zip(keys, entries, strict=True))
            if asks or (_key(key) == "inputs" and any("datatype" in k for k in keys)):
                lines.append(node.lineno)
                break  # one line per body
    return lines


def _classification(entry: ast.Dict) -> bool:
    return any(isinstance(n, ast.Dict) and "classification" in {_key(k) for k in n.keys}
               for n in ast.walk(entry))


def _callee(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


def request_objects(tree: ast.AST) -> list[int]:
    """Lines that construct an ``InferRequest``."""
    return [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Call) and _callee(n) == "InferRequest"]


def builds_requests(tree: ast.AST) -> bool:
    """Imports the V2 client module or tritonclient."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
                a.name.startswith("tritonclient") or a.name.endswith("v2client")
                for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (
                (node.module or "").startswith("tritonclient")
                or (node.module or "").endswith("v2client")
                or any(a.name == "v2client" for a in node.names)):
            return True
    return False


def _is_name(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value in TENSOR_NAMES


def _reads_name_field(node: ast.expr) -> bool:
    """``x.name`` or ``x["name"]``."""
    return ((isinstance(node, ast.Attribute) and node.attr == "name")
            or (isinstance(node, ast.Subscript) and _key(node.slice) == "name"))


def literal_tensor_names(tree: ast.AST) -> list[tuple[int, str]]:
    """String literals used as tensor names: arguments of the request/output calls, the value
    of a ``"name"`` key, or compared with a ``.name`` / ``["name"]``."""
    found = []
    for node in ast.walk(tree):
        candidates: list[ast.expr] = []
        if isinstance(node, ast.Call) and _callee(node) in NAMING_CALLS:
            candidates = [*node.args, *(k.value for k in node.keywords)]
        elif isinstance(node, ast.Dict):
            candidates = [v for k, v in zip(node.keys, node.values, strict=True)
                          if _key(k) == "name"]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_reads_name_field(s) for s in sides):
                candidates = sides
        found += [(c.lineno, str(c.value)) for c in candidates
                  if _is_name(c) and isinstance(c, ast.Constant)]
    return found


def parse(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), filename=str(path))


def test_only_the_client_module_builds_request_bodies() -> None:
    offenders = [f"{relative(p)}:{line}" for p in modules()
                 if relative(p) not in BODY_EXCLUSIONS | {CLIENT}
                 for line in request_bodies(parse(p))]
    assert offenders == [], ("V2 request bodies built by hand; use modelmint._serve.v2client: "
                             f"{offenders}")


def test_only_the_client_module_and_decoders_make_request_objects() -> None:
    offenders = [f"{relative(p)}:{line}" for p in modules()
                 if relative(p) not in REQUEST_OBJECT_EXCLUSIONS | {CLIENT}
                 for line in request_objects(parse(p))]
    assert offenders == [], ("InferRequest built outside modelmint._serve.v2client (use "
                             f"bytes_request / tensor_request): {offenders}")


def test_request_building_modules_take_tensor_names_from_the_constants() -> None:
    trees = {relative(p): parse(p) for p in modules()}
    building = [name for name, tree in trees.items()
                if name == CLIENT or builds_requests(tree)]
    assert CLIENT in building and "src/modelmint/_client.py" in building
    offenders = [f"{name}:{line} {value!r}" for name in building
                 for line, value in literal_tensor_names(trees[name])]
    assert offenders == [], f"tensor names spelled out; use modelmint._tensor_names: {offenders}"


def test_every_exclusion_is_still_needed() -> None:
    for name in BODY_EXCLUSIONS:
        assert request_bodies(parse(ROOT / name)), f"{name} no longer needs its exclusion"
    for name in REQUEST_OBJECT_EXCLUSIONS:
        assert request_objects(parse(ROOT / name)), f"{name} no longer needs its exclusion"


# --- the detectors themselves ---------------------------------------------------------------

@pytest.mark.parametrize("source", [
    # a JSON body, with and without classification
    'b = {"inputs": [{"name": n, "datatype": "BYTES", "shape": [1], "data": [v]}]}',
    'b = {"inputs": x, "outputs": [{"name": o, "parameters": {"classification": 1}}]}',
    'b = {"outputs": [{"name": o, "parameters": p}]}',
    # tensors from a comprehension
    'b = {"inputs": [{"name": t, "datatype": "FP32", "shape": s} for t in ts]}',
    # a classification request as a nested literal inside another structure
    'send(body={"outputs": [{"name": o, "parameters": {"classification": k}}]})',
])
def test_request_body_detector_finds_hand_built_bodies(source: str) -> None:
    assert request_bodies(ast.parse(source)) == [1]


@pytest.mark.parametrize("source", [
    # model metadata built from objects, and a response's outputs
    'm = {"inputs": [t.to_json() for t in inputs], "outputs": [t.to_json() for t in outs]}',
    'r = {"outputs": value}',
    'r = {"outputs": [{"name": o.name, "datatype": o.datatype, "shape": o.shape}]}',
    'd = {"inputs": 3, "classification": 2}',
])
def test_request_body_detector_leaves_other_dicts_alone(source: str) -> None:
    assert request_bodies(ast.parse(source)) == []


def test_tensor_name_detector_is_precise() -> None:
    flagged = '''
a = httpclient.InferInput("input", [1], "FP32")
b = result.as_numpy("probabilities")
c = {"name": "image", "datatype": "BYTES"}
d = [o for o in outs if o["name"] == "logits"]
e = tensor_request(x, name="input")
f = out.name != "text"
'''
    lines = sorted(line for line, _ in literal_tensor_names(ast.parse(flagged)))
    assert lines == [2, 3, 4, 5, 6, 7]
    fine = '''
parser.add_argument("input")
layout = {"input": 1, "output": 2}
kind = "image"
g = InferInput(TENSOR_INPUT, [1], "FP32")
h = {"name": "images"}
if task == "image":
    pass
'''
    assert literal_tensor_names(ast.parse(fine)) == []


def test_request_module_detection() -> None:
    assert builds_requests(ast.parse("import tritonclient.http as httpclient"))
    assert builds_requests(ast.parse("from modelmint._serve.v2client import V2Client"))
    assert builds_requests(ast.parse("from ._serve import v2client"))
    assert not builds_requests(ast.parse("from ._serve.codec import decode_request"))
