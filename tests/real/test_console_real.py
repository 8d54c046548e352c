"""The web console in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`, driven by
Selenium) opens the console of a server started by the test suite, chats, stops an answer mid-stream, unloads and
loads a model, and loads nothing from another origin."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.real.conftest import ServerProcess

pytestmark = pytest.mark.real

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHAT_MODEL = "smollm2-135m-instruct"
WAIT_S = 60

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(
        "the console's browser tests need Debian's chromium and chromium-driver (`apt-get install chromium "
        "chromium-driver`; .ci/run installs them)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402  (only once the browser is known to be there)
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


def chromium(width: int = 1280, height: int = 800) -> webdriver.Chrome:
    """Headless Chromium through the system chromedriver, named explicitly so Selenium Manager never downloads."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: webdriver.Chrome, condition, timeout: float = WAIT_S):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))


def admin_stats(server: ServerProcess, model: str) -> dict:
    stats = httpx.get(server.url + "/admin/stats", timeout=30).json()
    return next(row for row in stats["data"] if row["id"] == model)


def model_status(server: ServerProcess, model: str) -> str:
    entries = httpx.get(server.url + "/models", timeout=30).json()["data"]
    return next(entry for entry in entries if entry["id"] == model)["status"]["value"]


def open_playground(driver: webdriver.Chrome, server: ServerProcess, model: str) -> None:
    driver.get(server.url + "/")
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'#pg-model option[value="{model}"]'))
    Select(driver.find_element(By.ID, "pg-model")).select_by_value(model)
    driver.find_element(By.ID, "pg-clear").click()


