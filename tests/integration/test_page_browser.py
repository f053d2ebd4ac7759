"""The service's web page in a real headless Chromium, driven through Selenium.

A real server (``service.server.AppServer``: HTTP and gRPC on free ports, in a thread with
its own event loop) serves two real digits bundles: ``digits`` (with exemplars) and
``plain`` (the same model, its manifest without exemplars, as bundles exported before
exemplars existed). The browser loads ``/``, uploads a PNG through the file input, drops
one on the drop zone, opens the clusters view and switches models; screenshots go to
``artifacts/`` at the repository root.

Skipped with the reason when Chromium, chromedriver or selenium is missing
(``apt-get install chromium chromium-driver``; selenium is in the dev extra).
"""

from __future__ import annotations

import base64
import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from service import bundle
from service.server import AppServer
from service.settings import Settings
from tests.loop_thread import LoopThread
from tests.service.bundles import clone_version

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = "apt-get install chromium chromium-driver"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900",
)
WAIT_SECONDS = 30.0
N_CLUSTERS = 10  # of the digits_bundle fixture


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: {INSTALL_HINT}")
    pytest.importorskip("selenium", reason="selenium not installed: pip install -e '.[dev]' "
                                           f"(and {INSTALL_HINT})")


class ServerThread(LoopThread):
    """The real AppServer on free ports, run by its own event loop in a thread."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("page-test-server")
        self.settings = settings
        self.url = ""

    def _stop(self) -> None:
        self.server.request_stop()

    async def _serve(self) -> None:
        self.server = AppServer(self.settings)
        await self.server.start()
        if not self.server.dataplane.is_ready():
            raise RuntimeError("the server started without a ready model")
        self.url = f"http://127.0.0.1:{self.server.http_port}"
        self._started()
        await self.server.wait_and_shutdown()


def _without_exemplars(version_dir: Path) -> None:
    """Drop the manifest's exemplars: what a bundle from before exemplars looks like."""
    manifest = version_dir / bundle.MANIFEST_FILE
    raw = json.loads(manifest.read_text())
    raw.pop("exemplars", None)
    manifest.write_text(json.dumps(raw))


def _digit_png(index: int) -> bytes:
    pixels = np.round(load_digits().images[index] / 16 * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _require_browser()  # before the bundle fixture: no training for a skipped test
    digits_bundle: Path = request.getfixturevalue("digits_bundle")
    repo = tmp_path_factory.mktemp("page-repo")
    clone_version(digits_bundle, repo, "digits", 1)
    _without_exemplars(clone_version(digits_bundle, repo, "plain", 1))
    settings = Settings(model_repo=repo, host="127.0.0.1", http_port=0, grpc_port=0,
                        poll_seconds=0, drain_seconds=1, max_batch_size=4, device="cpu",
                        log_json=False)
    with ServerThread(settings) as running:
        models = httpx.get(f"{running.url}/v1/models", timeout=10).json()["models"]
        assert sorted(m["name"] for m in models) == ["digits", "plain"]
        yield running.url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Any, server: str) -> Any:
    """The page freshly loaded, its model list in place."""
    browser.get(f"{server}/")
    _wait(browser, lambda d: d.execute_script(
        "const s = document.getElementById('model-select');"
        "return !s.disabled && s.options.length > 0;"), "the model list")
    # Loading the page logs no error either (a missing /favicon.ico is one in Chromium);
    # reading the log also empties it, so each test starts with a clean console.
    assert _console_errors(browser) == []
    return browser


def _wait(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1).until(condition)
    except TimeoutException:
        error = driver.execute_script("return document.getElementById('error-text').textContent")
        raise AssertionError(f"waited {WAIT_SECONDS:.0f} s for {what}; page error: {error!r}; "
                             f"console: {driver.get_log('browser')}") from None


def _text(driver: Any, element_id: str) -> str:
    return str(driver.execute_script(
        "return document.getElementById(arguments[0]).textContent.trim()", element_id))


def _loaded_images(driver: Any, selector: str) -> list[int]:
    """naturalWidth of every image matching ``selector`` once all have finished loading."""
    def done(d: Any) -> list[int] | None:
        state = d.execute_script(
            "const imgs = [...document.querySelectorAll(arguments[0])];"
            "return imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0)"
            "  ? imgs.map(i => i.naturalWidth) : null;", selector)
        return list(state) if state else None
    return list(_wait(driver, done, f"images {selector}"))


def _console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def _screenshot(driver: Any, name: str) -> Path:
    """The whole page, not only the window, as ``artifacts/<name>``."""
    ARTIFACTS.mkdir(exist_ok=True)
    width, height = driver.execute_script(
        "const e = document.documentElement; return [e.clientWidth, e.scrollHeight];")
    # A viewport as tall as the page: the screenshot holds all of it, without a scrollbar.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": int(width), "height": min(int(height), 6000), "deviceScaleFactor": 1,
        "mobile": False})
    try:
        path = ARTIFACTS / name
        assert driver.save_screenshot(str(path))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path


