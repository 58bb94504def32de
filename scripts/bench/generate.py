"""Answers in words on the Debian FAQ: the memory-first threshold, citations,
ROUGE-L, compounding over a rated stream, and the generator's speed and size.

One real spore (`spore node run`, SPORE_GENERATE=embedded: SmolLM2-135M in
llama.cpp, 1 thread, the daemon's defaults) is taught the FAQ answers as
`spore ingest` chunks them; its 120 questions are split by position as
abstain.py splits them: half A (even) chooses, half B (odd) measures.

1. Threshold. Every question once, `generate: false`, unrated: the calibrated
   confidence of the top memory and whether it is from the question's own
   section. The threshold chosen is the lowest (0.01 grid) at which half A's
   memory answers are right >= PRECISION_GOAL (90 %) there and at every
   higher threshold keeping >= MIN_KEPT asks (with 60 questions a half, the
   plain lowest crossing is one lucky step: 0.55 here, 62 % right on B). The
   best F1 of keeping right answers (recall: right answers kept of all right
   ones; precision: right among those kept) is printed beside it, and the
   rule with the halves swapped. On half B: share answered from memory, their
   accuracy, share sent to generation, for 0, the chosen, the shipped
   (answering.MEMORY_CONFIDENCE) and 1.
2, 3. Half B once more, generation on (the shipped threshold routes), NDJSON
   stream, unrated. Over the asks answered in words: the share whose
   citations include a chunk of the question's own section, beside the
   top-1 of retrieval on the same asks; ROUGE-L F1 (LCS over lowercase word
   tokens) of the generated text and of the top passage against the
   reference: the first REFERENCE_SENTENCES (2) sentences of the right
   section. The FAQ's answers open with the direct answer and the generator is
   told to answer in one or two sentences: like for like. Against the whole
   section (also printed) a long passage wins by length alone.
4. Compounding. A rated stream (Zipf 1.1 over the 120 questions, as
   learning.py): a simulated user rates up a memory answer whose top source
   is the right section (or a generated memory that cited it), a generated
   answer whose citations include it; down otherwise ("I don't know"
   included). Share of asks answered from memory without generating, first
   vs last window; mean ask latency (whole JSON answer) in words vs from memory.
   Default 1,000 asks (windows of 500), not the issue's 2,000: an answer in
   words takes ~5 s here and a third or more of the asks are, so 2,000 asks
   would take ~50 min on this shared 2-core machine; 1,000 fit in ~25.
5. Speed and size. generate_speed.py's "child" rows (the daemon's way) (1 and 2 threads: time
   to first token, tokens/s, encoder embed p50 as the baseline), run before
   the daemon starts; the daemon's RSS and its generator child's, before the
   first generation and after; time to first token through the daemon's stream.

    apt-get install debian-faq
    .venv/bin/python scripts/bench/generate.py [--asks N] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _spore import Spore, faq_pairs, rss_mb
from generate_speed import child as speed_row
from learning import zipf_stream

from cli.documents import chunk_text
from p2pnode.answering import MEMORY_CONFIDENCE

PRECISION_GOAL, MIN_KEPT = 0.90, 5
REFERENCE_SENTENCES = 2
ZIPF, WINDOW = 1.1, 500
SPEED_QUESTIONS, SPEED_TOKENS = 12, 64
WORD = re.compile(r"[a-z0-9]+")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


# --- measures --------------------------------------------------------------------------

def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of lowercase word tokens."""
    a, b = WORD.findall(candidate.lower()), WORD.findall(reference.lower())
    if not a or not b:
        return 0.0
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    lcs = row[-1]
    if not lcs:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def reference(answer: str) -> str:
    return " ".join(SENTENCE_END.split(" ".join(answer.split()))[:REFERENCE_SENTENCES])


