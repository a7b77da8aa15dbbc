"""The live page at `/` in a real headless browser (Debian's chromium through chromedriver and
Selenium): a photo picked in the page is classified and its top-1 rendered; with `--camera`
pointed at a loopback MJPEG camera, the rendered top-1 follows the camera's picture. The API key
protects the page, its stream and its events."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import FLOWERS, ROOT, SAMPLES
from tests.serving import Server, free_port

KEY = "page-key"
DAISY = SAMPLES / "daisy.jpg"


def _other_flower(deploy: Path) -> tuple[Path, str]:
    """A flowers5 photo the model puts first in a class other than daisy (outside its training
    subset: the subset is the first 40 of each class)."""
    from edge_runtime import Classifier

    clf = Classifier(deploy)
    for cls in ("sunflower", "rose", "tulip", "dandelion"):
        for photo in sorted((FLOWERS / cls).iterdir())[40:80]:
            if clf.classify(photo, 1)[0][0] == cls:
                return photo, cls
    raise AssertionError("the flowers model puts no photo outside daisy first")


@pytest.fixture()
def camera(tmp_path):
    """A loopback MJPEG camera showing the file named in ``control`` (rewrite it to change the picture)."""
    control = tmp_path / "control"
    control.write_text(str(DAISY))
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "tests.mjpeg_server", str(port), "10", "--follow", str(control)],
                         cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    yield f"http://127.0.0.1:{port}/", control
    p.kill()
    p.wait()


@pytest.fixture()
def page_server(flowers_deployed, camera, tmp_path):
    deploy = tmp_path / "deploy"
    shutil.copytree(flowers_deployed, deploy)
    srv = Server(deploy, "--threads", "1", "--api-key", KEY, "--name", "flowers", "--camera", camera[0])
    yield srv
    srv.stop()


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _text_of(driver, element_id: str, want: str, seconds: float = 30.0) -> str:
    """The element's text once it equals ``want`` (or whatever it says when time runs out)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    deadline, text = time.time() + seconds, None
    while time.time() < deadline:
        try:
            text = driver.find_element(By.ID, element_id).text
        except (NoSuchElementException, StaleElementReferenceException):
            text = None
        if text == want:
            break
        time.sleep(0.2)
    return text


def test_the_page_classifies_an_uploaded_photo_and_follows_the_camera(page_server, camera, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(f"{page_server.url}/?key={KEY}")            # the key once; the page keeps it as a cookie
    assert browser.current_url.rstrip("/") == page_server.url    # and it leaves the address bar
    browser.find_element(By.ID, "file").send_keys(str(DAISY))
    assert _text_of(browser, "top1", "daisy") == "daisy"
    assert "flowers" in browser.find_element(By.ID, "latency").text
    assert _text_of(browser, "live-top1", "daisy") == "daisy"   # the camera shows the daisy
    other, cls = _other_flower(page_server.deploy)
    camera[1].write_text(str(other))
    assert _text_of(browser, "live-top1", cls) == cls           # ... and then another flower
    browser.save_screenshot(str(tmp_path / "live-page.png"))
    assert (tmp_path / "live-page.png").stat().st_size > 10_000


def test_without_the_key_the_page_its_stream_and_its_events_are_refused(page_server):
    with httpx.Client(base_url=page_server.url, timeout=10) as c:
        page = c.get("/")
        assert page.status_code == 401 and "API key" in page.text         # a form asking for it
        assert c.get("/?key=wrong").status_code == 401
        assert c.get("/live/stream.mjpg").status_code == 401
        assert c.get("/live/events").status_code == 401
        assert c.get("/live/info", headers={"Authorization": f"Bearer {KEY}"}).json()["model"] == "flowers"
