"""config.json: the forms it accepts, and errors that name the file, the field and what was
expected (never a pydantic traceback)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelmint._repository import CONFIG_FILE, BatchingConfig, ModelConfig
from modelmint.errors import RepositoryError


def load(tmp_path: Path, config: Any) -> ModelConfig:
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    return ModelConfig.load(tmp_path)


def test_no_config_json_serves_the_latest_version_one_by_one(tmp_path: Path) -> None:
    config = ModelConfig.load(tmp_path)
    assert config.version_policy.select([3, 1, 2]) == [3]
    assert config.dynamic_batching is None
    assert config.instances == 1


@pytest.mark.parametrize(("policy", "selected", "described"), [
    ({"latest": 2}, [2, 3], "latest 2"),
    ({"latest": {"num_versions": 2}}, [2, 3], "latest 2"),
    ({"all": {}}, [1, 2, 3], "all"),
    ({"specific": [3, 1]}, [1, 3], "specific [3, 1]"),
    ({"specific": {"versions": [2]}}, [2], "specific [2]"),
])
def test_version_policies(tmp_path: Path, policy: dict[str, Any], selected: list[int],
                          described: str) -> None:
    config = load(tmp_path, {"version_policy": policy, "instances": 2})
    assert config.version_policy.select([3, 1, 2]) == selected
    assert config.version_policy.describe() == described
    assert config.instances == 2


def test_dynamic_batching_fills_defaults_and_sorts_preferred_sizes(tmp_path: Path) -> None:
    config = load(tmp_path, {"dynamic_batching": {"max_batch_size": 16,
                                                  "preferred_batch_sizes": [8, 4]}})
    assert config.dynamic_batching == BatchingConfig(
        max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_size=64)


@pytest.mark.parametrize(("config", "field", "expected"), [
    ({"instances": "2"}, "'instances' is '2'", "expected an integer"),
    ({"instances": True}, "'instances' is True", "expected an integer"),
    ({"instances": 0}, "'instances' is 0", "expected an integer >= 1"),
    ({"dynamic_batching": {"max_batch_size": 2.5}}, "'dynamic_batching.max_batch_size' is 2.5",
     "expected an integer"),
    ({"dynamic_batching": {"preferred_batch_sizes": [4, "8"]}},
     "'dynamic_batching.preferred_batch_sizes[1]' is '8'", "expected an integer"),
    ({"dynamic_batching": [8]}, "'dynamic_batching' is [8]", "expected an object"),
])
def test_a_wrong_type_names_the_field_and_what_was_expected(
        tmp_path: Path, config: dict[str, Any], field: str, expected: str) -> None:
    with pytest.raises(RepositoryError) as info:
        load(tmp_path, config)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / CONFIG_FILE}: field {field}; ")
    assert message.endswith(expected)
    assert "pydantic" not in message and "\n" not in message


@pytest.mark.parametrize(("config", "unknown", "known"), [
    ({"instance": 2}, "'instance'", "version_policy, dynamic_batching, instances"),
    ({"dynamic_batching": {"max_batch": 4}}, "'dynamic_batching.max_batch'",
     "max_batch_size, max_queue_delay_us"),
])
def test_an_unknown_field_is_named_with_the_known_ones(
        tmp_path: Path, config: dict[str, Any], unknown: str, known: str) -> None:
    with pytest.raises(RepositoryError, match=r"config\.json: unknown field") as info:
        load(tmp_path, config)
    assert unknown in str(info.value) and known in str(info.value)


@pytest.mark.parametrize(("policy", "field", "expected"), [
    ({"newest": 1}, "unknown field 'version_policy.newest'", "expected one of latest, all"),
    ({"latest": 1, "all": {}}, "field 'version_policy' is", 'expected one of {"latest": N}'),
    ({}, "field 'version_policy' is {}", 'expected one of {"latest": N}'),
    ("latest", "field 'version_policy' is 'latest'", 'expected one of {"latest": N}'),
    ({"latest": 0}, "field 'version_policy.latest' is 0", "expected an integer >= 1"),
    ({"specific": []}, "field 'version_policy.specific' is []", "expected a non-empty list"),
    ({"specific": [1, -2]}, "field 'version_policy.specific[1]' is -2",
     "expected an integer >= 1"),
])
def test_a_bad_version_policy_names_the_field(tmp_path: Path, policy: Any, field: str,
                                              expected: str) -> None:
    with pytest.raises(RepositoryError) as info:
        load(tmp_path, {"version_policy": policy})
    message = str(info.value)
    assert message.startswith(f"{tmp_path / CONFIG_FILE}: ")
    assert field in message and expected in message


def test_preferred_sizes_above_the_max_batch_size_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"field 'dynamic_batching' .*expected every "
                                              r"preferred_batch_sizes entry <= max_batch_size 4"):
        load(tmp_path, {"dynamic_batching": {"max_batch_size": 4,
                                             "preferred_batch_sizes": [2, 8]}})


def test_not_json_and_not_an_object_name_the_file(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("{version_policy: 1")
    with pytest.raises(RepositoryError, match=r"config\.json: not valid JSON"):
        ModelConfig.load(tmp_path)
    with pytest.raises(RepositoryError, match=r"config\.json: expected a JSON object"):
        load(tmp_path, [1])
