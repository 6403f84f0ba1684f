"""End to end in headless Chromium: log in, judge one ECG by mouse and one by keyboard; too
many wrong passwords end on the 429 page.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/install-browser``) and the
``selenium`` package; skips cleanly without them. Screenshots of the review page, the agreement
page and the 429 page are written to ``$ECGRISK_TEST_ARTIFACTS/review.png``,
``review-agreement.png`` and ``review-throttled.png`` (or the test's tmp_path).
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("jinja2")
pytest.importorskip("multipart")
pytest.importorskip("limits")
webdriver = pytest.importorskip("selenium.webdriver")
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (run .ci/install-browser)",
                allow_module_level=True)

import uvicorn  # noqa: E402
from review_support import PASSWORD, RECORDS, add_accounts, make_bundle  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from ecgrisk.bundle import Bundle  # noqa: E402
from ecgrisk.feedback import FeedbackStore  # noqa: E402
from ecgrisk.review.app import create_app  # noqa: E402
from ecgrisk.review.queue import ReviewQueue  # noqa: E402
from ecgrisk.review.throttle import LoginThrottle  # noqa: E402

FAILURES_ALLOWED = 3


def _ptbxl_sample(ptbxl_root, dest):
    """Four PTB-XL records in PTB-XL's layout, with their rows of the database CSV (age, sex)."""
    for rec in RECORDS:
        (dest / "records100" / "00000").mkdir(parents=True, exist_ok=True)
        for ext in (".hea", ".dat"):
            shutil.copy(ptbxl_root / "records100" / "00000" / (rec + ext),
                        dest / "records100" / "00000")
    wanted = {f"records100/00000/{rec}" for rec in RECORDS}
    with open(ptbxl_root / "ptbxl_database.csv", newline="") as src, \
            open(dest / "ptbxl_database.csv", "w", newline="") as out:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows(r for r in reader if r["filename_lr"] in wanted)
    return dest


@pytest.fixture
def server(ptbxl_root, tmp_path):
    data = _ptbxl_sample(ptbxl_root, tmp_path / "ptb-xl")
    # bias +2 / +1.5 put NORM and STTC in every reading; small weights vary the rest by record
    bundle = Bundle.load(make_bundle(tmp_path / "model.pt", [2.0, -2.0, 1.5, -2.0, -2.0]))
    queue = ReviewQueue.build(bundle, data, plot_dir=tmp_path / "plots")
    db = tmp_path / "feedback.db"
    add_accounts(db, "dr-a", "dr-b")
    app = create_app(db, queue, allowed_hosts=["127.0.0.1"],
                     throttle=LoginThrottle(f"{FAILURES_ALLOWED} per 15 minutes"))
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
    app.state.review.close()


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


def _sign_in(driver, name: str, password: str) -> None:
    """Fill in and send the login form; return once the answer's page has loaded."""
    driver.find_element(By.ID, "username").clear()
    driver.find_element(By.ID, "username").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    # a mark on this page: gone once the browser shows the next one (the login form answers
    # with the login page again, so its URL alone cannot tell)
    driver.execute_script("document.documentElement.dataset.sent = '1';")
    driver.find_element(By.CSS_SELECTOR, "form.login-card button[type=submit]").click()
    WebDriverWait(driver, 10).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && !document.documentElement.dataset.sent;"))


def _status(driver) -> int:
    """The HTTP status of the page now shown (Navigation Timing, Chromium >= 109)."""
    return driver.execute_script(
        "return performance.getEntriesByType('navigation')[0].responseStatus;")


def test_review_in_chromium(server, browser, tmp_path):
    url, items = server["url"], server["queue"].items
    browser.get(url + "/")
    assert browser.current_url == url + "/login"
    _sign_in(browser, "dr-a", PASSWORD)
    _wait_for_ecg(browser, items[0].ecg_id, 0, 4)
    # age and sex from PTB-XL's database CSV (its headers have none)
    first = items[0]
    assert first.age is not None and first.sex in ("M", "F")
    age = "≥ 90 y" if first.age >= 90 else f"{round(first.age)} y"
    assert browser.find_element(By.ID, "ecg-age").text == age
    assert browser.find_element(By.ID, "ecg-sex").text == {"M": "male", "F": "female"}[first.sex]

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
    if server["queue"].explainer is not None:  # captum installed: the evidence overlay
        browser.find_element(By.ID, "show-evidence").click()
        WebDriverWait(browser, 60).until(lambda d: d.execute_script(
            "const i = document.getElementById('ecg-overlay');"
            "return !i.classList.contains('hidden') && i.complete && i.naturalWidth > 0;"))
        overlay = browser.find_element(By.ID, "ecg-overlay")
        assert overlay.size == browser.find_element(By.ID, "ecg-plot").size
        browser.save_screenshot(str(_artifacts(tmp_path) / "review-evidence.png"))
        browser.find_element(By.ID, "show-evidence").click()
        assert not overlay.is_displayed()
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

    # the agreement page: dr-a against the model, which showed NORM and STTC on both ECGs
    browser.find_element(By.LINK_TEXT, "Agreement").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url == url + "/agreement")
    rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in browser.find_elements(By.CSS_SELECTOR, "#kappa-model tbody tr")]
    assert ["NORM", "dr-a", "2", "50%", "0.00"] in rows  # right once, wrong once
    assert ["CD", "dr-a", "2", "50%", "0.00"] in rows  # missed once
    browser.save_screenshot(str(_artifacts(tmp_path) / "review-agreement.png"))
    assert shot.stat().st_size > 10_000


def test_too_many_wrong_passwords_end_on_the_429_page(server, browser, tmp_path):
    url = server["url"]
    browser.get(url + "/login")
    for _ in range(FAILURES_ALLOWED):
        _sign_in(browser, "dr-b", "not the password")
        assert _status(browser) == 401
        assert "wrong password" in browser.find_element(By.CSS_SELECTOR, ".alert").text
    _sign_in(browser, "dr-b", PASSWORD)  # the right one, too late
    assert _status(browser) == 429
    alert = browser.find_element(By.CSS_SELECTOR, ".alert").text
    assert "Too many failed sign-ins" in alert and "Try again in 15 minutes" in alert
    assert browser.current_url == url + "/login"
    shot = _artifacts(tmp_path) / "review-throttled.png"
    browser.save_screenshot(str(shot))
    print(f"\n429 page screenshot: {shot}")
    assert shot.stat().st_size > 5_000
    # dr-a, at the same address, is not held back by dr-b's failures
    _sign_in(browser, "dr-a", PASSWORD)
    WebDriverWait(browser, 10).until(lambda d: d.current_url == url + "/")