def _show_clusters(driver: Any) -> None:
    driver.find_element("id", "tab-clusters").click()
    _wait(driver, lambda d: d.execute_script(
        "return !document.getElementById('view-clusters').hidden"), "the clusters view")


def test_upload_shows_cluster_reconstruction_and_exemplars(page: Any, tmp_path: Path) -> None:
    image = tmp_path / "digit-7.png"
    image.write_bytes(_digit_png(7))
    page.find_element("id", "file-input").send_keys(str(image))

    cluster = _wait(page, lambda d: _text(d, "r-cluster"), "the cluster id")
    assert cluster.isdigit() and 0 <= int(cluster) < N_CLUSTERS
    assert _loaded_images(page, "#reconstruction-img") == [8]
    assert _loaded_images(page, "#original-img") == [8]
    # 8x8 pictures shown at 192 px: scaled without smoothing.
    assert "pixelated" in page.find_element("id", "reconstruction-img").get_attribute("class")
    assert _text(page, "r-label")  # a label, or why there is none
    assert float(_text(page, "r-distance").split()[0]) >= 0
    assert _text(page, "r-outlier").split(":")[0] in ("yes", "no")
    assert _text(page, "r-psnr").endswith("dB")
    assert len(page.find_elements("css selector", "#r-topk li")) == 3
    exemplars = _loaded_images(page, "#r-exemplars img")
    assert exemplars and all(width == 8 for width in exemplars)
    alts = [i.get_attribute("alt") for i in page.find_elements("css selector", "#r-exemplars img")]
    for rank, alt in enumerate(alts, start=1):
        assert alt.startswith(f"Exemplar {rank} of cluster {cluster}")
    _screenshot(page, "page-inspect.png")

    _show_clusters(page)
    cards = _wait(page, lambda d: d.find_elements("css selector", ".cluster-card"),
                  "the cluster cards")
    assert len(cards) == N_CLUSTERS
    assert page.find_element("css selector", ".cluster-card.current").get_attribute("id") \
        == f"cluster-{cluster}"
    assert len(_loaded_images(page, ".cluster-card img")) >= N_CLUSTERS
    assert "training images" in _text(page, "clusters-summary")
    shot = _screenshot(page, "page.png")
    assert shot.stat().st_size > 10_000
    assert _console_errors(page) == []


def test_a_dropped_image_is_clustered(page: Any) -> None:
    # Selenium cannot drag a file from the desktop: build the drop event the browser would.
    page.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
        "const data = new DataTransfer();"
        "data.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));"
        "document.getElementById('drop-zone').dispatchEvent("
        "  new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));",
        base64.b64encode(_digit_png(3)).decode("ascii"))

    _wait(page, lambda d: _text(d, "r-cluster"), "the cluster id of the dropped image")
    assert _loaded_images(page, "#reconstruction-img") == [8]
    assert "dropped.png" in _text(page, "status")
    assert _console_errors(page) == []


def test_a_model_without_exemplars_says_so(page: Any, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import Select

    Select(page.find_element("id", "model-select")).select_by_value("plain")
    image = tmp_path / "digit.png"
    image.write_bytes(_digit_png(0))
    page.find_element("id", "file-input").send_keys(str(image))

    _wait(page, lambda d: "plain v1" in _text(d, "status") and _text(d, "r-cluster"),
          "the cluster id from the model plain")
    _wait(page, lambda d: "no exemplars" in _text(d, "r-exemplars"), "the no-exemplars note")
    _show_clusters(page)
    cards = _wait(page, lambda d: d.find_elements("css selector", ".cluster-card"),
                  "the cluster cards")
    assert len(cards) == N_CLUSTERS
    assert "no exemplars" in _text(page, "clusters-status")
    assert page.find_elements("css selector", ".cluster-card img") == []
    assert "plain" in _text(page, "clusters-title")
    assert _console_errors(page) == []


def test_api_errors_are_shown(page: Any, server: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but the rest is not a PNG")
    page.find_element("id", "file-input").send_keys(str(broken))

    message = _wait(page, lambda d: _text(d, "error-text"), "the error message")
    # The service's own words, as the API answers them.
    answer = httpx.post(f"{server}/v1/models/digits/versions/1:cluster", timeout=30,
                        files={"file": ("broken.png", broken.read_bytes(), "image/png")})
    assert answer.status_code == 400
    assert message.startswith(answer.json()["error"]) and "HTTP 400" in message, message
    assert page.find_element("id", "error").get_attribute("role") == "alert"
    assert page.execute_script("return document.getElementById('result').hidden")
    _screenshot(page, "page-error.png")


def test_without_chromium_the_skip_names_the_install_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", Path("/nonexistent/chromium"))

    with pytest.raises(pytest.skip.Exception, match=INSTALL_HINT):
        _require_browser()
