"""search_vdr.py serve: the web page answers a query from both indexes side by side in a real browser (headless
Chromium driven by Selenium), marks the pages only one model found, and serves no file but the indexes' pages."""

from __future__ import annotations

import os
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT
from vdr.search.app import ONLY_HERE, build_app, captions, launch
from vdr.search.arguments import ServeArguments
from vdr.search.searching import Searcher

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
#: The README's screenshot, refreshed by the browser test when VDR_UPDATE_SCREENSHOT is set.
SCREENSHOT = REPO_ROOT / "docs" / "images" / "search.png"
QUERY = "What was the energy use of Litware Foods in Q2 2016?"  # a generated page's own question


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(search_indexes):
    """The app on a free local port, over the base and the finetuned index; its address and searcher."""
    args = ServeArguments(index=[str(search_indexes["base"]), str(search_indexes["finetuned"])], top_k=6)
    searcher = Searcher.open(args)
    app = build_app(searcher)
    url = launch(app, "127.0.0.1", free_port(), block=False)
    yield url.rstrip("/"), searcher
    app.close()


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_only_the_indexes_page_files_are_served(served, search_indexes):
    url, searcher = served
    page_file = searcher.indexes["base"].page_files()[0]
    assert status(f"{url}/gradio_api/file={page_file}") == 200
    index_folder = search_indexes["base"]
    manifest = next((index_folder / "pages.lance").rglob("*.manifest"))  # inside the index, but not a page
    for outside in (manifest, REPO_ROOT / "README.md", Path("/etc/passwd"), f"{Path(page_file).parent}/../../x"):
        assert status(f"{url}/gradio_api/file={outside}") in (403, 404), outside


def test_pages_only_one_index_found_are_marked():
    hit = {"page_file": "/p.png", "score": 0.5}
    results = {
        "a": [{**hit, "document": "x", "page": 1}, {**hit, "document": "y", "page": 2}],
        "b": [{**hit, "document": "x", "page": 1}, {**hit, "document": "y", "page": 3}],
    }
    marked = {
        name: [caption.startswith(ONLY_HERE) for _, caption in items] for name, items in captions(results).items()
    }
    assert marked == {"a": [False, True], "b": [False, True]}
    assert captions({"a": results["a"]})["a"][1][1] == "y · page 2 · 0.500"  # one index: nothing to compare


def browser():
    """Headless Chromium through the system chromedriver; the test is skipped, with the reason, without them."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"no browser: {CHROMIUM} and {CHROMEDRIVER} come from `apt-get install chromium chromium-driver`")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in requirements-dev.txt")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)


def loaded_images(driver, selector: str, count: int) -> list | None:
    """The images ``selector`` finds once there are at least ``count`` and every one has loaded its pixels."""
    from selenium.webdriver.common.by import By

    images = driver.find_elements(By.CSS_SELECTOR, selector)
    done = "return arguments[0].complete && arguments[0].naturalWidth > 0"
    return images if len(images) >= count and all(driver.execute_script(done, image) for image in images) else None


def test_a_query_in_the_browser_shows_both_indexes_pages_and_opens_one(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, searcher = served
    expected = captions(searcher.search(QUERY))
    driver = browser()
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 30)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#query textarea"))
        box.send_keys(QUERY, Keys.ENTER)
        for number, name in enumerate(searcher.indexes):
            gallery = f"#results-{number}"
            thumbnails = wait.until(lambda d: loaded_images(d, f"{gallery} img", len(expected[name])))  # noqa: B023
            assert len(thumbnails) == len(expected[name])
            text = driver.find_element(By.CSS_SELECTOR, gallery).text
            for _, caption in expected[name]:
                assert caption in text, (name, caption)
        driver.save_screenshot(str(tmp_path / "search.png"))  # the test's artifact
        driver.find_element(By.CSS_SELECTOR, "#results-1 img").click()  # the preview opens the full page
        assert wait.until(lambda d: loaded_images(d, "#results-1 .preview img", 1))
    finally:
        driver.quit()
    if os.environ.get("VDR_UPDATE_SCREENSHOT"):  # refresh the README's screenshot (a tracked file) on request only
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "search.png", SCREENSHOT)
