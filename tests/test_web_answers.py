"""The web page, round two, in Debian's headless Chromium against the real gateway and the fake GigaChat
(which echoes the question, so a question written in Markdown comes back as a Markdown answer; its
/_debug/stats counts the requests that reached it). Qwen is not needed here: its URL points nowhere.

Highlighted code, rendered Markdown, hostile Markdown, Regenerate and Edit, the theme toggle, axe-core in
both themes, keyboard-only use, the phone drawer and the message box above the on-screen keyboard.
The README's screenshots (docs/screenshots/*.png) are taken here."""
import os
import uuid

import pytest

from conftest import start_gateway
from helpers import free_port, http, stop_process
from webpage import LAST_ASSISTANT, SCREENSHOTS, Web

CODE = 'def greet(name):\n    # say hello\n    return f"Hello, {name}!"\n\nprint(greet("world"))'
CODE_Q = f"Here is the code:\n\n```python\n{CODE}\n```\n\nAnd after the code, a few more words to stream."
MARKDOWN_Q = ("Languages\n\n## Table of languages\n\n| lang | year |\n|:--|--:|\n| Python | 1991 |\n| Rust | 2015 |\n\n"
              "- first *item*\n- second **item**\n  1. nested `code`\n  2. two\n\n"
              "See [the docs](https://example.com/docs?a=1&b=2) or write to [us](mailto:team@example.com).")
HOSTILE_Q = ('[click me](javascript:window.__xss=1) [upper](JaVaScRiPt:window.__xss=2) '
             '[data](data:text/html,<script>window.__xss=3</script>) [relative](/history/export) '
             '![pic](https://example.com/x.png "t") ![bad](x" onerror="window.__xss=4) '
             '<a href="javascript:window.__xss=5">raw link</a> <img src=x onerror="window.__xss=6">\n\n'
             '<div onmouseover="window.__xss=7">block html</div>\n\n<svg onload="window.__xss=8"></svg>\n\n'
             '<iframe src="javascript:window.__xss=9"></iframe>\n\n<script>window.__xss=10</script>\n\n'
             '[fine](https://example.com/safe)')


@pytest.fixture(scope="module")
def gc_gateway(fake_gigachat, tmp_path_factory):
    """The gateway with GigaChat (the fake) and no reachable Qwen."""
    proc = start_gateway(f"http://127.0.0.1:{free_port()}", fake_gigachat, tmp_path_factory.mktemp("gw-answers"))
    yield proc
    stop_process(proc)


@pytest.fixture
def web(browser, gc_gateway):
    w = Web(browser, gc_gateway.base_url, color_scheme="light")
    yield w
    w.close()


def chat_calls(fake):
    return http("GET", fake.base_url + "/_debug/stats")[2]["chat_calls"]


def history(base_url, sid):
    status, _, body = http("GET", f"{base_url}/history/{sid}")
    assert status == 200, body
    return body


def answer_dom(page):
    """What the last answer's body holds: its links, elements, attributes and text."""
    return page.evaluate(f"""() => {{ const b = ({LAST_ASSISTANT})().querySelector('.msg-body');
        const all = [...b.querySelectorAll('*')];
        return {{links: [...b.querySelectorAll('a')].map(a => [a.textContent, a.getAttribute('href'), a.rel, a.target]),
                 tags: [...new Set(all.map(e => e.tagName.toLowerCase()))],
                 handlers: all.flatMap(e => [...e.attributes].map(a => a.name)).filter(n => n.startsWith('on')),
                 text: b.textContent, xss: window.__xss === undefined ? null : window.__xss}}; }}""")


def answered(web, question):
    """The page after GigaChat answered `question` in a new conversation."""
    page = web.open()
    web.model("gigachat")
    web.ask(question)
    assert web.wait_answer()[0] == "ok"
    return page


def reload(page):
    page.reload()
    page.wait_for_selector("body[data-ready='1']", state="attached")


