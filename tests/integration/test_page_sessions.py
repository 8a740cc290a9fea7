"""The web page's session features in a real headless Chromium against real processes: two tabs on one session
show the same text; Regenerate, the < 2/3 > arrows, Edit, Stop then Continue; Preview shows the prompt the mock
received and its stored hash; Settings shows the session's values and sends only what changed; search (Ctrl+K),
rename and delete; thinking folded to "Thought for X s"; a gateway killed mid-reply and a network drop, each
resumed to exactly the persisted text; a 100k-character reply whose settled blocks are never re-rendered. A
screenshot of each state goes to test-artifacts/page/."""
from __future__ import annotations

import re
import socket
import threading

from services.mock_llm.script import reply_text
from tests.integration.test_gateway import MODEL, gateway, sdk  # noqa: F401 (gateway: a fixture)
from tests.integration.test_page import browser, last_reply, raw_of_last_reply, shot, signed_in  # noqa: F401

ENDED = "article.message.assistant[data-status]:not([aria-busy])"


def send(page, text: str) -> None:
    page.fill("#message", text)
    page.press("#message", "Enter")


def replies_ended(page, count: int, timeout: float = 60_000) -> None:
    page.wait_for_function(f"() => document.querySelectorAll('article.message.assistant[data-status]').length >= {count}"
                           " && !document.querySelector('article.message.assistant[aria-busy]')"
                           " && document.querySelector('#stop').disabled", timeout=timeout)


def wait_text(page, more_than: int) -> None:
    page.wait_for_function("n => ([...document.querySelectorAll('article.message.assistant')].pop()?.dataset.raw || '')"
                           ".length > n", arg=more_than, timeout=30_000)


def test_two_tabs_on_one_session_show_the_same_text(gateway, browser):
    first = signed_in(browser, gateway)
    text = "two tabs [[mock tokens=300 tps=40]]"
    send(first, text)
    wait_text(first, 40)
    second = first.context.new_page()  # the same browser: signed in, on the same session, following on its own
    second.errors = []
    second.on("pageerror", lambda error: second.errors.append(str(error)))
    second.goto(f"http://127.0.0.1:{gateway.http_port}/")
    second.wait_for_selector("article.message.assistant[aria-busy]")
    shot(second, "two-tabs-second-following")
    replies_ended(first, 1)
    replies_ended(second, 1)
    expected = reply_text([{"role": "user", "content": text}], MODEL, 300)
    assert raw_of_last_reply(first) == raw_of_last_reply(second) == expected == last_reply(gateway)["content"]
    again = "and once more [[mock tokens=40 tps=40]]"
    send(first, again)  # the other tab, idle, picks it up by itself
    replies_ended(first, 2)
    second.wait_for_function("() => document.querySelectorAll('article.message.assistant[data-status]').length == 2"
                             " && !document.querySelector('article.message.assistant[aria-busy]')", timeout=30_000)
    assert raw_of_last_reply(second) == raw_of_last_reply(first) == last_reply(gateway)["content"]
    second.click("#new")  # the other tab goes to a session of its own...
    send(second, "elsewhere [[mock tokens=5]]")
    replies_ended(second, 1)
    first.reload()  # ...and a reload of this one keeps this tab's session
    first.wait_for_selector(ENDED)
    assert first.locator("article.message.user").first.get_attribute("data-raw") == text
    assert not first.errors and not second.errors


def meta_of_last(page, selector: str = "article.message.assistant") -> str:
    return page.locator(selector).last.locator(".meta").inner_text()


