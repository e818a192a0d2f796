"""Object detection in real headless Chromium: create a detection project, upload images, add
classes and draw, select, move, resize, delete and undo boxes with real mouse and key events on
the canvas, each checked through the API; then (where `mint train` trains detectors) train with
a tiny budget, deploy, and see the detector's boxes drawn in "try it".
Screenshots go to tests/app/artifacts/detection-browser/ (or $MINT_ARTIFACTS)."""

from __future__ import annotations

import importlib.util
import io
import os
import zipfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

# ``browser`` is test_browser's Chromium fixture, used here by name.
from test_browser import CHROMEDRIVER, CHROMIUM, browser, wait_for  # noqa: F401
from test_detection_api import make_shapes

from modelmint._app import AppSettings

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="Debian chromium / chromium-driver not installed")
Start = Callable[[AppSettings], AbstractContextManager[str]]
UNUSED_SERVER = "http://127.0.0.1:9"
# The budget covers data loading and one baseline trial; raise it on a loaded box.
TRAIN_BUDGET = float(os.environ.get("MINT_APP_TEST_DETECTION_BUDGET", "60"))
MIN_SCORE = 0.01  # a detector trained for seconds scores low: show what it has
DETECTOR_TRAINING = importlib.util.find_spec("modelmint._tasks.detection") is not None


def shots_dir(artifacts: Path) -> Path:
    shots = artifacts / "detection-browser"
    shots.mkdir(parents=True, exist_ok=True)
    return shots


class Canvas:
    """Mouse gestures in image pixels on the labelling canvas (it may show the image scaled)."""

    def __init__(self, driver: Any) -> None:
        from selenium.webdriver.common.by import By

        self.d = driver
        self.node = driver.find_element(By.ID, "box-canvas")

    def _offset(self, x: float, y: float) -> tuple[int, int]:
        rect = self.d.execute_script(
            "const r = arguments[0].getBoundingClientRect();"
            "return [r.width, r.height, arguments[0].width, Number(arguments[0].dataset.scale)]",
            self.node)
        width, height, pixels, scale = rect
        s = scale * width / pixels
        # ActionChains offsets are from the element's centre.
        return round(x * s - width / 2), round(y * s - height / 2)

    def drag(self, start: tuple[float, float], end: tuple[float, float]) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        x0, y0 = self._offset(*start)
        x1, y1 = self._offset(*end)
        chain = ActionChains(self.d).move_to_element_with_offset(self.node, x0, y0)
        chain.click_and_hold()
        for k in (1, 2, 3):  # several moves, as a hand makes
            chain.move_to_element_with_offset(self.node, x0 + (x1 - x0) * k // 3,
                                              y0 + (y1 - y0) * k // 3)
        chain.release().perform()

    def click(self, at: tuple[float, float]) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.d).move_to_element_with_offset(self.node, *self._offset(*at)) \
            .click().perform()


def keys(driver: Any, *sequence: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*sequence).perform()


