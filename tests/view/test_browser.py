"""`recap view` in a real browser: Debian's chromium, headless, driven by playwright (no browser
download, no network). Open, search, filter, sort, open a detail; images render; hostile captions
stay text. Screenshots go to RECAP_VIEW_SCREENSHOT when that is set (docs/view.png, and
docs/view-detail.png beside it)."""

from __future__ import annotations

import os
import shutil
import threading

import pytest

from .conftest import HOSTILE

pytestmark = pytest.mark.slow


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium package is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def server(request):
    """The app on a free loopback port, served by uvicorn in a thread."""
    chromium_path()  # skips first, before any server
    pytest.importorskip("playwright.sync_api", reason="needs playwright (.[test])")
    import uvicorn

    from recaption.viewer.app import make_app
    from recaption.viewer.serve import bind

    captioned = request.getfixturevalue("captioned")  # captioned only when the browser is there
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(make_app(str(captioned[0])), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def page(server):
    executable = chromium_path()
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (.[test])")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            # The page's Content-Security-Policy is switched off here: playwright's waits evaluate
            # strings, which it forbids; and so the escaping alone must keep hostile text inert.
            context = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
            # Nothing but the server itself is ever asked for.
            context.route(lambda url: not url.startswith(server), lambda route: route.abort())
            tab = context.new_page()
            tab.errors, tab.dialogs = [], []
            tab.on("pageerror", lambda error: tab.errors.append(str(error)))
            tab.on("dialog", lambda dialog: (tab.dialogs.append(dialog.message), dialog.dismiss()))
            yield tab
        finally:
            browser.close()


def loaded(page, before: str | None = None) -> None:
    """Wait for the rows the last change asked for."""
    page.wait_for_function("(before) => document.body.dataset.loaded !== undefined "
                           "&& document.body.dataset.loaded !== before", arg=before, timeout=15_000)


def counts(page) -> str:
    return page.locator("#counts").inner_text()


def images_rendered(page, selector: str) -> int:
    """How many of these images decoded (thumbnails load lazily: asked to load now first)."""
    page.evaluate(f"[...document.querySelectorAll('{selector}')].forEach(i => {{ i.loading = 'eager'; }})")
    every = f"[...document.querySelectorAll('{selector}')]"
    page.wait_for_function(f"{every}.every(i => i.complete)", timeout=15_000)
    return page.evaluate(f"{every}.filter(i => i.naturalWidth > 0).length")


def test_open_search_filter_sort_and_detail(page, server, tmp_path):
    page.goto(server)
    loaded(page)
    assert counts(page) == "20 of 20 rows"
    cards = page.locator("article.card")
    assert cards.count() == 20
    # Images render: every ok row's thumbnail decodes (the truncated one shows "no image").
    assert images_rendered(page, "article.card img") == 19
    assert page.locator("article.card .noimage").count() == 1
    # Hostile captions are text, shown as written; nothing ran, nothing was injected.
    shown = page.locator("article.card p.re_caption").all_inner_texts()[:3]
    assert shown == HOSTILE
    assert page.evaluate("window.__pwned") is None and not page.dialogs
    assert page.locator("article.card p img, article.card p script, article.card p b").count() == 0

    # Search.
    before = page.evaluate("document.body.dataset.loaded")
    page.fill("#q", "purple")
    loaded(page, before)
    searched = cards.count()
    assert 0 < searched < 20 and counts(page) == f"{searched} of 20 rows"
    assert all("purple" in t.lower() for t in page.locator("article.card").all_inner_texts())
    assert "contains(lower(re_caption), 'purple')" in page.locator("#command").inner_text()

    # Filter by status (search cleared first).
    before = page.evaluate("document.body.dataset.loaded")
    page.fill("#q", "")
    loaded(page, before)
    before = page.evaluate("document.body.dataset.loaded")
    page.check("input[name=status][value=decode_error]")
    loaded(page, before)
    assert counts(page) == "1 of 20 rows"
    assert "status in ('decode_error')" in page.locator("#command").inner_text()
    before = page.evaluate("document.body.dataset.loaded")
    page.uncheck("input[name=status][value=decode_error]")
    loaded(page, before)

    # Sort by the recaption's score, highest first.
    before = page.evaluate("document.body.dataset.loaded")
    page.select_option("#sort", "re_clip_score")
    loaded(page, before)
    scores = page.evaluate("""[...document.querySelectorAll('article.card .scores')].map(s =>
        (s.textContent.match(/re_clip_score (\\S+)/) || [])[1]).filter(Boolean).map(Number)""")
    assert len(scores) == 18 and scores == sorted(scores, reverse=True)
    assert "sort=re_clip_score" in page.url
    page.wait_for_function("document.querySelectorAll('#histograms figure').length > 0")
    assert page.locator("#histograms figure[data-column=re_clip_score] rect").count() == 20

    # A detail: the full image, every column, where it came from.
    page.locator("article.card").first.click()
    page.wait_for_selector("#detail:not([hidden]) img.full")
    assert images_rendered(page, "#detail img.full") == 1
    detail = page.locator("#detail-body").inner_text()
    assert "member" in detail and ".png (offset" in detail and "sha256" in detail
    screenshot = os.environ.get("RECAP_VIEW_SCREENSHOT")
    if screenshot:  # and one of a detail beside it: docs/view-detail.png
        page.screenshot(path=screenshot.removesuffix(".png") + "-detail.png")
    page.keyboard.press("Escape")
    assert page.locator("#detail").is_hidden()
    if screenshot:  # the docs' picture: the grid, sorted, with its histograms
        page.screenshot(path=screenshot)
    page.screenshot(path=str(tmp_path / "view.png"))
    assert not page.errors and not page.dialogs


def test_a_shared_address_restores_the_filter(page, server):
    page.goto(server + "?q=it%27s+100%25&status=ok")
    loaded(page)
    assert page.locator("#q").input_value() == "it's 100%"
    assert page.locator("article.card").count() == 1
    assert page.locator("article.card p.re_caption").inner_text() == HOSTILE[2]
    assert "chr(59)" not in page.locator("#command").inner_text()  # the search has no ';'


def test_a_bad_sql_condition_is_shown_as_one_line(page, server):
    page.goto(server + "?where=nope+%3E+1")
    loaded(page)
    error = page.locator("#error")
    assert error.is_visible() and "nope" in error.inner_text() and "\n" not in error.inner_text().strip()