def routed_at(conf: np.ndarray, right: np.ndarray, t: float) -> dict[str, float]:
    """Memory when confidence >= t, else to the generator."""
    kept = conf >= t
    n = max(len(conf), 1)
    return {"threshold": t, "memory": float(kept.sum()) / n,
            "memory_right": float((kept & right).sum()) / max(int(kept.sum()), 1),
            "memory_asks": int(kept.sum()), "generated": float((~kept).sum()) / n,
            "right_kept": float((kept & right).sum()) / max(int(right.sum()), 1)}


def choose(conf: np.ndarray, right: np.ndarray) -> dict[str, float]:
    """The lowest threshold (0.01 grid) at which memory answers are right >=
    PRECISION_GOAL, and at every higher one that keeps >= MIN_KEPT asks (one
    lucky step of a 60-question half is not a threshold); and the best F1."""
    grid = [round(k / 100, 2) for k in range(101)]
    valid = [t for t in grid if (conf >= t).sum() >= MIN_KEPT]
    good = {t: float(right[conf >= t].mean()) >= PRECISION_GOAL for t in valid}
    precise = [t for t in valid if all(good[u] for u in valid if u >= t)]

    def f1(t: float) -> float:
        r = routed_at(conf, right, t)
        p, k = r["memory_right"], r["right_kept"]
        return 2 * p * k / (p + k) if p + k else 0.0
    best_f1 = max(grid, key=lambda t: (f1(t), -t))
    return {"precision_rule": min(precise) if precise else 1.0, "f1_rule": best_f1,
            "f1_at_f1_rule": f1(best_f1)}


# --- the daemon ------------------------------------------------------------------------

def teach(spore: Spore, pairs: list[tuple[str, str, str]]) -> dict[str, str]:
    """Every answer chunk, origin "section@i"; returns memory id -> section."""
    chunks = [(sec, c) for sec, _, a in pairs for c in chunk_text(a)]
    section: dict[str, str] = {}
    for i in range(0, len(chunks), 64):
        part = chunks[i:i + 64]
        got = spore.call("POST", "/v1/ingest", {"chunks": [
            {"text": c, "origin": f"{sec}@{i + k}"} for k, (sec, c) in enumerate(part)]})
        section.update(zip(got["ids"], (sec for sec, _ in part), strict=True))
    return section


