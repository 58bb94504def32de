"""The dashboard (p2pnode.dashboard) on a real daemon: its files served with
the security headers and past the API's gate only (a foreign Host, a
cross-site page refused); then the page itself in a real headless browser
(Debian's chromium and chromedriver, selenium from the dev extra): ask,
sources, rate, "I don't know", forget, a hostile memory shown as text, the
token pasted when the API is bound beyond loopback, and a screenshot.

The browser tests are skipped, with the reason, when chromium, chromedriver
or selenium are absent (`apt-get install chromium chromium-driver`,
`pip install -e '.[dev]'`).
"""

from __future__ import annotations

import http.client
import json
import shutil
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from p2pnode.dashboard import FILES, FOLDER
from tests.conftest import Daemon, make_daemon

HOSTILE = ('<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
           '<b onmouseover="window.__pwned=3">hostile</b>')
PARIS = ("The capital of France is Paris.", "What is the capital of France?")
WAIT_S = 20.0  # a deadline for what the page must show, never a pause

Reply = tuple[int, dict[str, str], bytes]


def get(d: Daemon, path: str, headers: dict[str, str] | None = None,
        method: str = "GET", body: bytes | None = None) -> Reply:
    """One request with exactly the headers a test wants (Host included), no token."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    try:
        conn.request(method, path, body=body,
                     headers={"Host": f"127.0.0.1:{d.port}", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def csp(headers: dict[str, str]) -> dict[str, list[str]]:
    policy = headers["Content-Security-Policy"]
    return {name: values for name, *values in (d.split() for d in policy.split(";") if d.strip())}


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon bound beyond loopback: every API route needs the token there."""
    d = make_daemon(tmp_path_factory.mktemp("exposed"))
    d.env["SPORE_HOST"] = "0.0.0.0"
    d.start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.stop()


# -- the files and the gate -----------------------------------------------------------
def test_every_file_carries_the_security_headers(running: Daemon) -> None:
    for path, (_, kind) in FILES.items():
        code, headers, body = get(running, path)
        assert code == 200 and headers["Content-Type"] == f"{kind}; charset=utf-8", path
        policy = csp(headers)
        assert policy["default-src"] == policy["script-src"] == ["'self'"], policy
        assert policy["connect-src"] == policy["style-src"] == ["'self'"], policy
        assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
        assert policy["require-trusted-types-for"] == ["'script'"]
        assert "unsafe" not in headers["Content-Security-Policy"]  # no inline, no eval
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert body == (resources.files("p2pnode") / FOLDER / FILES[path][0]).read_bytes()


