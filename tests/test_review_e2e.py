"""End to end in headless Chromium: log in, judge one ECG by mouse and one by keyboard.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/install-browser``) and the
``selenium`` package; skips cleanly without them. A screenshot of the review page is written to
``$ECGRISK_TEST_ARTIFACTS/review.png`` (or the test's tmp_path) and its path printed.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("jinja2")
pytest.importorskip("multipart")
webdriver = pytest.importorskip("selenium.webdriver")
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (run .ci/install-browser)",
                allow_module_level=True)

import uvicorn  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from ecgrisk.bundle import Bundle  # noqa: E402
from ecgrisk.feedback import FeedbackStore  # noqa: E402
from ecgrisk.models import create_encoder  # noqa: E402
from ecgrisk.models.classifier import ECGClassifier  # noqa: E402
from ecgrisk.preprocess import Preprocessing, Scaler  # noqa: E402
from ecgrisk.review import auth  # noqa: E402
from ecgrisk.review.app import create_app  # noqa: E402
from ecgrisk.review.queue import ReviewQueue  # noqa: E402

CLASSES = ["NORM", "MI", "STTC", "CD", "HYP"]
PASSWORD = "correct horse battery"


def _bundle(path):
    # bias +2 / +1.5 put NORM and STTC in every reading; small weights vary the rest by record
    torch.manual_seed(0)
    model = ECGClassifier(create_encoder("xresnet1d18", base_channels=8), num_classes=5).eval()
    with torch.no_grad():
        model.head[-1].weight.mul_(0.05)
        model.head[-1].bias.copy_(torch.tensor([2.0, -2.0, 1.5, -2.0, -2.0]))
    Bundle(model=model, classes=CLASSES, preprocessing=Preprocessing(fs=100.0),
           scaler=Scaler(0.0, 1.0), temperature=np.ones(5), name="tiny", version="7").save(path)
    return Bundle.load(path)


@pytest.fixture
def server(ptbxl_root, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for rec in ("00001_lr", "00002_lr", "00003_lr", "00004_lr"):
        for ext in (".hea", ".dat"):
            shutil.copy(ptbxl_root / "records100" / "00000" / (rec + ext), data)
    queue = ReviewQueue.build(_bundle(tmp_path / "model.pt"), data, plot_dir=tmp_path / "plots")
    db = tmp_path / "feedback.db"
    auth.add_user(db, "dr-a", PASSWORD)
    app = create_app(db, queue, allowed_hosts=["127.0.0.1"])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held from here on: no race with other tests
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the review server did not start")
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "db": db, "queue": queue}
    srv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1500,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _artifacts(tmp_path) -> Path:
    out = Path(os.environ.get("ECGRISK_TEST_ARTIFACTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _wait_for_ecg(driver, ecg_id: str, judged: int, total: int) -> None:
    WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.ID, "ecg-title").text == ecg_id
        and d.find_element(By.ID, "progress-text").text == f"{judged} of {total} judged"
        and d.execute_script("const i = document.getElementById('ecg-plot');"
                             "return i.complete && i.naturalWidth > 0;"))


def test_review_in_chromium(server, browser, tmp_path):
    url, items = server["url"], server["queue"].items
    browser.get(url + "/")
    assert browser.current_url == url + "/login"
    browser.find_element(By.ID, "username").send_keys("dr-a")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form.login-card button[type=submit]").click()
    _wait_for_ecg(browser, items[0].ecg_id, 0, 4)

    # first ECG by mouse: STTC is wrong, CD was missed
    rows = browser.find_elements(By.CSS_SELECTOR, "#statements .statement")
    assert [r.get_attribute("data-name") for r in rows] == ["NORM", "STTC"]
    rows[1].find_element(By.CSS_SELECTOR, "button.mark.wrong").click()
    Select(browser.find_element(By.ID, "missed-select")).select_by_value("CD")
    browser.find_element(By.ID, "missed-add").click()
    assert browser.find_element(By.ID, "missed").text.startswith("CD")
    shot = _artifacts(tmp_path) / "review.png"
    browser.save_screenshot(str(shot))
    print(f"\nreview page screenshot: {shot}")
    browser.find_element(By.ID, "submit").click()
    _wait_for_ecg(browser, items[1].ecg_id, 1, 4)

    # second ECG by keyboard: 1 flips NORM to wrong, Enter submits
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("1")
    body.send_keys("\ue007")  # Enter
    _wait_for_ecg(browser, items[2].ecg_id, 2, 4)

    with FeedbackStore(server["db"]) as store:
        first, second = store.verdicts()
    assert (first.ecg_id, second.ecg_id) == (items[0].ecg_id, items[1].ecg_id)
    assert first.marks == {"NORM": "right", "STTC": "wrong"} and first.missed == ["CD"]
    assert second.marks == {"NORM": "wrong", "STTC": "right"} and second.missed == []
    for v in (first, second):
        assert (v.annotator, v.model_version) == ("dr-a", "7")
    assert shot.stat().st_size > 10_000
