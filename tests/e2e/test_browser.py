"""The web pages in a real headless browser (Debian's chromium via Selenium and chromedriver):
upload form errors and submit, live progress without reloads, a gallery with every cluster, the
k-choice plot and the re-cluster form.
A screenshot of the finished job page is kept in tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen

import numpy as np
import pytest
from PIL import Image

from store.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1600",
)


def grey_zip(per_class: int = 20, size: int = 16) -> bytes:
    """Three grey classes (horizontal stripes, vertical stripes, a disc): MMDC's small VGG."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    patterns = {"rows": (yy // 4) % 2, "columns": (xx // 4) % 2,
                "disc": ((xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size * 0.3) ** 2)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, pattern in patterns.items():
            for i in range(per_class):
                pixels = np.clip(pattern * 200 + rng.random((size, size)) * 50, 0, 255).astype(np.uint8)
                out = io.BytesIO()
                Image.fromarray(pixels).save(out, format="PNG")
                archive.writestr(f"{name}/{i:03d}.png", out.getvalue())
    return buffer.getvalue()


@pytest.fixture
def browser() -> Iterator[object]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver; "
                    "`make test` installs them when run as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_upload_progress_and_gallery_in_a_real_browser(
    settings: Settings, start_worker: Callable[[Settings], Popen[bytes]], server: str,
    browser, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import Select, WebDriverWait

    start_worker(settings)
    notes, archive = tmp_path / "notes.txt", tmp_path / "shapes.zip"
    notes.write_text("not an archive")
    archive.write_bytes(grey_zip())
    browser.get(f"{server}/ui")

    # A refused upload shows the problem's title and detail on the page.
    browser.find_element(By.ID, "archive").send_keys(str(notes))
    browser.find_element(By.ID, "submit").click()
    error = WebDriverWait(browser, 30).until(ready.visibility_of_element_located((By.ID, "upload-error")))
    assert "(415)" in error.text

    # A good upload opens the job page, which follows the run without reloading.
    browser.find_element(By.ID, "archive").send_keys(str(archive))
    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys("3")
    Select(browser.find_element(By.ID, "method")).select_by_value("mmdc")
    browser.find_element(By.ID, "epochs").send_keys("30")
    browser.find_element(By.ID, "name").send_keys("<b>shapes</b>")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(ready.url_contains("/ui/jobs/"))
    browser.execute_script("window.corralMarker = 1")  # gone if the page reloads
    seen = set()
    deadline = time.monotonic() + 240
    while browser.execute_script("return window.corralMarker === 1"):
        # the finished job's reload may begin after the marker check: the loop ends next round
        with contextlib.suppress(NoSuchElementException, StaleElementReferenceException):
            seen.add((browser.find_element(By.ID, "state").text, browser.find_element(By.ID, "epoch").text))
        assert time.monotonic() < deadline, f"no result; the page showed {sorted(seen)}"
        time.sleep(0.2)
    running = [epoch for state, epoch in seen if state == "running" and not epoch.startswith("0 ")]
    assert running, f"the page never showed a running epoch before the result: {sorted(seen)}"

    gallery = WebDriverWait(browser, 60).until(ready.presence_of_element_located((By.ID, "gallery")))
    assert browser.find_element(By.ID, "state").text == "succeeded"
    assert "<b>shapes</b>" in browser.find_element(By.TAG_NAME, "h1").text  # shown as text, escaped
    clusters = gallery.find_elements(By.CSS_SELECTOR, "article.cluster")
    assert len(clusters) == 3
    sizes = []
    for cluster in clusters:
        images = cluster.find_elements(By.CSS_SELECTOR, "figure.thumb img")
        assert images
        sizes.append(len(images))
        browser.execute_script("arguments[0].scrollIntoView()", cluster)
        WebDriverWait(browser, 30).until(lambda _, images=images: all(
            browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
            for img in images))
    assert sum(sizes) == 60
    assert len(browser.find_elements(By.CSS_SELECTOR, "#map circle")) == 60
    assert browser.find_element(By.ID, "confusion").is_displayed()
    ARTIFACTS.mkdir(exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 300, 6000))
    assert browser.save_screenshot(str(ARTIFACTS / "job-page.png"))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_k_chosen_plot_and_reclustering_in_a_real_browser(
    settings: Settings, start_worker: Callable[[Settings], Popen[bytes]], server: str,
    browser, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import Select, WebDriverWait

    start_worker(settings)
    archive = tmp_path / "shapes.zip"
    archive.write_bytes(grey_zip())
    browser.get(f"{server}/ui")
    browser.find_element(By.ID, "archive").send_keys(str(archive))  # k left empty: chosen
    browser.find_element(By.ID, "k_max").send_keys("6")
    Select(browser.find_element(By.ID, "method")).select_by_value("kmeans")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(ready.url_contains("/ui/jobs/"))
    source_url = browser.current_url
    plot = WebDriverWait(browser, 120).until(ready.presence_of_element_located((By.ID, "k-choice")))
    assert browser.find_element(By.ID, "state").text == "succeeded"
    points = plot.find_elements(By.CSS_SELECTOR, "circle.k-score")
    chosen = plot.find_elements(By.CSS_SELECTOR, "circle.k-score.chosen")
    assert len(points) == 5 and len(chosen) == 1  # k = 2..6, one of them chosen
    assert "k = 3:" in chosen[0].find_element(By.TAG_NAME, "title").get_attribute("textContent")

    # The re-cluster form opens the new job's page, which fills in its own gallery at the new k.
    k_input = browser.find_element(By.ID, "recluster-k")
    k_input.clear()
    k_input.send_keys("2")
    browser.find_element(By.CSS_SELECTOR, "#recluster button").click()
    WebDriverWait(browser, 30).until(lambda _: browser.current_url != source_url)
    gallery = WebDriverWait(browser, 120).until(ready.presence_of_element_located((By.ID, "gallery")))
    assert browser.find_element(By.ID, "state").text == "succeeded"
    assert len(gallery.find_elements(By.CSS_SELECTOR, "article.cluster")) == 2
    assert len(gallery.find_elements(By.CSS_SELECTOR, "figure.thumb img")) == 60

    browser.get(source_url)  # the source lists its re-clustering and is unchanged
    listed = browser.find_elements(By.CSS_SELECTOR, "#reclusterings li")
    assert len(listed) == 1 and "k = 2" in listed[0].text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gallery article.cluster")) == 3