def test_regenerate_arrows_edit_stop_continue_preview_and_settings(gateway, browser):
    page = signed_in(browser, gateway)
    send(page, "q1 [[mock tokens=6]]")
    replies_ended(page, 1)
    first = raw_of_last_reply(page)
    page.get_by_role("button", name="Regenerate this reply").click()
    page.wait_for_function("() => document.querySelector('article.message.assistant .position')?.textContent == '2/2'",
                           timeout=30_000)
    replies_ended(page, 1)
    regenerated = raw_of_last_reply(page)
    shot(page, "branch-arrows")
    assert regenerated == last_reply(gateway)["content"]
    page.get_by_role("button", name="Earlier version").click()
    page.wait_for_function("() => document.querySelector('article.message.assistant .position')?.textContent == '1/2'")
    assert raw_of_last_reply(page) == first
    page.get_by_role("button", name="Later version").click()
    page.wait_for_function("() => document.querySelector('article.message.assistant .position')?.textContent == '2/2'")
    assert raw_of_last_reply(page) == regenerated

    page.get_by_role("button", name="Edit this message").click()
    page.fill("form.editing textarea", "q1, said again [[mock tokens=5]]")
    shot(page, "editing")
    page.click("form.editing button[type=submit]")
    page.wait_for_function("() => document.querySelector('article.message.user .position')?.textContent == '2/2'",
                           timeout=30_000)
    replies_ended(page, 1)
    assert page.locator("article.message.user").last.get_attribute("data-raw") == "q1, said again [[mock tokens=5]]"
    assert raw_of_last_reply(page) == last_reply(gateway)["content"]

    page.get_by_role("button", name="Settings").click()
    page.wait_for_selector("#settings-dialog[open]")
    form = page.locator("#settings-dialog form")
    title = gateway.query("select title from session")[0]["title"]
    assert title and form.locator("[name=title]").input_value() == title  # the session's values now
    assert form.locator("[name=max_input_tokens]").input_value() == "8192"
    form.locator("[name=continue_style]").select_option("vllm")  # the mock continues as vLLM does
    form.locator("[name=temperature]").fill("0.3")
    shot(page, "settings")
    sent = []
    page.on("request", lambda request: sent.append(request.post_data_json) if request.method == "PATCH" else None)
    form.locator("button[value=save]").click()
    page.wait_for_function("() => !document.querySelector('#settings-dialog').open")
    assert sent == [{"continue_style": "vllm", "temperature": 0.3}]  # only what changed

    long = "go on [[mock tokens=400 tps=40]]"
    send(page, long)
    wait_text(page, 40)
    page.keyboard.press("Escape")
    page.wait_for_selector("article.message.assistant[data-status='cancelled']", timeout=30_000)
    replies_ended(page, 2)
    cut = raw_of_last_reply(page)
    shot(page, "stopped")
    page.get_by_role("button", name="Continue this reply where it was cut").click()
    page.wait_for_selector("article.message.assistant[aria-busy]", timeout=30_000)
    replies_ended(page, 2)
    whole = raw_of_last_reply(page)
    assert whole.startswith(cut) and len(whole) > len(cut) and whole == last_reply(gateway)["content"]

    page.get_by_role("button", name="Preview the exact prompt of this reply").last.click()
    page.wait_for_selector("#preview[open]")
    shot(page, "preview")
    received = [e for e in gateway.journal()
                if any(str(msg["content"]).startswith("go on") for msg in e["body"]["messages"])][-1]["body"]
    shown = page.eval_on_selector_all("#preview .prompt pre", "els => els.map(e => e.textContent)")
    assert shown == [msg["content"] for msg in received["messages"]]
    stored = gateway.query("select prompt_hash from message where content = ?", (whole,))[0]["prompt_hash"]
    assert page.get_attribute("#preview", "data-hash") == stored and stored in page.inner_text("#preview")
    page.click("#preview button.close")
    assert not page.errors