def boxes_of(api: httpx.Client, project: int, image: int) -> list[tuple[Any, ...]]:
    got = api.get(f"/api/projects/{project}/images/{image}/boxes").json()
    return [(b["label"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in got["boxes"]]


def near(box: tuple[Any, ...], want: tuple[Any, ...], tolerance: float = 2.0) -> bool:
    return box[0] == want[0] and all(abs(a - b) <= tolerance
                                     for a, b in zip(box[1:], want[1:], strict=True))


def test_label_boxes_with_mouse_and_keys(
        browser: Any,  # noqa: F811
        tmp_path: Path, artifacts: Path, start_app: Start) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    d, find, shots = browser, browser.find_element, shots_dir(artifacts)
    data = make_shapes(tmp_path / "shapes", images=2, seed=5, size_range=(220, 260))
    images = sorted((data / "images").glob("*.jpg"))
    settings = AppSettings(data_dir=tmp_path / "mint", serve_url=UNUSED_SERVER)
    with start_app(settings) as url, httpx.Client(base_url=url, timeout=60) as api:
        d.get(url + "/")
        find(By.ID, "project-name-input").send_keys("Shapes")
        Select(find(By.ID, "project-task")).select_by_value("detection")
        find(By.ID, "create-project").click()
        wait_for("the data page", lambda: "/data" in d.current_url, 30)
        project = int(d.current_url.rstrip("/").split("/")[-2])
        assert api.get(f"/api/projects/{project}").json()["kind"] == "detection"
        find(By.ID, "file-input").send_keys("\n".join(str(p) for p in images))
        wait_for("the upload", lambda: api.get(f"/api/projects/{project}").json()["items"] == 2,
                 30, d, shots)
        first, second = (i["id"] for i in api.get(f"/api/projects/{project}/items")
                         .json()["items"])

        d.get(f"{url}/projects/{project}/label")
        wait_for("the canvas", lambda: find(By.ID, "box-canvas").get_attribute("data-ready"),
                 30, d, shots)
        for name in ("circle", "square"):
            find(By.ID, "new-class-name").send_keys(name, Keys.ENTER)
            wait_for(f"class {name}", lambda n=name: d.find_elements(
                By.CSS_SELECTOR, f'#class-list li[data-class="{n}"]'), 10, d, shots)
        canvas = Canvas(d)
        assert find(By.ID, "box-canvas").get_attribute("data-image") == str(first)

        # Image 1: draw a box, give it class 2 with its number key, save with "n".
        canvas.drag((20, 30), (90, 100))
        wait_for("the drawn box", lambda: find(By.ID, "box-canvas")
                 .get_attribute("data-boxes") == "1", 10, d, shots)
        keys(d, "2")
        d.save_screenshot(str(shots / "01-drawn.png"))
        keys(d, "n")
        wait_for("image 1 saved", lambda: boxes_of(api, project, first), 15, d, shots)
        (saved,) = boxes_of(api, project, first)
        assert near(saved, ("square", 20, 30, 90, 100)), saved
        wait_for("image 2", lambda: find(By.ID, "box-canvas").get_attribute("data-image")
                 == str(second), 15, d, shots)

        # Image 2: draw two boxes, undo the second, draw it again, delete it; move the first
        # and resize it by its bottom-right corner; save with "p" (back to image 1).
        canvas.drag((10, 10), (60, 50))
        canvas.drag((100, 100), (150, 160))
        ActionChains(d).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
        wait_for("the undo", lambda: find(By.ID, "box-canvas").get_attribute("data-boxes")
                 == "1", 10, d, shots)
        canvas.drag((100, 100), (150, 160))
        keys(d, Keys.DELETE)
        wait_for("the delete", lambda: find(By.ID, "box-canvas").get_attribute("data-boxes")
                 == "1", 10, d, shots)
        canvas.click((30, 30))  # select the first box
        canvas.drag((30, 30), (50, 45))  # move it by (+20, +15)
        canvas.drag((80, 65), (100, 95))  # its bottom-right corner, by (+20, +30)
        keys(d, "1")  # and make it a circle
        d.save_screenshot(str(shots / "02-edited.png"))
        keys(d, "p")
        wait_for("image 2 saved", lambda: boxes_of(api, project, second), 15, d, shots)
        (edited,) = boxes_of(api, project, second)
        assert near(edited, ("circle", 30, 25, 100, 95)), edited
        wait_for("image 1 again", lambda: find(By.ID, "box-canvas").get_attribute("data-image")
                 == str(first), 15, d, shots)
        assert boxes_of(api, project, first) == [saved]  # coming back changes nothing
        counts = api.get(f"/api/projects/{project}").json()["counts"]
        assert counts == {"labelled": 2}
        export = api.get(f"/api/projects/{project}/export", params={"format": "coco"})
        assert export.status_code == 200 and export.content.startswith(b"PK")
        blocked = [e["message"] for e in d.get_log("browser")
                   if "Content Security Policy" in e["message"]]
        assert blocked == []


@pytest.mark.skipif(not DETECTOR_TRAINING, reason="mint train does not train detectors here")
def test_train_deploy_and_try_a_detector(
        browser: Any,  # noqa: F811
        tmp_path: Path, artifacts: Path, start_app: Start) -> None:
    from selenium.webdriver.common.by import By

    d, find, shots = browser, browser.find_element, shots_dir(artifacts)
    data = make_shapes(tmp_path / "shapes", images=20, seed=7, size_range=(160, 200))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(data.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(data).as_posix())
    settings = AppSettings(data_dir=tmp_path / "mint")  # owns a real `mint serve`
    with start_app(settings) as url, httpx.Client(base_url=url, timeout=120) as api:
        project = api.post("/api/projects", json={"name": "Shapes", "kind": "detection"}
                           ).json()["id"]
        uploaded = api.post(f"/api/projects/{project}/uploads", params={"filename": "s.zip"},
                            content=buffer.getvalue())
        assert uploaded.status_code == 201, uploaded.text

        d.get(f"{url}/projects/{project}/train")
        budget = find(By.ID, "budget")
        budget.clear()
        budget.send_keys(f"{max(TRAIN_BUDGET, 10):g}")
        find(By.ID, "max-trials").send_keys("1")
        find(By.ID, "start-training").click()
        status = wait_for("training to finish", lambda: (
            lambda text: text if text.startswith(("succeeded", "failed")) else None)(
            find(By.ID, "job-status").text), 10 * TRAIN_BUDGET + 60, d, shots)
        d.save_screenshot(str(shots / "03-trained.png"))
        assert status.startswith("succeeded"), find(By.ID, "job-error").text
        assert "mAP" in status
        job = api.get(f"/api/projects/{project}/jobs").json()[0]
        assert job["version"] == 1 and 0 <= job["map50"] <= 1

        d.get(f"{url}/projects/{project}/evaluate")
        wait_for("the per-class APs", lambda: len(d.find_elements(
            By.CSS_SELECTOR, "#ap-per-class tbody tr")) == 3, 30, d, shots)
        assert "mAP" in find(By.ID, "version-summary").text
        report = find(By.ID, "full-report")
        assert report.is_displayed()
        page = api.get(report.get_attribute("href"))
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]

        d.get(f"{url}/projects/{project}/deploy")
        wait_for("the version list",
                 lambda: find(By.ID, "deploy-version").get_attribute("value") == "1", 30)
        find(By.ID, "deploy-button").click()
        wait_for("the deployment", lambda: "ready" in find(By.ID, "deploy-status").text, 120,
                 d, shots)
        picture = sorted((data / "images").glob("*.jpg"))[0]
        find(By.ID, "try-min-score").send_keys(f"{MIN_SCORE}")
        find(By.ID, "try-file").send_keys(str(picture))
        drawn = wait_for("the drawn boxes", lambda: find(By.ID, "try-canvas")
                         .get_attribute("data-boxes"), 60, d, shots)
        served = api.post(f"/api/projects/{project}/predict", content=picture.read_bytes(),
                          params={"score_threshold": MIN_SCORE})
        assert served.status_code == 200, served.text
        boxes = served.json()["boxes"]
        assert int(drawn) == len(boxes) > 0
        rows = d.find_elements(By.CSS_SELECTOR, "#try-result tbody tr")
        assert [r.text.split()[0] for r in rows] == [b["label"] for b in boxes]
        d.save_screenshot(str(shots / "04-try.png"))
        for b in boxes:  # (a detector trained for seconds may reach past the picture)
            assert b["label"] in ("circle", "square", "triangle") and b["score"] >= MIN_SCORE, b
            assert b["x1"] <= b["x2"] and b["y1"] <= b["y2"], b
        assert find(By.ID, "try-canvas").is_displayed()
