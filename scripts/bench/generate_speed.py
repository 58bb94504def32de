"""Speed and memory of the embedded generator (p2pnode.embedded.EmbeddedProvider).

Each row runs in a fresh process, so its RSS is its own. For 1 and 2 threads:
the process's RSS before and after the model is loaded (and the generator
child's own RSS), the first answer's time to first token (it includes the
start and load), then over real questions (Debian FAQ, else built-in ones) the
median time to first token and decode speed in tokens/s, and the longest the
event loop waited (cold: during the load; warm: during answers). Rows:

    child      the provider as shipped: llama.cpp's server in a child process
               on a loopback port, read by the OpenAI-compatible client
    in-thread  the alternative: xllamacpp in this process, one worker thread,
               tokens handed to the loop by callback

The encoder's embed p50 (one query, same machine, same run) is the baseline.

    .venv/bin/python scripts/bench/generate_speed.py [--json] [--questions N] [--tokens N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402, F401 - loaded already in a daemon: keep its import out of the figures

from p2pnode.embedded import EmbeddedProvider  # noqa: E402
from p2pnode.providers import Chain, Provider  # noqa: E402

FAQ_DIR = Path("/usr/share/doc/debian/FAQ")
FALLBACK = ["How do I install Debian?", "What is a package manager?",
            "How can I upgrade my system?", "Where do I report a bug?"]
SYSTEM = "Answer in one or two sentences."


def questions(count: int) -> list[str]:
    if FAQ_DIR.is_dir():
        sys.path.insert(0, str(Path(__file__).parent))
        from _spore import faq_pairs

        return [q for _, q, _ in faq_pairs()][:count]
    return (FALLBACK * count)[:count]


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def answer(chain: Chain, question: str, tokens: int) -> tuple[float, float, int, float]:
    """(time to first token s, decode tokens/s, pieces, longest loop wait s)."""
    gaps: list[float] = [0.0]
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last - 0.005)
            last = now
    tick = asyncio.create_task(ticker())
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    start = time.perf_counter()
    first = end = start
    pieces = 0
    async for _ in chain.stream(messages, tokens):
        end = time.perf_counter()
        if pieces == 0:
            first = end
        pieces += 1
    done.set()
    await tick
    rate = (pieces - 1) / (end - first) if pieces > 1 and end > first else 0.0
    return first - start, rate, pieces, max(gaps)


class InThread:
    """xllamacpp in this process, generation in one worker thread (for comparison)."""

    kind, where = "embedded", "this device"

    def __init__(self, threads: int) -> None:
        self.name, self.model, self.threads = "in-thread", "smollm2", threads
        self.path = EmbeddedProvider().path
        self.server: Any = None

    def _run(self, request: str, emit: Callable[[str | None], None]) -> None:
        import xllamacpp  # type: ignore[import-untyped]

        def on_chunk(chunk: str) -> bool:
            emit(chunk)
            return False

        if self.server is None:
            params = xllamacpp.CommonParams()
            params.model.path = self.path
            params.n_ctx, params.n_parallel, params.verbosity = 2048, 1, 0
            params.warmup = False
            params.cpuparams.n_threads = params.cpuparams_batch.n_threads = self.threads
            self.server = xllamacpp.Server(params)
        self.server.handle_chat_completions(request, on_chunk)
        emit(None)

    async def stream(self, messages: Sequence[dict[str, str]], max_tokens: int
                     ) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        request = json.dumps({"messages": list(messages), "max_tokens": max_tokens,
                              "stream": True})
        def emit(chunk: str | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)

        task = asyncio.ensure_future(asyncio.to_thread(self._run, request, emit))
        while (chunk := await queue.get()) is not None:
            choices = json.loads(chunk)["choices"]
            if choices and (text := choices[0].get("delta", {}).get("content")):
                yield text
        await task


def measure(threads: int, how: str, count: int, tokens: int) -> dict[str, Any]:
    """In a child process: one row of the table."""
    rss_before = rss_mb()
    provider: Provider = (EmbeddedProvider(threads=threads) if how == "child"
                          else InThread(threads))
    chain = Chain([provider])

    async def run() -> dict[str, Any]:
        cold = await answer(chain, "Hello", 4)
        rss_after = rss_mb()
        pid = getattr(provider, "pid", None)
        generator_rss = rss_mb(pid) if pid else 0.0
        rows = [await answer(chain, q, tokens) for q in questions(count)]
        await chain.close()
        return {"threads": threads, "how": how, "rss_before_mb": rss_before,
                "rss_loaded_mb": rss_after, "generator_rss_mb": generator_rss,
                "cold_first_token_s": cold[0], "cold_loop_wait_ms": cold[3] * 1000,
                "first_token_p50_ms": statistics.median(r[0] for r in rows) * 1000,
                "tokens_per_s": statistics.median(r[1] for r in rows),
                "pieces_mean": statistics.mean(r[2] for r in rows),
                "warm_loop_wait_max_ms": max(r[3] for r in rows) * 1000,
                "questions": len(rows)}
    return asyncio.run(run())


def encoder_p50() -> dict[str, Any]:
    """In a child process: the encoder's p50 for one query (the baseline)."""
    from agents.encoder import load_encoder

    encoder = load_encoder(threads=1)
    for _ in range(20):
        encoder.embed(["How do I install Debian?"])
    runs = []
    for _ in range(200):
        start = time.perf_counter()
        encoder.embed(["How do I install Debian?"])
        runs.append((time.perf_counter() - start) * 1000)
    return {"embed_p50_ms": statistics.median(runs), "rss_mb": rss_mb()}


def child(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", *args],
                          capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def print_table(result: dict[str, Any]) -> None:
    print(f"embedded generator: SmolLM2-135M-Instruct Q4_1 (xllamacpp), "
          f"{result['rows'][0]['questions']} questions, ≤ {result['tokens']} tokens each")
    head = ("threads", "how", "RSS before", "RSS loaded", "cold TTFT", "TTFT p50",
            "tokens/s", "loop wait max")
    print(f"{head[0]:>7} {head[1]:<11}{head[2]:>11}{head[3]:>11}{'+ child':>9}{head[4]:>10}"
          f"{head[5]:>10}{head[6]:>9}{head[7]:>14}")
    for r in result["rows"]:
        print(f"{r['threads']:>7} {r['how']:<11}{r['rss_before_mb']:>8.0f} MB"
              f"{r['rss_loaded_mb']:>8.0f} MB{r['generator_rss_mb']:>6.0f} MB"
              f"{r['cold_first_token_s']:>8.2f} s"
              f"{r['first_token_p50_ms']:>7.0f} ms{r['tokens_per_s']:>9.1f}"
              f"{r['warm_loop_wait_max_ms']:>8.1f} ms (cold {r['cold_loop_wait_ms']:.0f} ms)")
    enc = result["encoder"]
    print(f"baseline: encoder embed p50 {enc['embed_p50_ms']:.2f} ms (1 thread, RSS "
          f"{enc['rss_mb']:.0f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        if args.child[0] == "encoder":
            print(json.dumps(encoder_p50()))
        else:
            threads, how = int(args.child[0]), args.child[1]
            print(json.dumps(measure(threads, how, args.questions, args.tokens)))
        return
    rows = [child(str(t), how, "--questions", str(args.questions), "--tokens",
                  str(args.tokens))
            for how in ("child", "in-thread") for t in (1, 2)]
    result = {"tokens": args.tokens, "rows": rows, "encoder": child("encoder")}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