def test_search_rename_and_delete_from_the_list(gateway, browser):
    client = sdk(gateway)
    made = [client.responses.create(model=MODEL, input=f"{word} notes [[mock tokens=3]]")
            for word in ("giraffe", "penguin", "walrus")]
    page = signed_in(browser, gateway)
    page.wait_for_function("() => document.querySelectorAll('#sessions li').length == 3")
    page.keyboard.press("Control+k")
    assert page.evaluate("() => document.activeElement.id") == "search"
    page.keyboard.type("penguin")
    page.wait_for_selector("#sessions li.hit mark")
    shot(page, "search")
    assert page.locator("#sessions li.hit").count() == 1
    assert page.inner_text("#sessions li.hit mark").lower() == "penguin"
    page.click("#sessions li.hit .open")
    page.wait_for_selector("article.message.assistant[data-status]")
    assert page.locator("article.message.user").first.get_attribute("data-raw") == "penguin notes [[mock tokens=3]]"

    page.fill("#search", "")
    page.wait_for_function("() => document.querySelectorAll('#sessions li.session').length == 3")
    walrus = made[2].conversation.id
    page.click(f"#sessions li[data-id='{walrus}'] .rename")
    page.fill(f"#sessions li[data-id='{walrus}'] input", "Tusks")
    page.press(f"#sessions li[data-id='{walrus}'] input", "Enter")
    page.wait_for_function(f"() => document.querySelector(\"#sessions li[data-id='{walrus}'] .open\")?.textContent"
                           " == 'Tusks'")
    assert gateway.query("select title from session where id = ?", (walrus,))[0]["title"] == "Tusks"

    giraffe = made[0].conversation.id
    page.click(f"#sessions li[data-id='{giraffe}'] .delete")
    shot(page, "delete-asked")
    page.click(f"#sessions li[data-id='{giraffe}'] .delete.confirm")
    page.wait_for_function(f"() => !document.querySelector(\"#sessions li[data-id='{giraffe}']\")")
    assert not gateway.query("select id from message where session_id = ?", (giraffe,))
    page.fill("#search", "giraffe")
    page.wait_for_selector("#sessions li.empty")  # gone from search too
    assert not page.errors


def test_thinking_is_shown_live_then_folded_with_its_time(gateway, browser):
    page = signed_in(browser, gateway, "dark")
    send(page, "think first [[mock tokens=30 reasoning_tokens=80 reasoning_field=reasoning_content tps=40]]")
    page.wait_for_selector("details.thinking[open]:not([hidden])", timeout=30_000)
    shot(page, "thinking-live")
    replies_ended(page, 1)
    summary = page.inner_text("details.thinking summary")
    assert re.fullmatch(r"▸ Thought for \d+\.\d s", summary), summary
    assert not page.eval_on_selector("details.thinking", "d => d.open")
    shot(page, "thinking-folded")
    stored = gateway.query("select reasoning from message where role = 'assistant'")[0]["reasoning"]
    assert page.eval_on_selector("details.thinking .thought", "d => d.textContent") == stored
    page.reload()  # the stored reply: folded the same, its time from its stats
    page.wait_for_selector(ENDED)
    assert re.fullmatch(r"▸ Thought for \d+\.\d s", page.inner_text("details.thinking summary"))


