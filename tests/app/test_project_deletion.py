"""Deleting a project deletes all it owned — items, jobs and their runs, published versions, the
deployment on the app's model server — and a new project of the same name inherits nothing:
ids and model names (slugs) are never given out twice."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx

from live_server import sms_table, wait_for
from modelmint._app import AppSettings

Start = Callable[[AppSettings], AbstractContextManager[str]]
ROWS = {"spam": 40, "ham": 80}
BUDGET = 300  # a ceiling for a busy machine; max_trials 1 ends the search after one baseline


def test_a_new_project_of_the_same_name_sees_nothing_of_a_deleted_one(
        tmp_path: Path, hymenoptera: Path, start_app: Start) -> None:
    settings = AppSettings(data_dir=tmp_path / "mint")  # with its own `mint serve`
    with start_app(settings) as url, httpx.Client(base_url=url, timeout=60) as api:
        old = api.post("/api/projects", json={"name": "Spam filter", "task": "text"}).json()
        up = api.post(f"/api/projects/{old['id']}/uploads", params={"filename": "sms.tsv"},
                      content=sms_table(hymenoptera.parent, ROWS))
        assert up.status_code == 201, up.text
        job = api.post(f"/api/projects/{old['id']}/jobs",
                       json={"budget": BUDGET, "max_trials": 1}).json()
        done = wait_for("training", lambda: (lambda j: j if j["status"] != "running" else None)(
            api.get(f"/api/jobs/{job['id']}").json()), BUDGET + 60)
        assert done["status"] == "succeeded" and done["version"] == 1, done
        assert api.post(f"/api/projects/{old['id']}/deploy", json={"version": 1}
                        ).status_code == 202
        wait_for("the deployment", lambda: api.get(
            f"/api/projects/{old['id']}/deployment").json()["deployed_version"] == 1, 120)
        server = api.get(f"/api/projects/{old['id']}/deployment").json()["server_url"]
        slug = old["slug"]
        assert httpx.get(f"{server}/v2/models/{slug}/ready").status_code == 200
        owned = [settings.projects_dir / str(old["id"]), settings.jobs_dir / str(job["id"]),
                 settings.models_dir / slug, settings.serving_dir / slug]
        assert all(path.exists() for path in owned)

        assert api.delete(f"/api/projects/{old['id']}").status_code == 204
        assert [path for path in owned if path.exists()] == []
        assert httpx.get(f"{server}/v2/models/{slug}/ready").status_code != 200  # unloaded
        index = httpx.post(f"{server}/v2/repository/index", json={}).json()
        left = [entry for entry in index if entry["name"] == slug]
        assert all(entry.get("state") != "READY" for entry in left), left
        assert api.get(f"/api/jobs/{job['id']}").status_code == 404

        new = api.post("/api/projects", json={"name": "Spam filter", "task": "text"}).json()
        assert new["id"] > old["id"] and new["slug"] != slug
        assert api.get(f"/api/projects/{new['id']}/versions").json() == []
        assert api.get(f"/api/projects/{new['id']}/jobs").json() == []
        deployment = api.get(f"/api/projects/{new['id']}/deployment").json()
        assert deployment["deployed_version"] is None and deployment["server"] is None
        refused = api.post(f"/api/projects/{new['id']}/deploy", json={"version": 1})
        assert refused.status_code == 404
        assert api.get(f"/api/projects/{new['id']}/items").json()["total"] == 0


def test_ids_and_slugs_are_never_given_out_twice(settings: AppSettings,
                                                 start_app: Start) -> None:
    with start_app(settings) as url, httpx.Client(base_url=url, timeout=60) as api:
        def create(name: str) -> dict[str, Any]:
            reply = api.post("/api/projects", json={"name": name})
            assert reply.status_code == 201, reply.text
            return dict(reply.json())

        first, last = create("Bees"), create("Wasps")
        assert api.delete(f"/api/projects/{last['id']}").status_code == 204  # the largest id
        again = create("Wasps")
        assert again["id"] > last["id"] and again["slug"] == "wasps-2"
        assert api.delete(f"/api/projects/{first['id']}").status_code == 204
        assert create("Bees")["slug"] == "bees-2"
        # A model folder nobody owns (left by hand, or by an older release) is not inherited.
        (settings.models_dir / "ants" / "1").mkdir(parents=True)
        assert create("Ants")["slug"] == "ants-2"
        assert api.delete(f"/api/projects/{first['id']}").status_code == 404
