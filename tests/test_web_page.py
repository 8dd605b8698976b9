"""The web chat page at / in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright),
against the real gateway, qwen_server on SmolLM2-135M and the fake GigaChat: nothing is mocked.
(Markdown, highlighting, regenerate/edit, themes, accessibility: test_web_answers.py.)

Screenshots go to test-artifacts/web-page.png and test-artifacts/web-page-phone.png."""
import json
import os
import re
import time
import uuid

import pytest

from conftest import start_gateway
from helpers import free_port, http, stop_process
from webpage import ARTIFACTS, LAST_ASSISTANT, XSS, Web


@pytest.fixture
def web(browser, gateway):
    w = Web(browser, gateway.base_url)
    yield w
    w.close()


def history(base_url, sid, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else None
    status, _, body = http("GET", f"{base_url}/history/{sid}", headers=headers)
    return status, body


def letter_words(text):
    return re.findall(r"[^\W\d_]+", text)


def no_horizontal_scroll(page):
    return page.evaluate("""() => {
        const d = document.documentElement, c = document.getElementById('chat');
        return d.scrollWidth <= d.clientWidth && document.body.scrollWidth <= document.body.clientWidth
               && c.scrollWidth <= c.clientWidth; }""")


# -- tests --------------------------------------------------------------------------------------------

def test_qwen_answer_streams_token_by_token(web):
    page = web.open()
    page.wait_for_selector("#qwen-status[data-state='online']")
    assert "smollm2" in page.text_content("#qwen-status")
    assert "fp32 cache" in page.text_content("#qwen-status")  # what the CPU really runs, not the asked q4
    web.model("qwen")
    web.set_param("max_tokens", 16)
    web.ask("Name three colors.")
    lengths, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:  # sample the answer as it grows
        status, n = page.evaluate(f"() => {{ const m = ({LAST_ASSISTANT})(); "
                                  f"return [m.dataset.status, m.querySelector('.msg-body').textContent.length]; }}")
        if status != "streaming":
            break
        lengths.append(n)
        time.sleep(0.015)
    status, text, error, meta = web.wait_answer()
    assert status == "ok", (status, error)
    partial = sorted({n for n in lengths if 0 < n < len(text)})
    assert len(partial) >= 3, f"the answer did not grow token by token: saw lengths {sorted(set(lengths))}"
    assert text.strip() and "tok/s" in meta and "16 tokens" in meta, meta
    sid = web.session()
    status, conv = history(web.base_url, sid)
    assert status == 200 and conv["provider"] == "qwen"
    # the page shows the stored answer as Markdown: the same words, without the markup (list numbers, stars)
    assert letter_words(conv["messages"][1]["content"]) == letter_words(text), (conv["messages"][1]["content"], text)
    # the sidebar lists it, newest first
    page.wait_for_selector(f".conv[data-session='{sid}'].active")
    assert page.get_attribute(".conv-list .conv >> nth=0", "data-session") == sid


def test_gigachat_answer_shift_enter_and_blocked(web):
    page = web.open()
    web.model("gigachat")
    page.click("#input")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")  # a new line, not a send
    page.keyboard.type("line two")
    assert page.locator(".msg").count() == 0 and page.input_value("#input") == "line one\nline two"
    page.keyboard.press("Enter")
    status, text, error, meta = web.wait_answer()
    assert status == "ok" and text == "Эхо: line one\nline two", (status, text, error)
    assert page.text_content(".msg-user .msg-body") == "line one\nline two"
    assert "GigaChat:" in page.text_content(".msg-assistant .msg-who")
    assert page.input_value("#input") == ""
    # GigaChat's filter: the answer is shown marked as blocked
    web.ask("[[fault:blacklist]] something forbidden")
    status, text, error, meta = web.wait_answer()
    assert status == "blocked" and text
    assert "Blocked" in page.locator(".msg-assistant .badge").last.text_content()


def test_reload_conversation_from_sidebar_and_continue(web):
    page = web.open()
    word = "quokka" + uuid.uuid4().hex[:8]  # a unique word to search for
    web.model("gigachat")
    web.ask(f"first question about the {word}")
    assert web.wait_answer()[0] == "ok"
    sid = web.session()
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0 and page.evaluate("location.hash") == ""
    # search finds it; clicking reloads the conversation
    page.fill("#search", word)
    page.wait_for_function("document.querySelectorAll('.conv').length === 1")
    item = page.locator(f".conv[data-session='{sid}'] .conv-open")
    web.model("qwen")  # opening the conversation switches back to its model
    item.click()
    page.wait_for_function("document.querySelectorAll('.msg').length === 2")
    assert page.is_checked("input[name=model][value='gigachat']")
    assert page.text_content(".msg-assistant .msg-body") == f"Эхо: first question about the {word}"
    assert web.session() == sid
    web.ask("second question")
    status, text, _, _ = web.wait_answer()
    assert status == "ok" and text == "Эхо: second question"
    assert web.session() == sid
    status, conv = history(web.base_url, sid)
    assert status == 200 and [m["role"] for m in conv["messages"]] == ["user", "assistant"] * 2
    assert conv["messages"][2]["content"] == "second question"
    # export this conversation as JSONL
    with page.expect_download() as dl:
        page.click("#export-chat")
    with open(dl.value.path(), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert len(rows) == 4 and {r["session"] for r in rows} == {sid}
    # delete it from the sidebar (after the browser's confirm)
    page.once("dialog", lambda d: d.accept())
    page.click(f".conv[data-session='{sid}'] .conv-del")
    page.wait_for_selector(f".conv[data-session='{sid}']", state="detached")
    assert history(web.base_url, sid)[0] == 404
    assert page.locator(".msg").count() == 0  # it was the open conversation: the page starts a new one


def test_stop_cancels_the_stream(web, qwen_smol):
    page = web.open()
    web.model("qwen")
    web.set_param("max_tokens", 400)
    web.ask("Write a long story about a brave cat who sails around the world.")
    page.wait_for_function(f"() => ({LAST_ASSISTANT})().querySelector('.msg-body').textContent.length > 20",
                           timeout=30_000)
    assert page.is_visible("#stop") and page.is_hidden("#send")
    page.click("#stop")
    status, text, _, _ = web.wait_answer(timeout=5_000)
    assert status == "cancelled" and len(text) > 20
    assert page.locator(".msg-assistant .badge").last.text_content() == "Stopped"
    assert page.is_visible("#send") and page.is_hidden("#stop")
    sid = web.session()
    deadline = time.monotonic() + 10
    while True:  # the gateway notices the hang-up at its next write, stops Qwen and saves what was said
        conv = history(web.base_url, sid)[1]
        answers = [m for m in conv["messages"] if m["role"] == "assistant"]
        if answers and answers[0]["status"] == "cancelled":
            break
        assert time.monotonic() < deadline, f"the answer was not saved as cancelled: {answers}"
        time.sleep(0.1)
    assert answers[0]["content"] and text.startswith(answers[0]["content"][:20])
    while http("GET", qwen_smol.base_url + "/status")[2]["active_requests"]:  # Qwen stops generating
        assert time.monotonic() < deadline + 5, "qwen_server kept generating after Stop"
        time.sleep(0.1)
    # reloaded from the history, it still shows as stopped
    page.click("#new-chat")
    page.click(f".conv[data-session='{sid}'] .conv-open")
    page.wait_for_selector(".msg-assistant[data-status='cancelled'] .badge-cancelled")


def test_html_in_messages_is_shown_as_text(web):
    page = web.open()
    web.model("gigachat")
    web.ask(XSS)
    status, text, _, _ = web.wait_answer()
    assert status == "ok" and text == "Эхо: " + XSS

    def check():
        page.wait_for_timeout(300)  # an injected <img onerror> would have fired by now
        assert page.text_content(".msg-user .msg-body") == XSS
        assert page.locator("#messages img, #messages script, .conv-list img, .conv-list script").count() == 0
        assert page.evaluate("window.__xss") is None
    check()
    sid = web.session()
    assert page.text_content(f".conv[data-session='{sid}'] .conv-title") == XSS
    page.click("#new-chat")
    page.click(f".conv[data-session='{sid}'] .conv-open")  # from the history, it stays text
    page.wait_for_function("document.querySelectorAll('.msg').length === 2")
    check()
    assert page.text_content(".msg-assistant .msg-body") == "Эхо: " + XSS
    page.reload()  # a fresh page that opens it from the URL
    page.wait_for_selector("body[data-ready='1']", state="attached")
    assert page.locator(".msg").count() == 2
    check()


def test_code_block_has_copy_button(web):
    web.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = web.open()
    web.model("gigachat")
    code = "def greet(name):\n    return f\"Hello, {name}!\"\n\nprint(greet(\"world\"))"
    web.ask(f"Please review this function:\n```python\n{code}\n```\nIs `greet` fine?")
    status, _, _, _ = web.wait_answer()
    assert status == "ok"
    block = page.locator(".msg-assistant .code-block").last
    assert block.locator(".code-lang").text_content() == "python"
    assert block.locator("pre code").text_content() == code
    assert page.locator(".msg-assistant .inline-code").last.text_content() == "greet"
    block.locator(".copy-btn").click()
    page.wait_for_function("[...document.querySelectorAll('.msg-assistant .copy-btn')].pop().textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == code
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "web-page.png"))


def test_api_key_is_asked_once_and_kept(browser, qwen_smol, fake_gigachat, tmp_path):
    gw = start_gateway(qwen_smol.base_url, fake_gigachat, tmp_path, CHAT_API_KEY="s3cret-key",
                       DEFAULT_SYSTEM_PROMPT="Отвечай кратко.")
    web = Web(browser, gw.base_url)
    try:
        page = web.open(ready=False)
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-input", "wrong-key")
        page.click("#key-save")
        # the wrong key is refused by the server: the page asks again, with the server's message
        page.wait_for_function("document.getElementById('key-dialog').open && "
                               "document.getElementById('key-msg').textContent.includes('wrong API key')")
        page.fill("#key-input", "s3cret-key")
        page.click("#key-save")
        page.wait_for_selector("body[data-ready='1']", state="attached")
        assert page.evaluate("sessionStorage.getItem('dualchat.apiKey')") == "s3cret-key"  # this tab only
        assert page.evaluate("localStorage.getItem('dualchat.apiKey')") is None
        assert page.input_value("#system-prompt") == "Отвечай кратко."  # /config, read with the key
        sent = []
        page.on("request", lambda r: r.url.endswith("/gigachat") and sent.append(r.headers.get("authorization")))
        web.model("gigachat")
        web.ask("hello with a key")
        status, text, error, _ = web.wait_answer()
        assert status == "ok" and text == "Эхо: hello with a key", error
        assert sent == ["Bearer s3cret-key"]
        page.wait_for_selector("#qwen-status[data-state='online']")
        page.reload()  # the key is kept: no second prompt
        page.wait_for_selector("body[data-ready='1']", state="attached")
        assert not page.evaluate("document.getElementById('key-dialog').open")
        page.wait_for_selector(".conv-list .conv")
    finally:
        web.close()
        stop_process(gw)


EVIL_PAGE = """<!doctype html><body>
<img src="{gw}/gigachat?q=img-attack">
<script>
  fetch("{gw}/qwen?q=fetch-attack", {{mode: "no-cors"}});
  fetch("{gw}/gigachat?q=fetch-attack-2", {{mode: "no-cors", credentials: "include"}});
</script>
<iframe name="sink"></iframe>
<form id="f" method="post" action="{gw}/gigachat" target="sink"><input name="q" value="form-attack"></form>
<script>document.getElementById("f").submit();</script>
</body>"""


def answered(gw):
    """The statuses /gigachat and /qwen answered, one per request (from the gateway's /metrics)."""
    out = []
    for line in http("GET", gw.base_url + "/metrics")[2].splitlines():
        if line.startswith("chat_http_requests_total{") and ('"/gigachat"' in line or '"/qwen"' in line):
            out += [int(line.split('status="')[1].split('"')[0])] * int(float(line.rsplit(" ", 1)[1]))
    return out


def test_a_page_on_another_site_cannot_make_the_gateway_ask_or_save(browser, fake_gigachat, tmp_path):
    """The red team's attack in a real browser: a page on http://localhost:<port> aims an <img>, no-cors
    fetches and a form at the keyless gateway on http://127.0.0.1:<port>."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import fake_qwen
    qwen = fake_qwen.start()
    gw = start_gateway(qwen.base_url, fake_gigachat, tmp_path)
    html = EVIL_PAGE.format(gw=gw.base_url).encode()

    class Evil(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args):
            pass
    evil = ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    calls = http("GET", fake_gigachat.base_url + "/_debug/stats")[2]["chat_calls"]
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://localhost:{evil.server_address[1]}/")
        page.wait_for_load_state("networkidle")
        deadline = time.monotonic() + 10  # (the browser hides most of these answers from the page: ask the gateway)
        while sorted(answered(gw)) != [403, 403, 403, 415] and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        assert sorted(answered(gw)) == [403, 403, 403, 415]  # (the form's body is not JSON: refused as before)
        assert http("GET", gw.base_url + "/history")[2]["messages"] == []
        assert http("GET", fake_gigachat.base_url + "/_debug/stats")[2]["chat_calls"] == calls
        assert qwen.requests == []
        # the gateway's own page, on the same browser, still asks and saves
        web = Web(browser, gw.base_url)
        web.open()
        web.model("gigachat")
        web.ask("свой вопрос")
        status, text, error, _ = web.wait_answer()
        assert status == "ok" and text == "Эхо: свой вопрос", error
        web.close()
    finally:
        context.close()
        evil.shutdown()
        stop_process(gw)
        qwen.stop()


def test_errors_are_shown_readably(browser, fake_gigachat, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    gw = start_gateway(dead, fake_gigachat, tmp_path, GIGACHAT_CREDENTIALS=None)
    web = Web(browser, gw.base_url)
    try:
        page = web.open()
        # GigaChat has no key: the page opens on Qwen (or on Auto, where the gateway offers it)
        assert not page.is_checked("input[name=model][value='gigachat']")
        page.wait_for_selector("#qwen-status[data-state='offline']")
        assert "Qwen offline" in page.text_content("#qwen-status")
        assert dead in page.get_attribute("#qwen-status", "title")
        web.model("qwen")
        web.ask("hi qwen")
        status, _, error, _ = web.wait_answer()
        assert status == "error" and "QWEN_URL" in error and "[object" not in error, error
        assert page.input_value("#input") == "hi qwen"  # refused before the model: given back to edit
        page.click("#new-chat")
        page.fill("#input", "")
        web.model("gigachat")
        web.ask("hi gigachat")
        status, _, error, _ = web.wait_answer()
        assert status == "error" and "GIGACHAT_CREDENTIALS" in error, error
        assert page.input_value("#input") == "hi gigachat"  # refused before anything was saved
        assert page.locator(".msg-assistant .badge-error").count() == 1
    finally:
        web.close()
        stop_process(gw)


def test_phone_width_layout(browser, gateway):
    web = Web(browser, gateway.base_url, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
              device_scale_factor=2)
    try:
        page = web.open()
        assert page.is_visible("#menu-btn") and not page.is_visible("#sidebar")
        web.model("gigachat")
        web.ask("A long line on a small screen: " + "x" * 120 + "\n```python\nvalues = ["
                + ", ".join(str(i) for i in range(60)) + "]\n```")
        assert web.wait_answer()[0] == "ok"
        assert no_horizontal_scroll(page), "the page scrolls sideways at 390 px"
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTIFACTS, "web-page-phone.png"))
        sid = web.session()
        page.click("#menu-btn")  # the sidebar slides in, and picking a conversation closes it
        page.wait_for_selector("#sidebar", state="visible")
        page.click("#new-chat")
        page.wait_for_selector("#sidebar", state="hidden")
        page.click("#menu-btn")
        page.click(f".conv[data-session='{sid}'] .conv-open")
        page.wait_for_selector("#sidebar", state="hidden")
        page.wait_for_function("document.querySelectorAll('.msg').length === 2")
        page.click("#settings-btn")
        assert page.is_visible("#settings") and no_horizontal_scroll(page)
    finally:
        web.close()


def test_page_runs_under_its_csp(browser, gateway):
    status, headers, _ = http("GET", gateway.base_url + "/", headers={"Accept": "text/html"})
    assert status == 200 and "script-src" not in headers["Content-Security-Policy"]  # default-src 'self' only
    w = Web(browser, gateway.base_url, bypass_csp=False)
    page = w.open()
    page.fill("#input", "hello")
    assert page.locator("#send").is_enabled()
    w.close()  # fails on any CSP violation reported on the console


def test_users_sign_in_see_their_own_and_sign_out(browser, fake_gigachat, tmp_path):
    """Two users in two tabs: each is asked for a key, sees "Signed in as NAME" and only their own
    conversations; the key is kept for the tab (no cookie, not in localStorage); Sign out forgets it."""
    from users_helpers import add_user, ask
    target = str(tmp_path / "history.db")
    gw = start_gateway("http://127.0.0.1:9", fake_gigachat, tmp_path, CHAT_DB=target)
    keys = {name: add_user(target, name) for name in ("alice", "bob")}
    ask(gw.base_url, keys["bob"], "вопрос Боба")
    web = Web(browser, gw.base_url)
    try:
        page = web.open(ready=False)
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-input", keys["alice"])
        page.click("#key-save")
        page.wait_for_selector("body[data-ready='1']", state="attached")
        page.wait_for_selector("#account:not([hidden])")
        assert page.text_content("#account-name") == "alice"
        web.model("gigachat")
        web.ask("вопрос Алисы")
        assert web.wait_answer()[1] == "Эхо: вопрос Алисы"
        page.wait_for_selector(".conv-list .conv")
        titles = page.eval_on_selector_all(".conv-list .conv", "els => els.map(e => e.textContent)")
        assert any("Алисы" in t for t in titles) and not any("Боба" in t for t in titles), titles
        assert web.context.cookies() == [] and page.evaluate("localStorage.getItem('dualchat.apiKey')") is None
        other = web.context.new_page()  # another tab: its own sessionStorage, so it asks again
        other.goto(gw.base_url + "/")
        other.wait_for_selector("#key-dialog[open]")
        other.close()
        page.click("#sign-out")
        page.wait_for_selector("#key-dialog[open]")
        assert page.evaluate("sessionStorage.getItem('dualchat.apiKey')") is None
        assert page.is_hidden("#account")
    finally:
        web.close()
        stop_process(gw)
