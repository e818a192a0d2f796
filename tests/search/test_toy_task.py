"""The task contract holds for a task that is not "one class per item": a toy regression on
generated numbers, registered at run time, goes through the same driver (search and fixed
plan), the same publisher and report, the real server and ``mint predict``."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

from live_server import full_server
from modelmint._data.dataset import TaskData
from modelmint._repository import ONNX_FILE, TensorSpec
from modelmint._search.options import TrainOptions
from modelmint._search.run import train
from modelmint._tasks.contract import Fitted, LoadOptions, Task, Trial
from modelmint._tasks.html import table
from modelmint._tasks.registry import register_task
from modelmint.cli import app

NAME = "toy-regression"
FEATURES = 4
WEIGHTS = np.array([1.5, -2.0, 0.5, 3.0], np.float32)


def make_data(path: Path, n: int = 200, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    y = x @ WEIGHTS + 0.7 + rng.normal(scale=0.05, size=n).astype(np.float32)
    np.savez(path, x=x, y=y)
    return path


def _load(path: Path, options: LoadOptions) -> TaskData:
    arrays = np.load(path)
    order = np.random.default_rng(options.seed).permutation(len(arrays["y"]))
    cut = int(0.8 * len(order))
    items = [(str(i), float(arrays["y"][i])) for i in order]
    return TaskData(NAME, path, [], items[:cut], items[cut:], "random 80/20 rows",
                    extra={"x": arrays["x"]})


def _xy(data: TaskData, items: list[tuple[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [int(i) for i, _ in items]
    return (torch.from_numpy(data.extra["x"][rows]),
            torch.tensor([[y] for _, y in items], dtype=torch.float32))


def _evaluate(data: TaskData, predictions: Any) -> dict[str, Any]:
    truth = np.asarray([y for _, y in data.val], np.float64)
    pred = np.asarray(predictions, np.float64).reshape(-1)
    residual = float(((truth - pred) ** 2).sum())
    spread = float(((truth - truth.mean()) ** 2).sum()) or 1.0
    return {"r2": 1.0 - residual / spread, "mae": float(np.abs(truth - pred).mean()),
            "samples": len(truth)}


@dataclass
class LinearFitted:
    architecture: str
    params: dict[str, Any]
    model: nn.Module
    predictions: np.ndarray
    warmup: list[np.ndarray]
    preprocessing: dict[str, Any]

    def val_predictions(self) -> np.ndarray:
        return self.predictions

    def export(self, directory: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(self.model.eval(), (torch.zeros(2, FEATURES),),
                              str(directory / ONNX_FILE), dynamo=False,
                              input_names=["input"], output_names=["prediction"],
                              dynamic_axes={"input": {0: "batch"}, "prediction": {0: "batch"}})

    def warmup_payloads(self) -> list[Any]:
        return list(self.warmup)


class LinearCandidate:
    """``kind="baseline"``: the training mean; ``kind="finetune"``: a linear layer by SGD."""

    task = NAME

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = "mean" if kind == "baseline" else "linear/sgd"

    def estimate_seconds(self, data: TaskData) -> float:
        return 0.5

    def fit(self, data: TaskData, trial: Trial | None, deadline: float,
            workdir: Path) -> Fitted:
        torch.manual_seed(int(data.extra.get("seed", 0)))
        x, y = _xy(data, data.train)
        xv, _ = _xy(data, data.val)
        model = nn.Linear(FEATURES, 1)
        epochs = 0
        if self.kind == "baseline" or trial is None:
            with torch.no_grad():
                model.weight.zero_()
                model.bias.fill_(float(y.mean()))
            params: dict[str, Any] = {}
        else:
            params = {"lr": trial.suggest_float("lr", 1e-3, 0.3, log=True),
                      "epochs": trial.suggest_int("epochs", 5, 40)}
            opt = torch.optim.SGD(model.parameters(), lr=params["lr"])
            for epochs in range(1, params["epochs"] + 1):
                opt.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                opt.step()
                with torch.no_grad():
                    score = _evaluate(data, model(xv).numpy())["r2"]
                trial.report(score, epochs)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epochs}")
        with torch.no_grad():
            predictions = model(xv).numpy()
        return LinearFitted("linear", {**params, "epochs_run": epochs}, model, predictions,
                            [xv[0].numpy(), xv[1].numpy()],
                            {"kind": "tensor", "shape": [FEATURES]})


def _signature(data: TaskData, fitted: Fitted) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return ([TensorSpec("input", "FP32", [-1, FEATURES])],
            [TensorSpec("prediction", "FP32", [-1, 1])])


TOY = Task(
    name=NAME, describe="a .npz file with arrays x [n, 4] and y [n]",
    detect=lambda path: 1 if path.suffix == ".npz" else 0, load=_load,
    candidates=lambda: [LinearCandidate("baseline"), LinearCandidate("finetune")],
    metric="r2", evaluate=_evaluate,
    report_html=lambda report: "<h2>Regression</h2>" + table(
        ["R²", "MAE", "items"], [[f"{report['evaluation']['r2']:.4f}",
                                  f"{report['evaluation']['mae']:.4f}",
                                  report["evaluation"]["samples"]]]),
    print_report=lambda evaluation, console: console.print(f"R² {evaluation['r2']:.4f}"),
    version_metrics=lambda ev: {"val_r2": ev["r2"], "val_mae": ev["mae"]},
    signature=_signature,
    fixed_plan=lambda epochs: ("linear/sgd", {"lr": 0.1, "epochs": epochs}),
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    register_task(TOY)
    yield make_data(tmp_path_factory.mktemp("toy") / "numbers.npz")


def test_the_search_trains_publishes_and_reports_the_toy_task(toy: Path,
                                                              tmp_path: Path) -> None:
    result = train(TrainOptions(data=str(toy), name="toy", repo=str(tmp_path / "models"),
                                runs_dir=str(tmp_path / "runs"), budget=90, max_trials=6),
                   Console(quiet=True))
    assert result.task == NAME and result.metric == "r2" and result.version == 1
    assert result.metrics["val_r2"] > 0.99 and result.winner is not None
    assert result.winner["candidate"] == "linear/sgd"  # beat the mean baseline
    kinds = {t["candidate"] for t in result.trials}
    assert kinds == {"mean", "linear/sgd"}
    version = tmp_path / "models" / "toy" / "1"
    names = {p.name for p in version.iterdir()}
    assert {"model.onnx", "modelmint.json", "report.json", "report.html", "warmup"} <= names
    meta = json.loads((version / "modelmint.json").read_text())
    assert meta["task"] == NAME and meta["labels"] == []
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, FEATURES]}]
    assert meta["outputs"] == [{"name": "prediction", "datatype": "FP32", "shape": [-1, 1]}]
    assert meta["provenance"]["split"]["val"][0][1] == pytest.approx(
        json.loads((Path(result.run_dir) / "split.json").read_text())["val"][0][1])
    page = (version / "report.html").read_text()
    assert "<h2>Regression</h2>" in page and "R²" in page
    assert json.loads((version / "report.json").read_text())["metric"] == "r2"
    assert len(list((version / "warmup").glob("*.json"))) == 2


def test_the_fixed_plan_is_deterministic_for_the_toy_task(toy: Path, tmp_path: Path) -> None:
    runs = []
    for n in range(2):
        runs.append(train(TrainOptions(data=str(toy), name="toy",
                                       repo=str(tmp_path / f"m{n}"),
                                       runs_dir=str(tmp_path / f"r{n}"), epochs=25, seed=3),
                          Console(quiet=True)))
    assert [t["kind"] for t in runs[0].trials] == ["fixed"]
    assert runs[0].metrics == runs[1].metrics and runs[0].epochs == 25
    models = [(tmp_path / f"m{n}" / "toy" / "1" / ONNX_FILE).read_bytes() for n in range(2)]
    assert models[0] == models[1]


def test_the_served_toy_model_answers_tritonclient_and_mint_predict(toy: Path,
                                                                   tmp_path: Path) -> None:
    repo = tmp_path / "models"
    train(TrainOptions(data=str(toy), name="toy", repo=str(repo), runs_dir=str(tmp_path / "r"),
                       epochs=30), Console(quiet=True))
    x = np.random.default_rng(1).normal(size=(3, FEATURES)).astype(np.float32)
    session = ort.InferenceSession(str(repo / "toy" / "1" / ONNX_FILE),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(["prediction"], {"input": x})[0]
    assert np.allclose(expected[:, 0], x @ WEIGHTS + 0.7, atol=0.3)
    with full_server(repo, isolation="process") as (server, _):
        assert server.grpc is not None
        http_url, grpc_url = server.url.removeprefix("http://"), server.grpc.address
        client = httpclient.InferenceServerClient(http_url)
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        got = client.infer("toy", [tensor]).as_numpy("prediction")
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        gclient = grpcclient.InferenceServerClient(grpc_url)
        gtensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        gtensor.set_data_from_numpy(x)
        np.testing.assert_allclose(gclient.infer("toy", [gtensor]).as_numpy("prediction"),
                                   expected, rtol=1e-5, atol=1e-6)
        np.save(tmp_path / "rows.npy", x)
        out = CliRunner().invoke(app, ["predict", str(tmp_path / "rows.npy"), "--model", "toy",
                                       "--url", f"http://{http_url}", "--json"])
    assert out.exit_code == 0, out.output
    line = json.loads(out.output.strip().splitlines()[-1])
    np.testing.assert_allclose(np.asarray(line["outputs"]["prediction"]), expected,
                               rtol=1e-5, atol=1e-6)
    assert not math.isnan(float(expected.sum()))