def tree_rss(pid: int) -> dict[str, float]:
    """RSS of a process and of its descendants (the generator child), MB."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(stat.parent.name))
    todo, below = list(kids.get(pid, [])), 0.0
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            below += rss_mb(p)
        except OSError:
            continue
    own = rss_mb(pid)
    return {"daemon_mb": own, "children_mb": below, "total_mb": own + below}


def streamed(spore: Spore, question: str) -> dict[str, Any]:
    """One ask with stream: true; the sources and done events, the time to the
    first token event and to the end (s)."""
    conn = http.client.HTTPConnection("127.0.0.1", spore.port, timeout=300)
    headers = {"Content-Type": "application/json"}
    token = spore.state / "api.token"
    if token.exists():
        headers["Authorization"] = f"Bearer {token.read_text().strip()}"
    start = time.perf_counter()
    conn.request("POST", "/v1/ask", json.dumps({"question": question, "top": 5,
                                                "stream": True}), headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"ask: {resp.status} {resp.read()[:200]!r}")
    out: dict[str, Any] = {"first_token_s": None}
    while line := resp.readline():
        event = json.loads(line)
        if event["event"] == "token" and out["first_token_s"] is None:
            out["first_token_s"] = time.perf_counter() - start
        elif event["event"] != "token":
            out[event["event"]] = event
    out["total_s"] = time.perf_counter() - start
    conn.close()
    return out


def words_pass(spore: Spore, pairs: list[tuple[str, str, str]], which: list[int],
               section: dict[str, str]) -> list[dict[str, Any]]:
    """Ask `which` once each with generation on (unrated); one row per ask.
    The first answered in words also has the RSS just after it ("rss")."""
    assert spore.proc is not None
    rows: list[dict[str, Any]] = []
    for qi in which:
        sec, question, answer = pairs[qi]
        got = streamed(spore, question)
        sources = got["sources"]["sources"]
        row = {"question": qi, "route": got["sources"]["route"],
               "top1": bool(sources) and section.get(sources[0]["id"]) == sec,
               "in_sources": sec in {section.get(s["id"]) for s in sources},
               "first_token_s": got["first_token_s"], "total_s": got["total_s"]}
        done = got.get("done")
        if row["route"] == "generated" and done is not None:
            cited = done["citations"]
            row.update(text=done["answer"], cited=len(cited),
                       by={c["by"] for c in cited},
                       cites_right=any(section.get(c["id"]) == sec for c in cited),
                       **scores(done["answer"], sources[0]["text"], answer))
            if not any("rss" in r for r in rows):
                row["rss"] = tree_rss(spore.proc.pid)
        elif row["route"] == "generated":
            row["error"] = got.get("error", {}).get("error", "no done event")
        rows.append(row)
    return rows


def scores(text: str, passage: str, answer: str) -> dict[str, float]:
    ref = reference(answer)
    return {"rouge_gen": rouge_l(text, ref), "rouge_top": rouge_l(passage, ref),
            "rouge_gen_section": rouge_l(text, answer),
            "rouge_top_section": rouge_l(passage, answer)}


def words_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    gen = [r for r in rows if "cites_right" in r]

    def mean(key: str) -> float:
        return statistics.fmean(float(r[key]) for r in gen) if gen else math.nan
    return {"asks": len(rows), "generated": len(gen),
            "failed": sum(1 for r in rows if "error" in r),
            "cites_right": mean("cites_right"), "retrieval_top1": mean("top1"),
            "right_in_passages": mean("in_sources"), "mean_cited": mean("cited"),
            "no_citation": sum(1 for r in gen if not r["cited"]),
            "by_words_only": sum(1 for r in gen if r["by"] == {"words"}),
            **{k: mean(k) for k in ("rouge_gen", "rouge_top", "rouge_gen_section",
                                    "rouge_top_section")},
            "first_token_p50_s": statistics.median(r["first_token_s"] for r in gen)
            if gen else math.nan}


# --- the rated stream -----------------------------------------------------------------

def rated_stream(spore: Spore, pairs: list[tuple[str, str, str]], section: dict[str, str],
                 stream: list[int]) -> list[dict[str, Any]]:
    """Each ask whole (JSON), rated as the simulated user would."""
    made: dict[str, set[str]] = {}  # generated memory id -> the sections it cited
    rows = []
    for qi in stream:
        sec, question, answer = pairs[qi]
        start = time.perf_counter()
        got = spore.call("POST", "/v1/ask", {"question": question, "top": 5})
        ms = (time.perf_counter() - start) * 1000
        route, sources = got["route"], got["sources"]
        generated = got.get("generated")
        if route == "generated" and generated is not None:
            cited = {section.get(c["id"]) for c in generated["citations"]} | set().union(
                *(made.get(c["id"], set()) for c in generated["citations"]))
            right = sec in cited
        else:
            top = sources[0]["id"] if sources else ""
            right = route == "memory" and (section.get(top) == sec or sec in made.get(top, ()))
            cited = set()
        if got["answer_id"]:
            said = spore.call("POST", "/v1/rate", {"answer_id": got["answer_id"],
                                                   "vote": "up" if right else "down"})
            if said.get("generated") and said.get("stored"):
                made[said["memory_id"]] = {c for c in cited if c}
        rows.append({"question": qi, "route": route, "right": right, "ms": ms,
                     "failed": "generation_error" in got,
                     "in_sources": sec in {section.get(s["id"]) for s in sources},
                     "confidence": got["confidence"],
                     **(scores(generated["text"], sources[0]["text"], answer)
                        if generated is not None else {})})
    return rows


def stream_summary(rows: list[dict[str, Any]], window: int) -> dict[str, Any]:
    def part(xs: list[dict[str, Any]]) -> dict[str, float]:
        n = max(len(xs), 1)
        return {"memory": sum(r["route"] == "memory" and not r["failed"] for r in xs) / n,
                "generated": sum(r["route"] == "generated" for r in xs) / n,
                "unknown": sum(r["route"] == "unknown" for r in xs) / n,
                "failed": sum(r["failed"] for r in xs) / n,
                "right": sum(r["right"] for r in xs) / n}
    ms = {k: [r["ms"] for r in rows if r["route"] == k and not r["failed"]]
          for k in ("memory", "generated")}
    last_gen = [r for r in rows[-window:] if r["route"] == "generated"]
    return {"asks": len(rows), "window": window, "first": part(rows[:window]),
            "last": part(rows[-window:]), "all": part(rows),
            "distinct": len({r["question"] for r in rows}),
            "latency_ms": {k: {"mean": statistics.fmean(v) if v else math.nan,
                               "p50": statistics.median(v) if v else math.nan,
                               "asks": len(v)} for k, v in ms.items()},
            "last_generated_right_not_in_passages": sum(not r["in_sources"] for r in last_gen),
            "last_generated": len(last_gen),
            "cites_right": statistics.fmean(r["right"] for r in rows
                                            if r["route"] == "generated" and "rouge_gen" in r)
            if any("rouge_gen" in r for r in rows) else math.nan}


# --- the run ---------------------------------------------------------------------------

def speed() -> dict[str, Any]:
    args = ("--questions", str(SPEED_QUESTIONS), "--tokens", str(SPEED_TOKENS))
    # "child": llama.cpp in its own process, as the daemon runs it (EmbeddedProvider)
    return {"rows": [speed_row(str(t), "child", *args) for t in (1, 2)],
            "encoder": speed_row("encoder")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    pairs = faq_pairs()
    half_a = [i for i in range(len(pairs)) if i % 2 == 0]
    half_b = [i for i in range(len(pairs)) if i % 2 == 1]
    out: dict[str, Any] = {"load_start": os.getloadavg(), "questions": len(pairs),
                           "shipped_threshold": MEMORY_CONFIDENCE, "phases_s": {}}
    wall = time.perf_counter()
    out["speed"] = speed() if not args.skip_speed else None
    out["phases_s"]["speed"] = time.perf_counter() - wall
    with tempfile.TemporaryDirectory() as tmp, \
            Spore(Path(tmp), env={"SPORE_GENERATE": "embedded"}) as spore:
        assert spore.proc is not None
        section = teach(spore, pairs)
        out["chunks"] = len(section)
        t = time.perf_counter()
        asks = [spore.call("POST", "/v1/ask", {"question": q, "top": 5, "generate": False})
                for _, q, _ in pairs]
        conf = np.array([a["confidence"] for a in asks])
        right = np.array([bool(a["sources"]) and section.get(a["sources"][0]["id"]) == sec
                          for a, (sec, _, _) in zip(asks, pairs, strict=True)])
        out["abstained"] = sum(bool(a["abstained"]) for a in asks)
        a_idx, b_idx = np.array(half_a), np.array(half_b)
        chosen = choose(conf[a_idx], right[a_idx])
        swapped = choose(conf[b_idx], right[b_idx])["precision_rule"]
        out["threshold"] = {
            "chosen": chosen, "chosen_on_B": swapped,
            "A_at_chosen_on_B": routed_at(conf[a_idx], right[a_idx], swapped),
            "asks": [[float(x), bool(y)] for x, y in zip(conf, right, strict=True)],
            "top1_A": float(right[a_idx].mean()), "top1_B": float(right[b_idx].mean()),
            "B": [routed_at(conf[b_idx], right[b_idx], t) for t in sorted(
                {0.0, chosen["precision_rule"], chosen["f1_rule"], MEMORY_CONFIDENCE, 1.0})],
            "sweep": [{"t": t, "A": routed_at(conf[a_idx], right[a_idx], t),
                       "B": routed_at(conf[b_idx], right[b_idx], t)}
                      for t in (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)]}
        out["phases_s"]["threshold"] = time.perf_counter() - t
        out["rss_before"] = tree_rss(spore.proc.pid)
        t = time.perf_counter()
        rows = words_pass(spore, pairs, half_b, section)
        out["words_B"] = words_summary(rows)
        out["words_B"]["first_ask_first_token_s"] = next(
            (r["first_token_s"] for r in rows if r["first_token_s"] is not None), None)
        out["phases_s"]["words_B"] = time.perf_counter() - t
        out["rss_loaded"] = next((r["rss"] for r in rows if "rss" in r), None)
        out["rss_after_words"] = tree_rss(spore.proc.pid)
        t = time.perf_counter()
        rng = np.random.default_rng(args.seed)
        stream = [q for q, _ in zipf_stream(rng, list(range(len(pairs))), args.asks, ZIPF, 1)]
        srows = rated_stream(spore, pairs, section, stream)
        out["stream"] = stream_summary(srows, min(WINDOW, args.asks // 2))
        out["phases_s"]["stream"] = time.perf_counter() - t
        out["rss_end"] = tree_rss(spore.proc.pid)
        out["generate_status"] = spore.call("GET", "/v1/status")["generate"]["counters"]
    out["load_end"] = os.getloadavg()
    out["wall_s"] = time.perf_counter() - wall
    return out


# --- output ----------------------------------------------------------------------------

def show(r: dict[str, Any]) -> None:
    th, c = r["threshold"], r["threshold"]["chosen"]
    print(f"Debian FAQ: {r['questions']} questions (A even / B odd), {r['chunks']} chunks; "
          f"abstained {r['abstained']}; load average start "
          f"{'/'.join(f'{x:.2f}' for x in r['load_start'])}")
    print(f"\n1. memory-first threshold (calibrated confidence, unrated asks); retrieval "
          f"top-1: A {th['top1_A']:.1%}, B {th['top1_B']:.1%}")
    print(f"   chosen on A: {c['precision_rule']:.2f} (lowest where memory answers are right "
          f">= {PRECISION_GOAL:.0%}, >= {MIN_KEPT} asks); best F1 on A: {c['f1_rule']:.2f} "
          f"(F1 {c['f1_at_f1_rule']:.2f}); shipped {r['shipped_threshold']:.2f}")
    print(f"   {'on half B: threshold':24}{'from memory':>12}{'right':>8}{'to words':>10}"
          f"{'right kept':>12}")
    for x in th["B"]:
        tag = ("chosen" if x["threshold"] == c["precision_rule"] else
               "best F1" if x["threshold"] == c["f1_rule"] else
               "shipped" if x["threshold"] == r["shipped_threshold"] else "")
        print(f"   {x['threshold']:>14.2f} {tag:8}{x['memory']:>12.1%}{x['memory_right']:>8.1%}"
              f"{x['generated']:>10.1%}{x['right_kept']:>12.1%}")
    sw = th["A_at_chosen_on_B"]
    print(f"   halves swapped: chosen on B {th['chosen_on_B']:.2f}; on A from memory "
          f"{sw['memory']:.1%}, right {sw['memory_right']:.1%}")
    print("   sweep t: A from memory/right | B from memory/right: " + "; ".join(
        f"{s['t']:.2f} {s['A']['memory']:.0%}/{s['A']['memory_right']:.0%} | "
        f"{s['B']['memory']:.0%}/{s['B']['memory_right']:.0%}" for s in th["sweep"]))
    w = r["words_B"]
    print(f"\n2. citations, half B asked once with generation on (shipped threshold): "
          f"{w['generated']} of {w['asks']} answered in words ({w['failed']} failed)")
    print(f"   {'':40}{'share':>8}")
    print(f"   {'citations include the right section':40}{w['cites_right']:>8.1%}")
    print(f"   {'retrieval alone: top-1 right (same asks)':40}{w['retrieval_top1']:>8.1%}")
    print(f"   {'right section among the passages given':40}{w['right_in_passages']:>8.1%}")
    print(f"   passages cited per answer {w['mean_cited']:.1f} of <= 5; no citation "
          f"{w['no_citation']}; credited by words only (no marker) {w['by_words_only']}")
    print(f"\n3. ROUGE-L F1 on the same {w['generated']} asks   {'generated':>10}"
          f"{'top passage':>12}")
    print(f"   vs the right section's first {REFERENCE_SENTENCES} sentences"
          f"{w['rouge_gen']:>12.3f}{w['rouge_top']:>12.3f}")
    print(f"   vs the right section, whole         {w['rouge_gen_section']:>12.3f}"
          f"{w['rouge_top_section']:>12.3f}")
    s = r["stream"]
    print(f"\n4. compounding: {s['asks']} rated asks (Zipf {ZIPF}, {s['distinct']} distinct "
          f"questions), windows of {s['window']}")
    print(f"   {'':8}{'from memory':>12}{'in words':>10}{'unknown':>9}{'failed':>8}"
          f"{'right':>8}")
    for k in ("first", "last", "all"):
        x = s[k]
        print(f"   {k:8}{x['memory']:>12.1%}{x['generated']:>10.1%}{x['unknown']:>9.1%}"
              f"{x['failed']:>8.1%}{x['right']:>8.1%}")
    lat = s["latency_ms"]
    ratio = lat["generated"]["mean"] / lat["memory"]["mean"]
    print(f"   ask latency mean (p50): in words {lat['generated']['mean']:.0f} ms "
          f"({lat['generated']['p50']:.0f}, {lat['generated']['asks']} asks), from memory "
          f"{lat['memory']['mean']:.0f} ms ({lat['memory']['p50']:.0f}, "
          f"{lat['memory']['asks']} asks): {ratio:.0f}x saved per ask from memory")
    print(f"   in words in the last window: {s['last_generated']}, of which the right "
          f"section was not among the passages {s['last_generated_right_not_in_passages']}; "
          f"generated answers citing the right section {s['cites_right']:.1%}")
    show_speed(r)
    print(f"\nload average end {'/'.join(f'{x:.2f}' for x in r['load_end'])}; phases "
          + ", ".join(f"{k} {v:.0f} s" for k, v in r["phases_s"].items())
          + f"; wall {r['wall_s']:.0f} s")


def show_speed(r: dict[str, Any]) -> None:
    print("\n5. embedded generator speed (generate_speed.py, child rows: short prompts, "
          "no passages) and size")
    if r["speed"] is not None:
        rows = r["speed"]["rows"]
        print(f"   {'threads':>7}{'cold TTFT':>11}{'TTFT p50':>10}{'tokens/s':>10}")
        for x in rows:
            print(f"   {x['threads']:>7}{x['cold_first_token_s']:>9.2f} s"
                  f"{x['first_token_p50_ms']:>7.0f} ms{x['tokens_per_s']:>10.1f}")
        ttft = rows[1]["first_token_p50_ms"] / rows[0]["first_token_p50_ms"]
        print(f"   2 threads / 1 thread: TTFT {ttft:.2f}x, "
              f"tokens/s {rows[1]['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x; baseline "
              f"encoder embed p50 {r['speed']['encoder']['embed_p50_ms']:.2f} ms")
    w = r["words_B"]
    print(f"   through the daemon (1 thread, NDJSON): first token p50 "
          f"{w['first_token_p50_s']:.2f} s, the first ask (loads the model) "
          f"{w['first_ask_first_token_s'] or math.nan:.2f} s")
    b, a = r["rss_before"], r["rss_loaded"] or r["rss_after_words"]
    w2, e = r["rss_after_words"], r["rss_end"]
    print(f"   RSS daemon + children: before the first generation {b['total_mb']:.0f} MB "
          f"(daemon {b['daemon_mb']:.0f}); after the first answer in words "
          f"{a['total_mb']:.0f} MB (daemon {a['daemon_mb']:.0f}, generator "
          f"{a['children_mb']:.0f}): {a['total_mb'] / b['total_mb']:.2f}x")
    print(f"   generator RSS after {w['generated']} answers in words {w2['children_mb']:.0f} MB,"
          f" after the stream too {e['children_mb']:.0f} MB (daemon {e['daemon_mb']:.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--asks", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2, default=float))
    else:
        show(result)


if __name__ == "__main__":
    main()
