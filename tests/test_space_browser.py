"""The Space in a real browser: Debian's headless Chromium driven by Playwright loads the page, runs the Ask
example and the See tab, and saves a screenshot of each tab: into a temporary folder, or into docs/screenshots/
with SPA3_UPDATE_SCREENSHOTS=1 (how the README's screenshots are refreshed), so a test run never edits the repo.

Needs ``pip install playwright`` and ``apt-get install chromium`` (never ``playwright install``: no downloads).
"""

import os
import re
from pathlib import Path

import pytest

from space_testing import free_port, load_space_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
DOC_SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright; the browser comes from apt)"
)
if not os.path.exists(CHROMIUM):
    pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def app_url():
    app = load_space_app()
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    if os.environ.get("SPA3_UPDATE_SCREENSHOTS") == "1":
        DOC_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return DOC_SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser_page(app_url):
    """The app's page in headless Chromium, with the JavaScript errors it raised."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(app_url)
            page.get_by_role("button", name="Load example scene").wait_for()
            yield page, errors
        finally:
            browser.close()


def test_ask_tab_runs_an_example(browser_page, screenshots):
    page, errors = browser_page
    page.get_by_role("button", name="Load example scene").click()
    question = page.get_by_label("Question", exact=True)
    sync_api.expect(question).to_have_value(re.compile(r"^These are frames of a video\."), timeout=60_000)
    sync_api.expect(page.get_by_text("Ground truth")).to_be_visible()
    page.get_by_role("button", name="Ask", exact=True).click()
    sync_api.expect(page.get_by_text("the model saw 8 frames")).to_be_visible(timeout=60_000)
    sync_api.expect(page.get_by_text("Model:").first).to_be_visible()  # which model answered (trained or random)
    sync_api.expect(page.locator("#seen-frames img")).to_have_count(8)
    page.screenshot(path=str(screenshots / "ask.png"), full_page=True)
    assert (screenshots / "ask.png").stat().st_size > 10_000
    assert errors == []


def test_see_tab_predicts_a_field(browser_page, screenshots):
    page, errors = browser_page
    page.get_by_role("tab", name="See").click()
    page.get_by_role("button", name="Predict the field").click()
    sync_api.expect(page.get_by_text("nearest input view: #0")).to_be_visible(timeout=60_000)
    for image in ("#field-image", "#nearest-image", "#true-image", "#teacher-image"):
        sync_api.expect(page.locator(f"{image} img")).to_be_visible()
    sync_api.expect(page.locator("#context-views img")).to_have_count(6)
    page.screenshot(path=str(screenshots / "see.png"), full_page=True)
    assert (screenshots / "see.png").stat().st_size > 10_000
    assert errors == []


def test_a_bad_upload_shows_an_error_in_the_page(browser_page, tmp_path):
    page, _ = browser_page
    page.get_by_role("tab", name="Ask").click()
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    page.locator("input[type=file]").first.set_input_files(str(text))
    page.get_by_role("button", name="Ask", exact=True).click()
    sync_api.expect(page.get_by_text("notes.txt is not an image or a video")).to_be_visible(timeout=30_000)
