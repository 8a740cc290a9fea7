"""The web page in a real headless Chromium (Debian's, installed with apt-get when missing), driven by Playwright,
against real processes: sign in, send and see the reply stream; reload mid-reply and end with exactly the
persisted text, resumed from the number the page had; Stop stops the upstream request; untrusted text runs
nothing. Screenshots of each state, light and dark, go to test-artifacts/page/ (and to $CHATTER_SCREENSHOTS when
set: the README's are made so)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from services.mock_llm.script import reply_text
from tests.integration.stack import wait_until
from tests.integration.test_gateway import MODEL, gateway, sdk  # noqa: F401 (gateway: a fixture)
from tools.spawn import REPO
from tools.system import apt_install, ensure_fonts

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts" / "page"
# as root in a closed network: no sandbox, and none of Chromium's own calls home (they are refused, many at once)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    """Debian's Chromium, installed with apt-get when it is missing (as the PostgreSQL tests install theirs)."""
    if not Path(CHROMIUM).exists():
        apt_install("chromium")
    assert Path(CHROMIUM).exists(), "no Chromium at /usr/bin/chromium, and it could not be installed with apt-get"
    return CHROMIUM


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    ensure_fonts()  # emoji and CJK drawn in the screenshots, not boxes
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium(), args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    if os.environ.get("CHATTER_SCREENSHOTS"):
        page.screenshot(path=str(Path(os.environ["CHATTER_SCREENSHOTS"]) / f"{name}.png"))


def signed_in(browser, stack, scheme: str = "light", port: int | None = None):
    page = browser.new_context(color_scheme=scheme, viewport={"width": 1000, "height": 700}).new_page()
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.errors = []
    answer = page.goto(f"http://127.0.0.1:{port or stack.http_port}/")
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    page.fill("#token", stack.token)
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#app:not([hidden])")
    return page


def last_reply(stack) -> dict:
    return stack.query("select content, status from message where role = 'assistant' order by created_at desc "
                       "limit 1")[0]


def raw_of_last_reply(page) -> str:
    return page.eval_on_selector_all("article.message.assistant", "els => els[els.length - 1].dataset.raw || ''")


def test_a_reload_mid_reply_resumes_from_its_number_and_ends_with_exactly_the_persisted_text(gateway, browser):
    page = signed_in(browser, gateway)
    shot(page, "signed-in")
    resumed = []
    page.on("request", lambda request: resumed.append(request.url) if "starting_after=" in request.url else None)
    text = "hello page [[mock tokens=400 tps=40]]"
    page.fill("#message", text)
    page.press("#message", "Enter")
    page.wait_for_function("() => { const r = [...document.querySelectorAll('article.message.assistant')].pop();"
                           " return r && (r.dataset.raw || '').length > 60; }")
    shot(page, "streaming")
    page.reload()
    page.wait_for_selector("article.message.assistant[data-status]", timeout=60_000)
    shot(page, "after-reload")
    expected = reply_text([{"role": "user", "content": text}], MODEL, 400)
    assert raw_of_last_reply(page) == expected == last_reply(gateway)["content"]
    numbers = [int(re.search(r"starting_after=(-?\d+)", url).group(1)) for url in resumed]
    assert numbers and numbers[0] > 2  # resumed from where the page was, not replayed from the start
    assert page.eval_on_selector("article.message.user", "el => el.dataset.raw") == text  # the history reloaded
    assert "tokens (" in page.inner_text("#stats") and not page.errors


def test_stop_stops_the_upstream_request(gateway, browser):
    page = signed_in(browser, gateway)
    text = "stop me [[mock tokens=3000 tps=40]]"
    page.fill("#message", text)
    page.press("#message", "Enter")
    page.wait_for_function("() => (document.querySelector('article.message.assistant')?.dataset.raw || '').length > 20")
    page.keyboard.press("Escape")
    page.wait_for_selector("article.message.assistant[data-status='cancelled']", timeout=30_000)
    wait_until(lambda: any(e["body"]["messages"][-1]["content"] == text and e["client_closed"]
                           for e in gateway.journal()), what="the upstream request closed")
    assert last_reply(gateway)["status"] == "cancelled"
    assert page.is_disabled("#stop") and not page.is_disabled("#send")


PAYLOADS = ('<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script> '
            '[click me](javascript:window.__pwned=3) <a href="javascript:window.__pwned=4">raw link</a> '
            '[a site](https://example.invalid/)')


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_untrusted_text_in_a_message_or_a_reply_runs_nothing(gateway, browser, scheme):
    """The payloads in a user's message (sent from the page) and in a reply (a conversation made over the API,
    which the page loads): shown as text, no element made of them, no script run, no javascript: link."""
    conversation = sdk(gateway).conversations.create(items=[
        {"role": "user", "content": "show me"},
        {"role": "assistant", "content": "Here:\n\n" + PAYLOADS + "\n\n```python\nprint('hi')\n```\n"}])
    page = signed_in(browser, gateway, scheme)
    page.evaluate("id => localStorage.setItem('chatter.conversation', id)", conversation.id)
    page.reload()
    page.wait_for_selector("article.message.assistant[data-status]")
    page.fill("#message", PAYLOADS + " [[mock tokens=3]]")
    page.press("#message", "Enter")
    page.wait_for_function("() => document.querySelectorAll('article.message.assistant[data-status]').length >= 2")
    shot(page, f"untrusted-{scheme}")
    assert page.evaluate("() => window.__pwned") is None
    transcript = page.locator("#transcript")
    assert transcript.locator("img, script").count() == 0
    assert page.eval_on_selector_all("#transcript a", "els => els.filter(a => "
                                     "(a.getAttribute('href') || '').trim().toLowerCase().startsWith('javascript'))"
                                     ".length") == 0
    assert '<img src=x onerror="window.__pwned=1">' in transcript.inner_text()  # shown as text
    assert transcript.locator("pre code.hljs").count() == 1 and transcript.locator("pre button.copy").count() == 1
    links = transcript.locator("a").all()
    assert links and all(link.get_attribute("rel") == "noopener noreferrer" for link in links)
    assert not page.errors


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_streamed_markdown_reply_renders_and_its_raw_html_runs_nothing(gateway, browser, scheme):
    """The mock's Markdown mode streamed (not seeded): two highlighted code blocks each with Copy, a table, nested
    lists, emoji and CJK; its <script>, <img onerror> and javascript: link shown as text, no dialog ever opened."""
    from services.mock_llm.script import MARKDOWN
    page = signed_in(browser, gateway, scheme)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.fill("#message", "format something [[mock markdown tps=60]]")
    page.press("#message", "Enter")
    page.wait_for_selector("article.message.assistant[data-status]:not([aria-busy])", timeout=60_000)
    reply = page.locator("article.message.assistant")
    assert raw_of_last_reply(page) == MARKDOWN == last_reply(gateway)["content"]
    assert reply.locator("pre code.hljs.language-python").count() == 1
    assert reply.locator("pre code.hljs.language-javascript").count() == 1
    assert reply.locator("pre button.copy").count() == 2
    assert reply.locator("table tr").count() == 3 and reply.locator("ol > li ul ul li").count() == 1
    assert "数据流" in reply.inner_text() and "🙂🎉" in reply.inner_text()
    assert reply.locator("img, script, b").count() == 0
    assert '<script>alert("ran")</script>' in reply.inner_text()
    assert page.eval_on_selector_all("#transcript a", "els => els.filter(a => (a.getAttribute('href') || '')"
                                     ".toLowerCase().includes('javascript')).length") == 0
    shot(page, f"markdown-{scheme}")
    assert dialogs == [] and not page.errors
