"""``mint app --repo s3://...``: the app's training jobs publish to the bucket, and its version
list, reports, deployment, predictions and project deletion read from it, on moto's S3 server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from live_server import running_app, sms_table, wait_for
from modelmint._app import AppSettings
from modelmint._repository.manifest import MANIFEST_FILE

ROWS = {"spam": 40, "ham": 80}
BUDGET = 300  # a ceiling for a busy machine; max_trials 1 ends the search after one baseline


def keys(bucket: Any, prefix: str) -> list[str]:
    listed = bucket.client().list_objects_v2(Bucket=bucket.name, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_the_app_trains_into_deploys_from_and_forgets_a_bucket(
        bucket: Any, tmp_path: Path, hymenoptera: Path) -> None:
    settings = AppSettings(data_dir=tmp_path / "mint", repo=bucket.uri)  # its own `mint serve`
    with running_app(settings) as url, httpx.Client(base_url=url, timeout=60) as api:
        project = api.post("/api/projects", json={"name": "Spam", "task": "text"}).json()
        slug = project["slug"]
        up = api.post(f"/api/projects/{project['id']}/uploads", params={"filename": "sms.tsv"},
                      content=sms_table(hymenoptera.parent, ROWS))
        assert up.status_code == 201, up.text
        job = api.post(f"/api/projects/{project['id']}/jobs",
                       json={"budget": BUDGET, "max_trials": 1}).json()
        done = wait_for("training", lambda: (lambda j: j if j["status"] != "running" else None)(
            api.get(f"/api/jobs/{job['id']}").json()), BUDGET + 60)
        assert done["status"] == "succeeded" and done["version"] == 1, done

        # Published to the bucket, manifest last; nothing in the app's default folder.
        published = keys(bucket, f"repo/{slug}/1/")
        assert f"repo/{slug}/1/{MANIFEST_FILE}" in published and len(published) > 2, published
        assert not (settings.models_dir / slug).exists()

        versions = api.get(f"/api/projects/{project['id']}/versions").json()
        assert [v["version"] for v in versions] == [1]
        report = api.get(f"/api/projects/{project['id']}/versions/1/report")
        assert report.status_code == 200, report.text
        assert report.json()["version"] == 1 and "evaluation" in report.json()["report"]

        assert api.post(f"/api/projects/{project['id']}/deploy", json={"version": 1}
                        ).status_code == 202
        wait_for("the deployment", lambda: api.get(
            f"/api/projects/{project['id']}/deployment").json()["deployed_version"] == 1, 120)
        answer = api.post(f"/api/projects/{project['id']}/predict",
                          content=b"WINNER!! Claim your free prize now, call 0800 123 456")
        assert answer.status_code == 200, answer.text
        assert {t["label"] for t in answer.json()["top"]} == {"ham", "spam"}

        # Deleting the project forgets the app's copies; the bucket keeps the version (servers
        # elsewhere may serve it), and its name is never given to a new project.
        cached = settings.repository.root / slug
        assert cached.exists()
        assert api.delete(f"/api/projects/{project['id']}").status_code == 204
        assert not cached.exists()
        assert f"repo/{slug}/1/{MANIFEST_FILE}" in keys(bucket, f"repo/{slug}/")
        again = api.post("/api/projects", json={"name": "Spam", "task": "text"}).json()
        assert again["slug"] != slug