class Link:
    """A TCP relay between the browser and the gateway whose connections the test can cut (a network drop: Chromium's
    offline mode leaves an open stream to loopback alone), and refuse new ones until it is mended."""

    def __init__(self, port: int) -> None:
        self.target, self.up, self.conns = port, threading.Event(), []
        self.up.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for end in (a, b):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.up.clear()
        for conn in self.conns:
            try:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.shutdown(socket.SHUT_RDWR)  # wakes the relay's reads: the connection ends mid-stream
                conn.close()
            except OSError:
                pass
        self.conns = []

    def mend(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_a_gateway_killed_mid_reply_and_a_network_drop_resume_to_exactly_the_persisted_text(gateway, browser):
    link = Link(gateway.http_port)
    try:
        through_a_crash_and_a_drop(gateway, browser, link)
    finally:
        link.close()


def through_a_crash_and_a_drop(gateway, browser, link) -> None:
    page = signed_in(browser, gateway, port=link.port)
    text = "through a crash [[mock tokens=500 tps=40]]"
    send(page, text)
    wait_text(page, 40)
    gateway.kill("gateway")
    page.wait_for_selector("#reconnecting:not([hidden])", timeout=30_000)
    assert "Reconnecting" in page.inner_text("#reconnecting")
    shot(page, "reconnecting")
    had = len(raw_of_last_reply(page))
    gateway.start("gateway")
    page.wait_for_selector("#reconnecting[hidden]", state="attached", timeout=60_000)
    wait_text(page, had + 40)
    link.cut()  # the network goes; the page says so and retries
    page.wait_for_selector("#reconnecting:not([hidden])", timeout=30_000)
    page.wait_for_timeout(1500)  # a retry or two refused while it is down
    link.mend()
    replies_ended(page, 1, timeout=90_000)
    expected = reply_text([{"role": "user", "content": text}], MODEL, 500)
    assert raw_of_last_reply(page) == expected == last_reply(gateway)["content"]
    assert page.get_attribute("article.message.assistant", "data-status") == "completed"


def test_a_100k_reply_re_renders_only_its_growing_block(gateway, browser):
    page = signed_in(browser, gateway)
    send(page, "a long one [[mock tokens=26000 tps=5000]]")
    page.wait_for_selector("article.message.assistant .settled")
    page.evaluate("""() => {
        const settled = document.querySelector('article.message.assistant .settled');
        window.__removed = 0;
        new MutationObserver((changes) => { for (const c of changes) window.__removed += c.removedNodes.length; })
            .observe(settled, { childList: true, subtree: true, characterData: true });
    }""")
    replies_ended(page, 1, timeout=120_000)
    raw = raw_of_last_reply(page)
    assert len(raw) > 100_000 and raw == last_reply(gateway)["content"]
    blocks = page.locator("article.message.assistant .settled .block").count()
    assert blocks > 100  # settled block by block as it grew
    assert page.evaluate("() => window.__removed") == 0  # and none of them ever rendered again
    shot(page, "long-reply")


UNLABELLED = """() => [...document.querySelectorAll('button, input, textarea, select')]
    .filter((el) => el.offsetParent !== null)
    .filter((el) => !(el.getAttribute('aria-label') || el.textContent.trim()
                      || (el.id && document.querySelector(`label[for="${el.id}"]`)) || el.closest('label')))
    .map((el) => el.outerHTML.slice(0, 80))"""


def test_sign_in_and_out_a_new_session_with_a_system_prompt_errors_apart_and_every_control_labelled(gateway, browser):
    page = signed_in(browser, gateway)
    page.click("#system-box summary")
    page.fill("#system", "answer like a pirate")
    page.click("#message")
    page.keyboard.type("hello")
    page.keyboard.press("Shift+Enter")  # a new line, not a send
    page.keyboard.type("there [[mock tokens=8]]")
    page.keyboard.press("Enter")
    replies_ended(page, 1)
    assert page.locator("article.message.user").first.get_attribute("data-raw") == "hello\nthere [[mock tokens=8]]"
    sent = [e for e in gateway.journal() if e["body"]["messages"][-1]["content"] == "hello\nthere [[mock tokens=8]]"]
    assert sent[-1]["body"]["messages"][0] == {"role": "system", "content": "answer like a pirate"}
    assert page.evaluate(UNLABELLED) == []  # every visible control has a name a screen reader reads
    assert page.locator("article.message.assistant .settled[aria-live=polite]").count() == 1
    assert page.get_attribute("#announce", "aria-live") == "polite" and "Reply completed" in page.inner_text("#announce")
    page.focus("#message")
    page.keyboard.press("Shift+Tab")  # focus moves by keyboard, and shows
    assert page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle") not in ("none", "")

    send(page, "this fails [[mock fail_status=400]]")
    page.wait_for_selector("#banner:not([hidden])", timeout=30_000)
    shot(page, "error-banner")
    assert page.inner_text("#banner") and not page.locator("#transcript #banner").count()  # apart from the reply
    assert page.get_attribute("#banner", "role") == "alert"

    page.click("#signout")
    page.wait_for_selector("#signin:not([hidden])")
    assert page.evaluate("() => localStorage.getItem('chatter.token')") is None
    page.fill("#token", "chk_not_a_token")
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#banner:not([hidden])")
    assert "does not sign in" in page.inner_text("#banner")
    shot(page, "signed-out")
    assert not page.errors


def test_a_think_block_of_whitespace_alone_shows_no_thinking_on_the_page(gateway, browser):
    from tests.integration.test_reasoning import whitespace_thinking
    page = signed_in(browser, gateway)
    send(page, whitespace_thinking())
    replies_ended(page, 1)
    stored = gateway.query("select reasoning from message where role = 'assistant'")[0]["reasoning"]
    assert stored and not stored.strip()  # the reply had its think block, of whitespace alone
    assert page.locator("details.thinking").is_hidden() and "Thought" not in page.inner_text("#transcript")
    page.reload()
    page.wait_for_selector(ENDED)
    assert page.locator("details.thinking").is_hidden()