def tab_to(page, selector, back=False, limit=80):
    """Presses Tab (Shift+Tab) until the focused element matches `selector`: the keyboard only."""
    for _ in range(limit):
        page.keyboard.press("Shift+Tab" if back else "Tab")
        if page.evaluate("s => document.activeElement && document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"{selector} cannot be reached with the Tab key")


def focus_ring(page):
    """The focused element (or, for a visually hidden radio, its label's text) has a visible outline."""
    return page.evaluate("""() => { let e = document.activeElement;
        if (e.type === 'radio') e = e.nextElementSibling;
        const s = getComputedStyle(e);
        return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 1; }""")


# -- Markdown and highlighting ---------------------------------------------------------------------------

def test_code_answer_is_highlighted_while_it_streams_without_rebuilding(web):
    page = web.open()
    web.model("gigachat")
    web.ask("[[fault:sleepstream=0.1]]" + CODE_Q)
    # the block is highlighted as it grows, and keeps its node from its first line to the end of the answer
    page.wait_for_selector(".msg-assistant[data-status='streaming'] .code-block")
    page.evaluate(f"() => ({LAST_ASSISTANT})().querySelector('.code-block').dataset.seen = '1'")
    page.wait_for_selector(".msg-assistant[data-status='streaming'] .code-block[data-seen='1'] .hljs-keyword")
    page.wait_for_function(f"() => ({LAST_ASSISTANT})().querySelector('.msg-body').textContent.includes('a few')")
    assert page.evaluate(f"() => ({LAST_ASSISTANT})().dataset.status") == "streaming"
    status, text, _, _ = web.wait_answer()
    assert status == "ok" and text.endswith("a few more words to stream.")
    block = page.locator(".msg-assistant .code-block").last
    assert block.get_attribute("data-seen") == "1", "the code block was rebuilt as the answer streamed on"
    assert block.locator("pre code").text_content() == CODE  # the text is intact, token spans and all
    assert block.locator(".hljs-keyword").first.text_content() == "def"
    assert block.locator(".hljs-title").first.text_content() == "greet"
    assert block.locator(".hljs-comment").text_content() == "# say hello"
    assert 'f"Hello, {name}!"' in block.locator(".hljs-string").first.text_content()
    colours = page.evaluate("""() => ['.hljs-keyword', '.hljs-string', '.hljs-comment'].map(s =>
        getComputedStyle(document.querySelector('.msg-assistant ' + s)).color)""")
    assert len(set(colours)) == 3, colours  # styled, not grey text
    # from the history, the same
    reload(page)
    assert page.locator(".msg-assistant .code-block .hljs-keyword").first.text_content() == "def"


def test_markdown_table_list_heading_emphasis_and_links(web):
    page = answered(web, MARKDOWN_Q)
    for _ in range(2):  # streamed, then reopened from the history
        body = page.locator(".msg-assistant .msg-body").last
        assert body.locator("h2").text_content() == "Table of languages"
        assert body.locator("table th").all_text_contents() == ["lang", "year"]
        assert body.locator("table tbody tr").count() == 2
        assert body.locator("table tbody td").all_text_contents() == ["Python", "1991", "Rust", "2015"]
        assert body.locator("table tbody td >> nth=1").get_attribute("data-align") == "right"
        assert body.locator("ul > li").count() == 2 and body.locator("ul > li > ol > li").count() == 2
        assert body.locator("ul > li em").text_content() == "item"
        assert body.locator("ul > li strong").text_content() == "item"
        assert body.locator("ol .inline-code").text_content() == "code"
        assert "|" not in body.text_content() and "**" not in body.text_content()
        links = answer_dom(page)["links"]
        assert links == [["the docs", "https://example.com/docs?a=1&b=2", "noopener noreferrer", "_blank"],
                         ["us", "mailto:team@example.com", "noopener noreferrer", "_blank"]]
        # the question stays plain text
        assert page.locator(".msg-user .msg-body").last.text_content() == MARKDOWN_Q
        assert page.locator(".msg-user .msg-body *").count() == 0
        reload(page)


def test_hostile_markdown_is_inert(web):
    page = answered(web, HOSTILE_Q)
    for _ in range(2):  # streamed, then reopened from the history
        page.hover(".msg-assistant .msg-body")
        page.click(".msg-assistant .md-link-off >> nth=0")  # "click me": text, not a link
        page.wait_for_timeout(300)  # an injected <img onerror> or <svg onload> would have fired by now
        dom = answer_dom(page)
        assert dom["xss"] is None and not dom["handlers"], dom
        assert not {"img", "script", "iframe", "svg", "div", "object", "embed"} & set(dom["tags"]), dom["tags"]
        assert [href for _, href, _, _ in dom["links"]] == ["https://example.com/x.png", "https://example.com/safe"]
        assert all(rel == "noopener noreferrer" for _, _, rel, _ in dom["links"])
        # raw HTML is shown as text
        for raw in ('<img src=x onerror="window.__xss=6">', '<a href="javascript:window.__xss=5">',
                    '<div onmouseover="window.__xss=7">block html</div>', "<script>window.__xss=10</script>"):
            assert raw in dom["text"], raw
        assert page.locator(".msg-user .msg-body").last.text_content() == HOSTILE_Q
        assert page.locator(".msg-user .msg-body *").count() == 0
        reload(page)


# -- Regenerate and Edit ---------------------------------------------------------------------------------

def test_regenerate_and_edit_each_ask_the_upstream_once(web, fake_gigachat):
    page = web.open()
    web.model("gigachat")
    word = "wombat" + uuid.uuid4().hex[:6]
    web.ask(f"first about the {word}")
    assert web.wait_answer()[0] == "ok"
    sid = web.session()
    calls = chat_calls(fake_gigachat)
    # Regenerate, clicked twice at once: one new exchange, one request upstream
    page.evaluate("() => { const b = document.querySelector('.msg-assistant .msg-regen'); b.click(); b.click(); }")
    status, text, _, _ = web.wait_answer()
    assert status == "ok" and text == f"Эхо: first about the {word}"
    assert chat_calls(fake_gigachat) == calls + 1
    assert page.locator(".msg").count() == 4 and web.session() == sid
    assert page.locator(".msg-regen").evaluate_all("bs => bs.filter(b => b.offsetParent).length") == 1
    # Edit the first question: Escape cancels without sending ...
    page.locator(".msg-user .msg-edit").first.click()
    page.keyboard.press("Escape")
    assert page.locator(".edit-form").count() == 0 and chat_calls(fake_gigachat) == calls + 1
    # ... Enter sends the edited text as a new exchange; the earlier ones stay
    page.locator(".msg-user .msg-edit").first.click()
    page.fill(".edit-input", f"edited about the {word}, Кириллица")
    page.keyboard.press("Enter")
    status, text, _, _ = web.wait_answer()
    assert status == "ok" and text == f"Эхо: edited about the {word}, Кириллица"
    assert chat_calls(fake_gigachat) == calls + 2
    sent = http("GET", fake_gigachat.base_url + "/_debug/last_request")[2]["body"]["messages"]
    assert sent[-1] == {"role": "user", "content": f"edited about the {word}, Кириллица"}
    assert page.locator(".msg-user .msg-body").first.text_content() == f"first about the {word}"
    conv = history(web.base_url, sid)
    assert [m["content"] for m in conv["messages"] if m["role"] == "user"] == [
        f"first about the {word}", f"first about the {word}", f"edited about the {word}, Кириллица"]
    assert [m["status"] for m in conv["messages"] if m["role"] == "assistant"] == ["ok"] * 3


# -- themes and accessibility ----------------------------------------------------------------------------

def theme(page):
    return page.evaluate("""() => [document.documentElement.dataset.theme,
                                   getComputedStyle(document.body).backgroundColor]""")


def test_theme_toggle_overrides_the_system_and_axe_finds_nothing_serious(browser, fake_gigachat, tmp_path):
    gw = start_gateway(f"http://127.0.0.1:{free_port()}", fake_gigachat, tmp_path)  # a fresh history to show
    web = Web(browser, gw.base_url, color_scheme="light")
    try:
        theme_toggle_and_axe(web)
    finally:
        web.close()
        stop_process(gw)


def theme_toggle_and_axe(web):
    page = web.open()
    assert theme(page) == ["light", "rgb(255, 255, 255)"]  # the system's (light) setting
    web.model("gigachat")
    web.ask("Что такое SSE?")
    web.wait_answer()
    page.click("#new-chat")  # two conversations in the sidebar
    web.ask(MARKDOWN_Q)
    web.wait_answer()
    web.ask("[[fault:blacklist]] off topic")  # a blocked answer, with its badge
    web.wait_answer()
    web.ask(CODE_Q)
    web.wait_answer()
    page.evaluate("document.getElementById('chat').scrollTop = 1e9")  # the code answer, under the table
    assert web.run_axe() == []
    os.makedirs(SCREENSHOTS, exist_ok=True)
    page.screenshot(path=os.path.join(SCREENSHOTS, "light.png"))
    assert page.get_attribute("#theme-btn", "aria-label") == "Switch to the dark theme"
    page.click("#theme-btn")
    assert theme(page) == ["dark", "rgb(23, 25, 29)"]
    page.mouse.move(700, 300)  # no hover on the toggle in the screenshot
    assert web.run_axe() == []
    page.screenshot(path=os.path.join(SCREENSHOTS, "dark.png"))
    reload(page)  # remembered, over the system's light
    assert theme(page)[0] == "dark" and page.get_attribute("#theme-btn", "aria-label") == "Switch to the light theme"
    page.emulate_media(color_scheme="dark")
    page.click("#theme-btn")  # light, over the system's dark
    reload(page)
    assert theme(page) == ["light", "rgb(255, 255, 255)"]


def test_a_new_visitor_gets_the_system_theme(browser, gc_gateway):
    w = Web(browser, gc_gateway.base_url, color_scheme="dark")
    try:
        page = w.open()
        assert theme(page) == ["dark", "rgb(23, 25, 29)"]
        page.emulate_media(color_scheme="light")  # followed while the toggle is not used
        page.wait_for_function("document.documentElement.dataset.theme === 'light'")
    finally:
        w.close()


def test_keyboard_only(web):
    web.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = web.open()
    assert page.evaluate("document.activeElement.id") == "input"
    # switch the model: to the checked radio, then the arrow keys
    tab_to(page, "input[name=model]:checked", back=True)
    assert focus_ring(page)
    for _ in range(3):  # (Auto, GigaChat, Qwen: the arrows go round)
        if page.is_checked("input[name=model][value='gigachat']"):
            break
        page.keyboard.press("ArrowRight")
    assert page.is_checked("input[name=model][value='gigachat']")
    page.keyboard.press("ArrowRight")
    assert page.is_checked("input[name=model][value='qwen']") and page.get_attribute("#input", "placeholder") == "Message Qwen…"
    page.keyboard.press("ArrowLeft")
    assert page.is_checked("input[name=model][value='gigachat']")
    # send with Enter, stop with the Stop button, then with Escape in the message box
    tab_to(page, "#input")
    for stop_key in ("Tab", "Escape"):
        page.keyboard.type("[[fault:sleepstream=0.3]] " + " ".join(f"w{i}" for i in range(60)))
        page.keyboard.press("Enter")
        page.wait_for_function(f"() => ({LAST_ASSISTANT})().querySelector('.msg-body').textContent.length > 10")
        if stop_key == "Tab":
            tab_to(page, "#stop")
            assert focus_ring(page)
            page.keyboard.press("Enter")
        else:
            page.keyboard.press("Escape")
        assert web.wait_answer(timeout=5_000)[0] == "cancelled"
        assert page.evaluate("document.activeElement.id") == "input"
    first = web.session()
    # copy code
    page.keyboard.press("Escape")
    tab_to(page, "#new-chat", back=True)
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "input" and page.locator(".msg").count() == 0
    for i, line in enumerate(CODE_Q.split("\n")):  # Shift+Enter between the lines, Enter sends
        if i:
            page.keyboard.press("Shift+Enter")
        page.keyboard.type(line)
    page.keyboard.press("Enter")
    assert web.wait_answer()[0] == "ok" and page.locator(".msg").count() == 2
    tab_to(page, ".msg-assistant .copy-btn", back=True)
    assert focus_ring(page)
    page.keyboard.press("Enter")
    page.wait_for_function("document.activeElement.textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == CODE
    # open the first conversation from the sidebar, then delete it
    tab_to(page, f".conv[data-session='{first}'] .conv-open", back=True)
    assert focus_ring(page)
    page.keyboard.press("Enter")
    page.wait_for_function(f"location.hash === '#c/{first}'")  # (set once its messages are shown)
    assert page.locator(".msg").count() == 4 and page.evaluate("document.activeElement.id") == "input"
    tab_to(page, f".conv[data-session='{first}'] .conv-del", back=True)
    assert focus_ring(page) and page.is_visible(f".conv[data-session='{first}'] .conv-del")
    page.once("dialog", lambda d: d.accept())  # the browser's own confirm dialog
    page.keyboard.press("Enter")
    page.wait_for_selector(f".conv[data-session='{first}']", state="detached")
    assert http("GET", f"{web.base_url}/history/{first}")[0] == 404


# -- phone width -----------------------------------------------------------------------------------------

def test_phone_drawer_and_the_message_box_above_the_keyboard(browser, gc_gateway):
    w = Web(browser, gc_gateway.base_url, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
            device_scale_factor=2, color_scheme="light")
    try:
        page = w.open()
        w.model("gigachat")
        w.ask(MARKDOWN_Q + "\n\n```python\nvalues = [" + ", ".join(str(i) for i in range(40)) + "]\n```")
        assert w.wait_answer()[0] == "ok"
        assert page.evaluate("""() => { const d = document.documentElement, c = document.getElementById('chat');
            return d.scrollWidth <= d.clientWidth && c.scrollWidth <= c.clientWidth; }"""), "sideways scroll at 390 px"
        assert w.run_axe() == []
        os.makedirs(SCREENSHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SCREENSHOTS, "phone.png"))
        # the sidebar is a drawer: closed, opened by the menu button with the focus inside, closed by Escape
        assert not page.is_visible("#sidebar")
        page.click("#menu-btn")
        page.wait_for_selector("#sidebar", state="visible")
        page.wait_for_function("document.activeElement.id === 'new-chat'")
        assert page.get_attribute("#menu-btn", "aria-expanded") == "true"
        page.keyboard.press("Escape")
        page.wait_for_selector("#sidebar", state="hidden")
        assert page.evaluate("document.activeElement.id") == "menu-btn"
        # the on-screen keyboard takes half the height (interactive-widget=resizes-content): the box stays in view
        page.tap("#input")
        page.set_viewport_size({"width": 390, "height": 420})
        box, send = page.locator("#input").bounding_box(), page.locator("#send").bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= 420 and send["y"] + send["height"] <= 420, (box, send)
        assert page.evaluate("document.activeElement.id") == "input"
    finally:
        w.close()


def test_answers_render_under_the_page_csp(browser, gc_gateway):
    """Markdown, highlighting and the theme work with the CSP enforced (no inline script, no eval)."""
    w = Web(browser, gc_gateway.base_url, bypass_csp=False)
    try:
        page = w.open(ready=False)
        page.wait_for_selector("body[data-ready='1']", state="attached")
        page.click(".model-switch label:has(input[value='gigachat'])")
        w.ask(CODE_Q + "\n\n" + MARKDOWN_Q)
        page.wait_for_selector(".msg-assistant[data-status='ok'] .code-block .hljs-keyword")
        assert page.locator(".msg-assistant table td").count() == 4
        page.click("#theme-btn")
        page.wait_for_selector("html[data-theme='dark']", state="attached")
    finally:
        w.close()  # fails on any CSP violation reported on the console


# -- model auto (POST /ask) ------------------------------------------------------------------------------

def test_auto_choice_posts_to_ask_and_shows_the_route(web, fake_gigachat):
    config = http("GET", web.base_url + "/config")[2]
    if "auto" not in config.get("providers", {}):
        pytest.skip("this gateway has no model auto yet (issue 24: POST /ask, 'auto' in GET /config)")
    page = web.open()
    assert page.is_visible("#auto-choice") and page.is_checked("input[name=model][value='auto']")  # the default
    posted = []
    page.on("request", lambda r: r.method == "POST" and posted.append(r.url.rsplit("/", 1)[1]))
    web.ask("Расскажи о погоде в Москве")  # a general question: GigaChat answers
    status, text, _, _ = web.wait_answer()
    assert status == "ok" and text == "Эхо: Расскажи о погоде в Москве" and posted == ["ask"]
    answer = page.locator(".msg-assistant").last
    assert answer.get_attribute("data-provider") == "gigachat" and "GigaChat" in answer.locator(".msg-who").text_content()
    assert answer.locator(".badge-route").text_content() == "general"
    reload(page)  # the route comes back from the history
    assert page.locator(".msg-assistant .badge-route").last.text_content() == "general"
    web.model("gigachat")  # asked by name: no route, no badge
    web.ask("by name")
    assert web.wait_answer()[0] == "ok" and posted == ["ask", "gigachat"]
    assert page.locator(".msg-assistant").last.locator(".badge-route").is_hidden()
