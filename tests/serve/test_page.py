"""The web page in a real headless browser (Debian's chromium + chromedriver, driven by Selenium) against the
real server: upload examples/astronaut.jpg, wait for the result, check what a person sees, move the strength
slider. A screenshot is kept in tests/serve/artifacts/ (ignored by git); its path is printed."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import EXAMPLE
from tests.serve.conftest import needs_serve, wait_for

pytestmark = needs_serve
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        pytest.skip(f"selenium is not installed ({e}): pip install -e '.[test]'")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("no browser here: apt-get install -y chromium chromium-driver (as .ci/run does)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1700",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def _image_of(driver, element_id: str) -> np.ndarray:
    """The pixels the page shows in <img id=...>: drawn onto a canvas by the page and read back as PNG."""
    url = driver.execute_script(
        """
        const img = document.getElementById(arguments[0]);
        if (!img.complete || !img.naturalWidth) return "ERR not loaded";
        const c = document.createElement("canvas");
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        c.getContext("2d").drawImage(img, 0, 0);
        return c.toDataURL("image/png");
        """,
        element_id,
    )
    assert url.startswith("data:image/png;base64,"), url[:100]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"), dtype=np.int16)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """The same picture up to the browser's own JPEG decoder (Chromium's and Pillow's may differ by a level)."""
    return a.shape == b.shape and float(np.abs(a - b).mean()) < 1.0


def test_page_upload_result_scores_and_slider(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.get(f"{server.base}/#token={server.token}")
    wait_for(lambda: d.find_element(By.ID, "bundle").text.startswith("Bundle "), 20)
    assert "token" not in d.current_url, "the token is taken out of the address"
    assert d.find_element(By.ID, "token-row").is_displayed() is False
    d.find_element(By.ID, "generations").send_keys("6")
    d.find_element(By.ID, "file").send_keys(str(EXAMPLE))
    go = d.find_element(By.ID, "go")
    wait_for(lambda: go.is_enabled(), 10)
    gens_before = server.value("beautyrt_search_generations_total")
    go.click()
    wait_for(lambda: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"), 60)
    body = d.find_element(By.TAG_NAME, "body")
    assert body.get_attribute("data-state") == "done", d.find_element(By.ID, "error").text
    job = server.get(f"/v1/jobs/{body.get_attribute('data-job-id')}").json()
    rep = job["report"]
    assert rep["generations_run"] == 6
    assert server.value("beautyrt_search_generations_total") - gens_before == 6

    # what a person sees: before | after, the report's numbers, the AI-edited note, progress at its end
    for el_id, key in (("score-before", "score_before"), ("score-after", "score_after"), ("identity", "identity")):
        el = d.find_element(By.ID, el_id)
        assert el.text == f"{rep[key]:.3f}", (el_id, el.text, rep[key])
        assert float(el.get_attribute("data-value")) == rep[key]
    assert d.find_element(By.ID, "ai-note").is_displayed() and "AI-edited" in d.find_element(By.ID, "ai-note").text
    assert "AI-edited" in d.find_element(By.CSS_SELECTOR, ".ai-note").text
    assert "6 generations" in d.find_element(By.ID, "progress-text").text
    before, after = _image_of(d, "before"), _image_of(d, "after")
    decoded = np.asarray(Image.open(EXAMPLE).convert("RGB"), dtype=np.int16)
    assert _close(before, decoded), "the before image is the uploaded photo"
    assert after.shape == before.shape and np.abs(after - before).max() > 8, "the after image differs"
    res = server.get(f"/v1/jobs/{job['id']}/result", headers={"Accept": "image/jpeg"})
    assert _close(after, np.asarray(Image.open(io.BytesIO(res.body)).convert("RGB"), dtype=np.int16))
    dl = d.find_element(By.ID, "download")
    assert dl.get_attribute("download") == "astronaut.beautified.jpg" and dl.get_attribute("href").startswith("blob:")
    drawn = d.execute_script(
        "const c = document.getElementById('plot'); const a = c.getContext('2d').getImageData(0, 0, c.width, c.height)"
        ".data; let n = 0; for (let i = 3; i < a.length; i += 4) if (a[i]) n++; return n;"
    )
    assert drawn > 500, "the per-generation plot is drawn"
    ARTIFACTS.mkdir(exist_ok=True)
    d.save_screenshot(str(ARTIFACTS / "page_result.png"))

    # the slider: a new image at another strength, from /v1/compose, without a new search
    m0 = server.metrics()
    slider = d.find_element(By.ID, "strength")
    slider.click()  # focus (the click lands at the middle: 1.00, the value it already had)
    for _ in range(10):
        slider.send_keys(Keys.ARROW_LEFT)
    wait_for(lambda: d.find_element(By.ID, "after").get_attribute("data-strength") == "0.5", 20)
    assert d.find_element(By.ID, "shown-strength").text == "0.50"
    lighter = _image_of(d, "after")
    assert np.abs(lighter - after).max() > 0, "moving the slider changes the image"
    changed = np.abs(after - before).sum(-1) > 0
    assert np.abs(lighter - before)[changed].mean() < np.abs(after - before)[changed].mean(), "a lighter edit"
    m1 = server.metrics()
    gens = ("beautyrt_search_generations_total", frozenset())
    search = ("beautyrt_stage_duration_seconds_count", frozenset({"stage": "search"}.items()))
    jobs_posted = (
        "beautyrt_http_requests_total",
        frozenset({"route": "/v1/jobs", "method": "POST", "status": "202"}.items()),
    )  # noqa: E501
    assert m1[gens] == m0[gens] and m1[search] == m0[search], "the slider must not search again"
    assert m1[jobs_posted] == m0[jobs_posted]
    assert m1[("beautyrt_composes_total", frozenset())] > m0.get(("beautyrt_composes_total", frozenset()), 0)
    d.save_screenshot(str(ARTIFACTS / "page_strength_0.5.png"))
    print(f"\nscreenshots: {ARTIFACTS / 'page_result.png'} {ARTIFACTS / 'page_strength_0.5.png'}")


def test_page_shows_errors_as_their_one_line(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser
    d.get(f"{server.base}/#token={server.token}")
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(noise)
    d.find_element(By.ID, "generations").send_keys("2")
    d.find_element(By.ID, "file").send_keys(str(noise))
    d.find_element(By.ID, "go").click()
    wait_for(lambda: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"), 60)
    err = d.find_element(By.ID, "error")
    assert err.is_displayed() and err.text.startswith("no face found"), err.text
    assert "\n" not in err.text and "Traceback" not in err.text
    # without the token, the page asks for one
    d.execute_script("sessionStorage.clear()")
    d.get(f"{server.base}/")
    wait_for(lambda: d.find_element(By.ID, "token-row").is_displayed(), 20)
    assert "bearer token" in d.find_element(By.ID, "bundle").text
