"""The web console's screenshots in docs/: the playground, the models page and the live view, at 1280x800.

    .venv/bin/python scripts/console_screenshots.py

Starts `slm-server serve` with the repository's models.yaml (the embedded SmolLM2 answers; entries whose files are
not pulled show as missing), chats in the playground, then opens the models page and, after some traffic, the live
view, in headless Chromium (Debian's `chromium` and `chromium-driver`, as the browser tests use). Writes
docs/console-playground.png, docs/console-models.png and docs/console-live.png.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selenium.webdriver.common.by import By  # noqa: E402

from tests.real.conftest import ServerProcess  # noqa: E402
from tests.real.test_console_real import CHAT_MODEL, chromium, open_playground, set_field, wait  # noqa: E402

DOCS = ROOT / "docs"
PROMPT = "In two sentences: why do small language models matter?"
logger = logging.getLogger("console_screenshots")


def traffic(server: ServerProcess, requests: int) -> None:
    """A few answers, so the live view has something to draw."""
    for n in range(requests):
        body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": f"Say a word about {n}."}]}
        httpx.post(server.url + "/v1/chat/completions", json={**body, "max_tokens": 24}, timeout=120)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as data_dir:
        server = ServerProcess(ROOT / "models.yaml", "--data-dir", data_dir)
        driver = chromium(1280, 800)
        try:
            httpx.post(server.url + "/models/load", json={"model": CHAT_MODEL}, timeout=120).raise_for_status()
            open_playground(driver, server, CHAT_MODEL)
            driver.find_element(By.ID, "nav-live").click()  # the live view polls from now on, whichever page is shown
            driver.find_element(By.ID, "nav-playground").click()
            set_field(driver, "pg-system", "You are a concise assistant.")
            set_field(driver, "pg-temperature", "0.7")
            set_field(driver, "pg-max-tokens", "96")
            set_field(driver, "pg-seed", "3")
            set_field(driver, "pg-input", PROMPT)
            driver.find_element(By.ID, "pg-send").click()
            wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#pg-messages li.assistant.done"), 180)
            driver.save_screenshot(str(DOCS / "console-playground.png"))
            driver.find_element(By.ID, "nav-models").click()
            wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#models-rows tr"))
            driver.save_screenshot(str(DOCS / "console-models.png"))
            traffic(server, 12)
            driver.find_element(By.ID, "nav-live").click()
            card = f'#live-models [data-model="{CHAT_MODEL}"]'
            wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, f"{card} polyline")) >= 3)
            driver.save_screenshot(str(DOCS / "console-live.png"))
        finally:
            driver.quit()
            server.stop()
    logger.info("wrote %s", ", ".join(f"docs/console-{page}.png" for page in ("playground", "models", "live")))


if __name__ == "__main__":
    main()