def set_field(driver: webdriver.Chrome, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def send(driver: webdriver.Chrome, prompt: str, *, max_tokens: int) -> None:
    set_field(driver, "pg-max-tokens", str(max_tokens))
    set_field(driver, "pg-seed", "7")
    ignore_eos = driver.find_element(By.ID, "pg-ignore-eos")
    if not ignore_eos.is_selected():
        ignore_eos.click()  # a known length: the answer cannot end before the test has watched it stream
    set_field(driver, "pg-input", prompt)
    driver.find_element(By.ID, "pg-send").click()


# Records each length the answer's text takes while it streams, so the test sees it grow without timing guesses.
WATCH_ANSWER = """
window.answerLengths = [];
new MutationObserver(() => {
  const answer = document.querySelector("#pg-messages li.assistant .content");
  if (answer) window.answerLengths.push(answer.textContent.length);
}).observe(document.getElementById("pg-messages"), {childList: true, subtree: true, characterData: true});
"""


def test_a_prompt_in_the_playground_streams_its_answer(browser, server):
    open_playground(browser, server, CHAT_MODEL)
    browser.execute_script(WATCH_ANSWER)
    send(browser, "Tell me about the sea.", max_tokens=24)
    done = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#pg-messages li.assistant.done"))[0]
    answer = done.find_element(By.CLASS_NAME, "content").text
    lengths = [n for n in browser.execute_script("return window.answerLengths") if n]
    assert answer.strip()
    assert len(set(lengths)) >= 3 and lengths == sorted(lengths), lengths  # rendered piece by piece as it came
    stats = done.find_element(By.CLASS_NAME, "stats").text
    assert "24 completion tokens" in stats and "TTFT" in stats and "tokens/s" in stats and "finish: length" in stats
    user = browser.find_element(By.CSS_SELECTOR, "#pg-messages li.user .content").text
    assert user == "Tell me about the sea."


def test_stop_cancels_the_answer_on_the_server(browser, server):
    open_playground(browser, server, CHAT_MODEL)
    send(browser, "Write a very long story.", max_tokens=900)
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#pg-messages li.assistant .content").text.strip())
    assert admin_stats(server, CHAT_MODEL)["active_sequences"] == 1  # generating now
    browser.find_element(By.ID, "pg-stop").click()
    stopped = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#pg-messages li.assistant.stopped"))[0]
    assert "stopped" in stopped.find_element(By.CLASS_NAME, "stats").text
    deadline = time.monotonic() + 15
    while (active := admin_stats(server, CHAT_MODEL)["active_sequences"]) != 0 and time.monotonic() < deadline:
        time.sleep(0.2)  # polling the server's own figure, with a bound
    assert active == 0
    assert browser.find_element(By.ID, "pg-send").is_enabled()
    assert not browser.find_element(By.ID, "pg-stop").is_enabled()


def row_of(driver: webdriver.Chrome, model: str) -> str:
    """The model's row as text, read at once (the table is redrawn whenever a model event arrives)."""
    selector = f'#models-rows tr[data-model="{model}"]'
    return driver.execute_script("return document.querySelector(arguments[0])?.innerText ?? ''", selector)


def click_row_button(driver: webdriver.Chrome, model: str, label: str) -> bool:
    """Click the row's button if it says `label`; False (try again) when the row was just redrawn."""
    try:
        button = driver.find_element(By.CSS_SELECTOR, f'#models-rows tr[data-model="{model}"] button')
        if button.text != label:
            return False
        button.click()
        return True
    except (NoSuchElementException, StaleElementReferenceException):
        return False


def test_the_models_page_unloads_and_loads_a_model(browser, server):
    model = "tiny-llama"
    httpx.post(server.url + "/models/load", json={"model": model}, timeout=120).raise_for_status()
    browser.get(server.url + "/ui/models")
    wait(browser, lambda d: row_of(d, model).endswith("Unload"))
    row = row_of(browser, model)
    assert "loaded" in row and "present" in row and "MiB" in row  # status, files, resident memory
    assert "gpt-4o-mini" in row_of(browser, CHAT_MODEL)  # aliases
    wait(browser, lambda d: click_row_button(d, model, "Unload"))
    wait(browser, lambda d: row_of(d, model).endswith("Load"))
    assert model_status(server, model) == "unloaded"
    assert "unloaded" in row_of(browser, model)
    wait(browser, lambda d: click_row_button(d, model, "Load"))
    wait(browser, lambda d: row_of(d, model).endswith("Unload"))
    assert model_status(server, model) == "loaded"


def test_the_console_loads_nothing_from_another_origin(server):
    driver = chromium()  # a fresh browser: its log holds this test's requests only
    try:
        open_playground(driver, server, CHAT_MODEL)
        send(driver, "Hello", max_tokens=4)
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#pg-messages li.assistant.done"))
        driver.find_element(By.ID, "nav-models").click()
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#models-rows tr"))
        driver.find_element(By.ID, "nav-live").click()
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'#live-models [data-model="{CHAT_MODEL}"]'))
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#live-events li"))
        logged = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
        requested = [m["params"]["request"]["url"] for m in logged if m["method"] == "Network.requestWillBeSent"]
        urls = [driver.execute_script("return location.href")]
        urls += driver.execute_script("return performance.getEntries().map(e => e.name).filter(n => n.includes(':'))")
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert len(requested) >= 8  # the page, its scripts and stylesheet, and the API calls
    assert all(url.startswith(server.url + "/") for url in requested + urls), requested + urls
    assert not errors, errors  # no script error, no refused (CSP) load


def test_the_console_asks_for_a_key_and_keeps_it_in_the_tab_only(browser, tmp_path, tiny_llama):
    models_file = tmp_path / "models.yaml"
    models_file.write_text(f"models:\n  - name: tiny-llama\n    source: {{path: {tiny_llama}}}\n    n_ctx: 256\n")
    keyed = ServerProcess(models_file, "--api-key", "client-key", "--admin-key", "admin-key")
    try:
        browser.get(keyed.url + "/ui/models")
        wait(browser, lambda d: d.find_element(By.ID, "login").is_displayed())
        assert not browser.find_elements(By.CSS_SELECTOR, "#models-rows tr")
        browser.find_element(By.ID, "login-key").send_keys("admin-key")
        browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
        wait(browser, lambda d: row_of(d, "tiny-llama"))
        assert not browser.find_element(By.ID, "login").is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('slm-console-key')") == "admin-key"
        assert browser.execute_script("return Object.keys(localStorage).length") == 0
        assert browser.get_cookies() == []
    finally:
        browser.execute_script("sessionStorage.clear()")
        keyed.stop()