class _Page(HTMLParser):
    """What index.html loads, and anything that would run inline."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"
        for name, value in attrs:
            if name in ("src", "href", "action"):
                self.urls.append(value or "")
            if name.startswith("on") or name == "style":
                self.inline.append(f"{tag} {name}")
        if tag == "style":
            self.inline.append("<style>")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"script: {data[:40]}")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


def test_the_page_loads_only_its_own_files_and_no_html_sink(running: Daemon) -> None:
    page = _Page()
    page.feed(get(running, "/")[2].decode())
    assert not page.inline, page.inline
    assert page.urls and all(u.startswith("/") and not u.startswith("//")
                             for u in page.urls), page.urls
    assert {u for u in page.urls if u.startswith("/dashboard/")} <= set(FILES)
    script = get(running, "/dashboard/app.js")[2].decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "Function(", "https://", "srcdoc"):
        assert sink not in script, sink
    assert script.count("http://") == 1  # the SVG namespace, never a fetch
    assert "http://www.w3.org/2000/svg" in script


@pytest.mark.parametrize("headers", [
    {"Host": "evil.example"},
    {"Host": "evil.example:7150"},
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
])
def test_a_foreign_host_or_a_cross_site_page_is_refused(
        running: Daemon, headers: dict[str, str]) -> None:
    for path in FILES:
        code, got, body = get(running, path, headers)
        assert code == 403 and "Content-Security-Policy" not in got, (path, code)
        assert json.loads(body)["error"]


def test_another_port_of_the_same_host_is_another_origin(running: Daemon) -> None:
    code, _, _ = get(running, "/", {"Origin": f"http://127.0.0.1:{running.port + 1}"})
    assert code == 403
    code, _, _ = get(running, "/", {"Origin": f"http://127.0.0.1:{running.port}",
                                    "Sec-Fetch-Site": "same-origin"})
    assert code == 200


def test_the_page_s_origin_still_posts_json_only(running: Daemon) -> None:
    code, _, body = get(running, "/v1/teach", {"Origin": f"http://127.0.0.1:{running.port}",
                                               "Content-Type": "text/plain"},
                        method="POST", body=b'{"text": "from a form"}')
    assert code == 415 and "application/json" in json.loads(body)["error"]


def test_only_the_listed_files_are_served(running: Daemon) -> None:
    for path in ("/dashboard/", "/dashboard/nothing.js", "/dashboard/../api.py",
                 "/dashboard/%2e%2e/api.py", "/index.html", "/dashboard/index.html"):
        code, _, body = get(running, path)
        assert code == 404 and json.loads(body)["error"], path
    assert get(running, "/", method="POST", body=b"{}",
               headers={"Content-Type": "application/json"})[0] == 405
    assert get(running, "/", method="HEAD")[0] == 200


def test_beyond_loopback_the_files_need_no_token_and_the_api_does(exposed: Daemon) -> None:
    code, headers, _ = get(exposed, "/")
    assert code == 200 and headers["X-Frame-Options"] == "DENY"
    for path in ("/v1/status", "/v1/memories", "/v1/peers"):
        code, _, body = get(exposed, path)
        assert code == 401 and "api.token" in json.loads(body)["error"], path
    assert get(exposed, "/", {"Host": "evil.example"})[0] == 403


# -- the page in a real browser ------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    yield chrome
    chrome.quit()


def until(chrome: Any, what: str, condition: Callable[[Any], Any]) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(chrome, WAIT_S, poll_frequency=0.05).until(condition)
    except TimeoutException as exc:
        raise AssertionError(f"the page did not show {what} within {WAIT_S}s") from exc


def texts(chrome: Any, selector: str) -> list[str]:
    return list(chrome.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)",
        selector))


def running_ids(d: Daemon) -> list[str]:
    return [m["id"] for m in d.json("GET", "/v1/memories?limit=1000")["memories"]]


def ask(chrome: Any, question: str) -> None:
    from selenium.webdriver.common.by import By

    box = chrome.find_element(By.ID, "ask-input")
    box.clear()
    box.send_keys(question)
    chrome.find_element(By.ID, "ask-button").click()
    until(chrome, f"the answer to {question!r}", lambda c: c.execute_script(
        "const a = document.getElementById('answer-text');"
        "return a !== null && document.getElementById('ask-button').disabled === false"))


def test_ask_rate_forget_and_hostile_text_in_a_browser(
        running: Daemon, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    paris = running.json("POST", "/v1/teach", {"text": PARIS[0], "question": PARIS[1]})["id"]
    hostile = running.json("POST", "/v1/teach", {"text": HOSTILE})["id"]
    browser.get(running.url + "/")
    until(browser, "the hostile memory in the list",
          lambda c: HOSTILE in texts(c, "#memories .text"))

    ask(browser, PARIS[1])
    assert browser.find_element(By.ID, "answer-text").text == PARIS[0]
    assert texts(browser, "#sources .text")[0] == PARIS[0]
    assert not texts(browser, "#sources .badge.maybe")
    browser.find_element(By.ID, "rate-up").click()
    until(browser, "the vote counted", lambda c: "counted: 1 up" in texts(c, "#rate-result")[0])
    assert running.json("GET", f"/v1/votes/{paris}")["up"] == 1  # the API counted it too

    ask(browser, "What is the airspeed velocity of an unladen swallow?")
    assert browser.find_element(By.ID, "answer-text").text.startswith("I don't know")
    assert len(texts(browser, "#sources .badge.maybe")) == len(texts(browser, "#sources li")) > 0

    # the hostile text is shown as its characters: no element made of it, no script ran
    assert HOSTILE in texts(browser, "#sources .text") + texts(browser, "#memories .text")
    assert browser.execute_script(
        "return document.querySelectorAll('img[src=\"x\"], b[onmouseover], script:not([src])')"
        ".length") == 0
    assert browser.execute_script("return typeof window.__pwned") == "undefined"

    forget = browser.find_element(By.CSS_SELECTOR, f'#memories li[data-id="{hostile}"] .forget')
    forget.click()  # the first click only arms the button
    assert "Really" in forget.text and hostile in running_ids(running)
    forget.click()
    until(browser, "the memory forgotten", lambda c: any(
        "forgotten everywhere" in t for t in texts(c, "#memories li")))
    assert hostile not in running_ids(running)

    until(browser, "a counter drawn over time", lambda c: len(c.find_elements(
        By.CSS_SELECTOR, '.chart[data-series="asks"] polyline')) == 1)
    assert browser.find_elements(By.CSS_SELECTOR, "#lineage > li")  # the agents' tree
    assert texts(browser, "#members td")[1] == "founder"
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # no CSP violation, no script error, no failed load
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    print(f"dashboard screenshot: {shot}")


def test_the_token_is_asked_for_beyond_loopback(exposed: Daemon, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(exposed.url + "/")
    until(browser, "the token form", lambda c: c.find_element(By.ID, "token-form").is_displayed())
    assert browser.find_element(By.ID, "token-state").text == "no token"
    browser.find_element(By.ID, "token-input").send_keys(
        (exposed.state_dir / "api.token").read_text().strip())
    browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    until(browser, "the node's status", lambda c: exposed.json("GET", "/v1/status")["node_id"][
        :12] in " ".join(texts(c, "#node dd")))
    assert not browser.find_element(By.ID, "token-form").is_displayed()
    assert browser.execute_script("return sessionStorage.length") == 1  # this tab only
    assert browser.execute_script("return localStorage.length") == 0
    assert browser.find_element(By.ID, "token-state").text == "token set (this tab)"
