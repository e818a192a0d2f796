"""The deployment files under ``deploy/`` are checked statically (no cluster and no container
engine run here): Kubernetes manifests against the Kubernetes schemas, KServe resources against
the ``kserve`` package's models, and every container command against ``mint serve`` itself."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from modelmint._settings import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    SERVE,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES_VERSION = "1.37.0"
HEALTH = {"/v2/health/ready", "/v2/health/live"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def serve_options() -> dict[str, bool]:
    """Every option of ``mint serve`` -> whether it takes a value."""
    options: dict[str, bool] = {}
    for s in SERVE:
        if s.argument:
            continue
        options[s.option] = s.type is not bool
        if s.type is bool:
            options["--no-" + s.option[2:]] = False
    return options


def parse_serve_args(args: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(positional arguments, option -> values), refusing anything ``mint serve`` lacks."""
    options = serve_options()
    positional: list[str] = []
    given: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            assert arg in options, f"{arg} is not an option of mint serve"
            if options[arg]:
                given.setdefault(arg, []).append(args[i + 1])
                i += 2
                continue
            given.setdefault(arg, []).append("")
        else:
            positional.append(arg)
        i += 1
    return positional, given


def port(given: dict[str, list[str]], option: str, default: int) -> int:
    return int(given[option][-1]) if option in given else default


def check_server_container(container: dict[str, Any], args: list[str]) -> None:
    positional, given = parse_serve_args(args)
    assert len(positional) == 1, f"mint serve takes one repository, got {positional}"
    assert given.get("--host") == ["0.0.0.0"], "a pod must listen off loopback"
    # Off loopback the server refuses to start without a token or an explicit opt-out.
    assert "--token-file" in given and "--insecure-no-token" not in given
    http = port(given, "--http-port", DEFAULT_HTTP_PORT)
    ports = {p["containerPort"]: p for p in container.get("ports", [])}
    assert http in ports, f"the HTTP port {http} is not a container port"
    names = {p.get("name"): p["containerPort"] for p in ports.values()}
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in HEALTH
        target = get["port"]
        assert (names.get(target) if isinstance(target, str) else target) == http, probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    for option, default in (("--grpc-port", DEFAULT_GRPC_PORT),
                            ("--metrics-port", DEFAULT_METRICS_PORT)):
        number = port(given, option, default)
        if len(ports) > 1:  # a plain Deployment exposes all three (KServe takes one)
            assert number in ports, f"{option} {number} is not a container port"
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    token = Path(given["--token-file"][-1])
    assert str(token.parent) in mounts, "the token file must come from a mounted Secret"


@pytest.mark.parametrize("path", sorted((DEPLOY / "kubernetes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_kubernetes_manifests_match_the_schemas(path: Path) -> None:
    docs = documents(path)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_deployment_runs_mint_serve_with_probes_and_a_drain() -> None:
    docs = {d["kind"]: d for d in documents(DEPLOY / "kubernetes" / "modelmint.yaml")}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    check_server_container(container, container["args"])
    assert container["resources"]["requests"], "resource requests are set"
    assert pod["terminationGracePeriodSeconds"] > container["lifecycle"]["preStop"]["sleep"][
        "seconds"]
    strategy = docs["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0, "a rollout never lowers the ready replicas"
    service_ports = {p["targetPort"] for p in docs["Service"]["spec"]["ports"]}
    assert service_ports == {p["name"] for p in container["ports"]}


def test_kserve_resources_match_the_kserve_models() -> None:
    runtime = documents(DEPLOY / "kserve" / "servingruntime.yaml")[0]
    service = documents(DEPLOY / "kserve" / "inferenceservice.yaml")[0]
    # In a process of its own: kserve registers its own copy of the V2 protos, whose names
    # clash with the server's in one interpreter.
    check = subprocess.run([sys.executable, str(Path(__file__).with_name("kserve_models.py")),
                            str(DEPLOY / "kserve" / "servingruntime.yaml"),
                            str(DEPLOY / "kserve" / "inferenceservice.yaml")],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr[-2000:]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    (container,) = runtime["spec"]["containers"]
    check_server_container(container, container["args"])
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in
                                            runtime["spec"]["supportedModelFormats"]}
    assert model["storageUri"].startswith("s3://")
    assert "v2" in runtime["spec"]["protocolVersions"]
    assert container["args"][0] == "/mnt/models", "KServe's storage initializer writes there"


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", text)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_containerfile_runs_mint_serve_on_the_default_ports() -> None:
    steps = _instructions((DEPLOY / "Containerfile").read_text())
    values = {name: arg for name, arg in steps}  # the last one of each counts
    assert json.loads(values["ENTRYPOINT"]) == ["mint", "serve"]  # exec form: a JSON list
    cmd = json.loads(values["CMD"])
    positional, given = parse_serve_args(cmd)
    assert positional and given["--host"] == ["0.0.0.0"] and "--token-file" in given
    exposed = {int(p) for p in values["EXPOSE"].split()}
    assert exposed == {DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT}
    run = " ".join(arg for name, arg in steps if name == "RUN")
    assert "requirements-serve.txt" in run and "--no-deps" in run
    assert any(name == "USER" and arg != "root" for name, arg in steps)


def _requirement_names() -> set[str]:
    lines = (DEPLOY / "requirements-serve.txt").read_text().splitlines()
    return {re.split(r"[<>=\[ ]", line.strip(), maxsplit=1)[0].lower()
            for line in lines if line.strip() and not line.startswith("#")}


def test_serve_requirements_are_project_dependencies() -> None:
    import tomllib

    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[ ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert _requirement_names() <= declared


def _closure(names: set[str]) -> set[str]:
    """The distributions ``pip install`` brings for ``names``: them and their dependencies
    (without extras), as installed here."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def test_mint_serve_needs_only_the_serve_requirements() -> None:
    """``mint serve --help`` and the server's modules import with every module of every other
    installed distribution hidden: the image's --no-deps install of the wheel is enough."""
    from importlib import metadata

    from packaging.utils import canonicalize_name

    keep = _closure(_requirement_names()) | {"modelmint"}
    hidden = sorted({module for module, dists in metadata.packages_distributions().items()
                     if not any(canonicalize_name(d) in keep for d in dists)})
    assert "torch" in hidden and "sklearn" in hidden
    script = f"""
import sys, importlib.abc
hidden = set({hidden!r})
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in hidden:
            raise ModuleNotFoundError(f"not installed in the server image: {{name}}")
        return None
sys.meta_path.insert(0, Hide())
import modelmint._serve.server, modelmint._serve.worker
sys.argv = ["mint", "serve", "--help"]
from modelmint.cli import app
app()
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--token-file" in proc.stdout
