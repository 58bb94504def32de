"""Does the swarm learn from ratings? A stream of rated asks on the Debian FAQ.

N spores (default 8) are taught the FAQ answers round-robin. Simulated users
on random spores ask questions drawn with recurrence (Zipf over the 120
questions) and rate each answer: up when the top-1 source is from the
question's section, down otherwise. Reported beside the plain encoder (cosine
over all chunks) and TF-IDF, measured in this run, and an offline ceiling (a
learner that walks the encoder's ranking one section per down vote): share
right in the first and last 500 asks (goal >= 90%); do no harm (a fresh
swarm asks half B of the questions, never rated, before and after a rated
stream over half A); the population over time (and a PNG); a diagnosis.

    .venv/bin/python scripts/bench/learning.py [--spores 8] [--asks 2000]
        [--quick] [--skip-harm | --harm-only] [--png /tmp/learning.png] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from _png import Line, Panel, plot, write_png
from _spore import Spore, faq_pairs, percentile
from faq import tfidf_rank

from agents.encoder import load_encoder
from cli.documents import chunk_text
from p2pnode.regions import question_text

# Every spore is on 127.0.0.1: one source IP for the per-IP limits. Errors
# only: placement refusals are counted (census) rather than logged by the hundred.
LOOPBACK = {"SPORE_MAX_CONTACTS_PER_IP": "256", "SPORE_DHT_RATE": "100000",
            "SPORE_GOSSIP_INTERVAL": "0.5", "SPORE_LOG_LEVEL": "error"}
GOAL, ROLLING = 0.90, 100
AFTER_DOWN_GOAL = 0.60  # issue 12: the next ask after a down vote, satisfied
COLONY_COUNTERS = ("born", "divided", "died", "adopted", "placement_failed",
                   "children_placed_remote", "children_kept", "remote_scorers")


@dataclass(frozen=True)
class Corpus:
    chunks: list[tuple[str, str]]  # (section, text); chunk i is taught as "section@i"
    questions: list[tuple[str, str]]  # (section, question)
    plain: list[list[str]]  # per question: sections of the encoder's top 5 chunks
    tfidf: list[list[str]]
    right_rank: list[int]  # per question: rank of its section among the encoder's sections
    qv: np.ndarray  # question embeddings
    cv: np.ndarray  # chunk embeddings


@dataclass(frozen=True)
class Ask:
    question: int
    spore: int
    satisfied: bool
    in_top5: bool  # the right section is among the 5 sources
    top1: str  # origin of the top-1 source
    # Among the 5 sources, did the votes (cosine -> + votes) or the agents
    # (-> final score) change the top-1? +1 to the right one, -1 away from it.
    votes_moved: int
    agents_moved: int
    ask_ms: float
    rate_ms: float
    confidence: float = 0.0  # what the spore said P(top-1 right) was
    at_s: float = 0.0  # from the stream's start


def share(xs: list[bool]) -> float:
    return sum(xs) / max(len(xs), 1)


def load_corpus() -> Corpus:
    pairs = faq_pairs()
    chunks = [(sec, c) for sec, _, a in pairs for c in chunk_text(a)]
    questions = [(sec, q) for sec, q, _ in pairs]
    encoder = load_encoder(threads=2)
    cv = encoder.embed([c for _, c in chunks])
    qv = encoder.embed([question_text(q) or q for _, q in questions])  # as a spore embeds it
    order = np.argsort(-(qv @ cv.T), axis=1)
    ranks = [list(dict.fromkeys(chunks[i][0] for i in row)).index(sec)
             for (sec, _), row in zip(questions, order, strict=True)]
    lex = tfidf_rank([c for _, c in chunks], [q for _, q in questions])
    return Corpus(chunks, questions, [[chunks[i][0] for i in row[:5]] for row in order],
                  [[chunks[i][0] for i in r] for r in lex], ranks, qv, cv)


# --- the swarm ------------------------------------------------------------------------

@contextlib.contextmanager
def swarm(tmp: Path, n: int, puzzle_bits: int = 0) -> Iterator[list[Spore]]:
    """n spores of an open swarm, bootstrapped from the first (which founds
    it); the others hold its DNA file (and pay its puzzle at their first
    start); all stopped on exit. With no puzzle (the default) identities are
    free: as before membership, every voice weighs 1."""
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(Spore(tmp / "s0", env=LOOPBACK).found(
            "bench", puzzle_bits=puzzle_bits))
        dna = (tmp / "s0" / "dna.bin").read_bytes()
        spores = [first]
        for i in range(1, n):
            state = tmp / f"s{i}"
            state.mkdir(parents=True)
            (state / "dna.bin").write_bytes(dna)
            spores.append(stack.enter_context(Spore(state, env={
                **LOOPBACK, "SPORE_PEERS": f"127.0.0.1:{first.dht_port}"})))
        yield spores


def teach(spores: list[Spore], chunks: list[tuple[str, str]]) -> float:
    """Chunk i goes to spore i mod n; waits until every put is published."""
    t = time.perf_counter()
    mine: dict[int, list[dict[str, str]]] = {}
    for i, (sec, text) in enumerate(chunks):
        mine.setdefault(i % len(spores), []).append({"text": text, "origin": f"{sec}@{i}"})
    for k, items in mine.items():  # one call a spore (the API takes 256 chunks)
        spores[k].call("POST", "/v1/ingest", {"chunks": items})
    puts = 1 + int(spores[0].call("GET", "/v1/dna")["lsh"]["tables"])  # content + entries
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        published = sum(s.call("GET", "/v1/status")["dht"]["counters"]["published"]
                        for s in spores)
        if published >= len(chunks) * puts:
            break
        time.sleep(0.5)
    return time.perf_counter() - t


def census(spores: list[Spore]) -> dict[str, Any]:
    """The population as the spores report it (colony counters summed)."""
    live: list[float] = []
    generations, counters = [0], Counter[str]()
    for s in spores:
        got = s.call("GET", "/v1/agents")
        live.extend(a["fitness"] for a in got["here"])
        generations += [a["generation"] for a in got["registry"]]
        counters.update({k: v for k, v in got["counters"].items() if k in COLONY_COUNTERS})
    return {"agents": len(live), "max_generation": max(generations),
            "mean_fitness": float(np.mean(live)) if live else 0.0, **counters}


def learners(spores: list[Spore]) -> dict[str, list[Any]]:
    """What each spore's learner (agents.learner) earned: its weights, the
    trainings and the pairs of the last (empty before the learner existed)."""
    got = [s.call("GET", "/v1/status").get("learner") or {} for s in spores]
    return {k: [g.get(k) for g in got] for k in ("lam", "mu", "trainings", "pairs",
                                                 "held_out", "exposed", "held_out_right")}


def moved(secs: list[str], before: list[float], after: list[float], right: str) -> int:
    return int(secs[int(np.argmax(after))] == right) - int(secs[int(np.argmax(before))] == right)


def attribution(corpus: Corpus, qi: int, sources: list[dict[str, Any]], weight: float
                ) -> tuple[int, int]:
    """Undo the agents' term (score += w * (say - cos)), then the votes', with
    our own embeddings for the cosine (the spore's index is int8: ~1e-3 off)."""
    if not sources:
        return 0, 0
    sec = corpus.questions[qi][0]
    secs = [s["origin"].split("@")[0] for s in sources]
    cos = [float(corpus.qv[qi] @ corpus.cv[int(s["origin"].split("@")[1])]) for s in sources]
    final = [float(s["score"]) for s in sources]
    voted = [f - weight * (s["agents"] - c) if "agents" in s else f
             for f, s, c in zip(final, sources, cos, strict=True)]
    return moved(secs, cos, voted, sec), moved(secs, voted, final, sec)


def ask(spore: Spore, corpus: Corpus, qi: int, rate: bool) -> Ask:
    sec, question = corpus.questions[qi]
    t = time.perf_counter()
    got = spore.call("POST", "/v1/ask", {"question": question, "top": 5})
    ask_ms = (time.perf_counter() - t) * 1000
    sources = got["sources"]
    secs = [s["origin"].split("@")[0] for s in sources]
    ok = secs[:1] == [sec]
    rate_ms = 0.0
    if rate and got["answer_id"]:
        t = time.perf_counter()
        spore.call("POST", "/v1/rate", {"answer_id": got["answer_id"],
                                        "vote": "up" if ok else "down"})
        rate_ms = (time.perf_counter() - t) * 1000
    return Ask(qi, -1, ok, sec in secs, sources[0]["origin"] if sources else "",
               *attribution(corpus, qi, sources, float(got.get("agents_weight", 0.0))),
               ask_ms, rate_ms, float(got["confidence"]))


def zipf_stream(rng: np.random.Generator, pool: list[int], asks: int, exponent: float,
                spores: int) -> list[tuple[int, int]]:
    """(question, spore) per ask: questions by Zipf over a random rank order."""
    ranked = rng.permutation(pool)
    p = np.arange(1, len(ranked) + 1, dtype=float) ** -exponent
    qs = rng.choice(ranked, size=asks, p=p / p.sum())
    return [(int(q), int(s)) for q, s in zip(qs, rng.integers(spores, size=asks), strict=True)]


def run_stream(spores: list[Spore], corpus: Corpus, stream: list[tuple[int, int]],
               poll_every: int = 100) -> tuple[list[Ask], list[dict[str, Any]]]:
    asks, series, start = [], [{"ask": 0, **census(spores)}], time.perf_counter()
    for k, (qi, si) in enumerate(stream, 1):
        at = time.perf_counter() - start
        asks.append(replace(ask(spores[si], corpus, qi, rate=True), spore=si, at_s=at))
        if k % poll_every == 0 or k == len(stream):
            series.append({"ask": k, **census(spores)})
    return asks, series


def sweep(spores: list[Spore], corpus: Corpus, qs: list[int], where: list[int]
          ) -> tuple[float, float, list[Ask]]:
    """Ask each question once (never rated): top-1, top-5 and every ask."""
    got = [ask(spores[s], corpus, q, rate=False) for q, s in zip(qs, where, strict=True)]
    return share([a.satisfied for a in got]), share([a.in_top5 for a in got]), got


def refusals(spores: list[Spore]) -> dict[str, int]:
    """Every refusal counted between these honest spores, summed by counter:
    peer requests and gossip items refused (either side), agent genomes
    refused, and agent traffic that failed. Each should be 0."""
    out: dict[str, int] = {}
    for s in spores:
        st = s.call("GET", "/v1/status")
        counters = {**(st.get("gossip") or {}).get("counters", {}),
                    **(st.get("agents") or {}).get("counters", {})}
        for k, n in counters.items():
            if "refused" in k or k.startswith("genome_rejected") or k in (
                    "placement_failed", "remote_score_failed", "feedback_undeliverable"):
                out[k] = out.get(k, 0) + int(n)
    return {k: n for k, n in sorted(out.items()) if n}


def votes_spread(spores: list[Spore], cast: int) -> dict[str, Any]:
    """Vote entries stored per spore once gossip had a moment (equal: converged);
    and for every memory a spore holds, whether the votes its local ranking
    uses (/v1/memories/{id}) are all those gossip brought (/v1/votes/{id})."""
    time.sleep(3.0)
    stats = [s.call("GET", "/v1/status") for s in spores]
    voted = short = short_adopted = 0
    for s, st in zip(spores, stats, strict=True):
        for m in s.call("GET", "/v1/memories?limit=1000")["memories"]:
            known = s.call("GET", f"/v1/votes/{m['id']}")
            used = s.call("GET", f"/v1/memories/{m['id']}")
            voted += known["up"] + known["down"] > 0
            differs = (used["up"], used["down"]) != (known["up"], known["down"])
            short += differs
            short_adopted += differs and m["author"] != st["public_key"]
    return {"cast": cast, "stored": [st["votes"] for st in stats],
            "by_gossip": [st["counters"].get("gossip_votes", 0) for st in stats],
            "memories": [st["memories"] for st in stats], "held_with_votes": voted,
            "ranked_without_some": short, "of_which_adopted": short_adopted}


# --- what the numbers mean -----------------------------------------------------------

def ideal_try_next(stream: list[tuple[int, int]], corpus: Corpus) -> list[bool]:
    """The k-th ask of a question is right once k >= the rank of its section
    in the encoder's order (one new section per down vote, then kept)."""
    seen: Counter[int] = Counter()
    out: list[bool] = []
    for q, _ in stream:
        out.append(seen[q] >= corpus.right_rank[q])
        seen[q] += 1
    return out


def switching(asks: list[Ask]) -> dict[str, dict[str, float]]:
    """The next ask of a question after a down vote: a new top-1? After an up
    vote: the same? By where (the voter's spore or another) and when (within
    2 s of the vote, before gossip may have spread it, or later)."""
    last: dict[int, Ask] = {}
    tally: dict[str, list[int]] = {}  # key -> [as hoped, asks]
    for a in asks:
        prev, last[a.question] = last.get(a.question), a
        if prev is None:
            continue
        vote = "up" if prev.satisfied else "down"
        where = "same" if a.spore == prev.spore else "other"
        when = "soon" if a.at_s - prev.at_s < 2.0 else "later"
        hoped = (a.top1 == prev.top1) == prev.satisfied
        for key in (vote, f"{vote} {where} {when}"):
            got = tally.setdefault(key, [0, 0, 0])
            got[0], got[1], got[2] = got[0] + hoped, got[1] + 1, got[2] + a.satisfied
    return {k: {"as_hoped": v[0] / v[1], "n": v[1], "satisfied": v[2] / v[1]}
            for k, v in sorted(tally.items())}


def after_down(right: list[bool], stream: list[tuple[int, int]]) -> dict[str, float]:
    """The issue's measure: of the asks that follow a down vote on the same
    question (the previous ask of it was wrong), the share right, for any
    line of answers (the swarm's, or the ideal try-next's: its ceiling)."""
    last: dict[int, bool] = {}
    after: list[bool] = []
    for ok, (q, _) in zip(right, stream, strict=True):
        if q in last and not last[q]:
            after.append(ok)
        last[q] = ok
    return {"satisfied": share(after), "n": len(after)}


def most_asked(asks: list[Ask], corpus: Corpus, window: int, n: int = 8) -> list[dict[str, Any]]:
    tail, out = asks[-window:], []
    for q, count in Counter(a.question for a in asks).most_common(n):
        mine = [a for a in asks if a.question == q]
        out.append({"question": corpus.questions[q][1][:56], "share": count / len(asks),
                    "encoder_rank": corpus.right_rank[q],
                    "right": share([a.satisfied for a in mine]),
                    "right_last": share([a.satisfied for a in tail if a.question == q]),
                    "in_sources": share([a.in_top5 for a in mine]),
                    "spores_right": len({a.spore for a in mine if a.satisfied})})
    return out


CAL_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def calibration(asks: list[Ask]) -> dict[str, Any]:
    """Is the confidence a probability? Brier score against the constant that
    knew the share right in hindsight, expected calibration error, and the
    reliability table (asks per confidence bin, share right, mean confidence)."""
    conf = np.asarray([a.confidence for a in asks])
    right = np.asarray([a.satisfied for a in asks], dtype=float)
    if not len(asks):
        return {"brier": 0.0, "brier_constant": 0.0, "ece": 0.0, "bins": []}
    bins, ece = [], 0.0
    for lo, hi in itertools.pairwise(CAL_BINS):
        mask = (conf >= lo) & ((conf < hi) | (hi == CAL_BINS[-1]))
        if mask.any():
            gap = abs(float(right[mask].mean()) - float(conf[mask].mean()))
            ece += gap * int(mask.sum()) / len(asks)
            bins.append({"from": lo, "to": hi, "asks": int(mask.sum()),
                         "right": float(right[mask].mean()), "said": float(conf[mask].mean())})
    return {"brier": float(np.mean((conf - right) ** 2)),
            "brier_constant": float(np.mean((right.mean() - right) ** 2)),
            "ece": ece, "bins": bins}


def diagnose(asks: list[Ask], corpus: Corpus, window: int) -> dict[str, Any]:
    tail = asks[-window:]
    fails = [a for a in tail if not a.satisfied]
    early = {a.question for a in asks[:-window]}
    return {
        "not_in_sources": share([not a.in_top5 for a in asks]),
        "not_in_sources_last": share([not a.in_top5 for a in tail]),
        "last_fails": len(fails),
        "last_fails_not_in_sources": share([not a.in_top5 for a in fails]),
        "last_fails_rank_median": float(np.median([corpus.right_rank[a.question]
                                                   for a in fails])) if fails else 0.0,
        "last_new_questions": len({a.question for a in tail} - early),
        "votes_to_right": sum(a.votes_moved > 0 for a in asks),
        "votes_from_right": sum(a.votes_moved < 0 for a in asks),
        "agents_to_right": sum(a.agents_moved > 0 for a in asks),
        "agents_from_right": sum(a.agents_moved < 0 for a in asks),
        "after_vote": switching(asks),
        "most_asked": most_asked(asks, corpus, window),
    }


# --- the two experiments ---------------------------------------------------------------

def satisfaction_run(tmp: Path, corpus: Corpus, args: argparse.Namespace,
                     rng: np.random.Generator) -> dict[str, Any]:
    nq = len(corpus.questions)
    stream = zipf_stream(rng, list(range(nq)), args.asks, args.zipf, args.spores)
    with swarm(tmp / "stream", args.spores) as spores:
        publish_s = teach(spores, corpus.chunks)
        t = time.perf_counter()
        asks, series = run_stream(spores, corpus, stream)
        stream_s = time.perf_counter() - t
        votes = votes_spread(spores, sum(1 for a in asks if a.rate_ms > 0))
        learnt = learners(spores)
        where = [int(s) for s in rng.integers(args.spores, size=nq)]
        top1, top5, swept = sweep(spores, corpus, list(range(nq)), where)
        refused = refusals(spores)
    per_q = [a.satisfied for a in swept]
    asked = {a.question for a in asks}
    return {"publish_s": publish_s, "stream_s": stream_s, "asks": asks, "series": series,
            "learner": learnt,
            "stream": stream, "votes": votes, "refusals": refused,
            "sweep_top1": top1, "sweep_top5": top5,
            "sweep_asked_top1": share([ok for q, ok in enumerate(per_q) if q in asked]),
            "sweep_never_asked_top1": share([ok for q, ok in enumerate(per_q)
                                             if q not in asked]),
            "sweep_never_asked": nq - len(asked)}


def harm_run(tmp: Path, corpus: Corpus, args: argparse.Namespace,
             rng: np.random.Generator) -> dict[str, Any]:
    order = [int(q) for q in rng.permutation(len(corpus.questions))]
    a_half, b_half = order[: len(order) // 2], order[len(order) // 2:]
    where = [int(s) for s in rng.integers(args.spores, size=len(b_half))]
    stream = zipf_stream(rng, a_half, args.harm_asks, args.zipf, args.spores)
    with swarm(tmp / "harm", args.spores) as spores:
        teach(spores, corpus.chunks)
        b1, b5, before_asks = sweep(spores, corpus, b_half, where)
        asks, _ = run_stream(spores, corpus, stream, poll_every=len(stream))
        a1, a5, after_asks = sweep(spores, corpus, b_half, where)
        refused = refusals(spores)
        learnt = learners(spores)
    before = [a.satisfied for a in before_asks]
    after = [a.satisfied for a in after_asks]
    secs = [(q, corpus.questions[q][0]) for q in b_half]
    base = {f"{name}_top{k}": share([s in ranks[q][:k] for q, s in secs])
            for name, ranks in (("plain", corpus.plain), ("tfidf", corpus.tfidf)) for k in (1, 5)}
    return {"rated_asks": len(stream), "unseen": len(b_half), "refusals": refused,
            "learner": learnt,
            "rated_last": share([a.satisfied for a in asks[-args.window:]]),
            "before_top1": b1, "before_top5": b5, "after_top1": a1, "after_top5": a5,
            "turned_right": sum(not x and y for x, y in zip(before, after, strict=True)),
            "turned_wrong": sum(x and not y for x, y in zip(before, after, strict=True)),
            # Among the 5 sources of the unseen asks after the stream: did the
            # votes or the agents change the top-1 (+1 to the right one, -1 away)?
            "after_votes_moved": [a.votes_moved for a in after_asks if a.votes_moved],
            "after_agents_moved": [a.agents_moved for a in after_asks if a.agents_moved],
            "changed_top1": sum(x.top1 != y.top1 for x, y in
                                zip(before_asks, after_asks, strict=True)),
            "turned_wrong_detail": [
                {"question": corpus.questions[q][1][:60], "before": x.top1, "after": y.top1,
                 "cos_before": float(corpus.qv[q] @ corpus.cv[int(x.top1.split("@")[1])]),
                 "cos_after": float(corpus.qv[q] @ corpus.cv[int(y.top1.split("@")[1])]),
                 "nearest_rated": float(max(corpus.qv[q] @ corpus.qv[a] for a in a_half))}
                for q, x, y in zip(b_half, before_asks, after_asks, strict=True)
                if x.satisfied and not y.satisfied],
            **base}


# --- output ----------------------------------------------------------------------------

def rolling(xs: list[bool], width: int = ROLLING) -> tuple[list[float], list[float]]:
    c = np.cumsum([0.0, *map(float, xs)])
    idx = range(width, len(xs) + 1)
    return [float(i) for i in idx], [float(c[i] - c[i - width]) / width for i in idx]


def draw(path: Path, asks: list[Ask], series: list[dict[str, Any]], corpus: Corpus) -> None:
    """Top: satisfaction (rolling 100) of the swarm (blue) and the plain encoder
    (grey), the goal in red. Bottom: mean fitness of the live agents (green)."""
    plain = [corpus.plain[a.question][0] == corpus.questions[a.question][0] for a in asks]
    fx, fy = [float(p["ask"]) for p in series], [p["mean_fitness"] for p in series]
    lo, hi = min([*fy, 0.0]), max([*fy, 0.0])
    panels = [Panel([Line(*rolling(plain), (150, 150, 150)),
                     Line(*rolling([a.satisfied for a in asks]), (31, 119, 180))],
                    (0.0, 1.0), [(GOAL, (214, 39, 40))]),
              Panel([Line(fx, fy, (44, 160, 44))], (lo, hi if hi > lo else lo + 1.0),
                    [(0.0, (120, 120, 120))])]
    write_png(path, plot(panels, float(len(asks))))


def summarize(corpus: Corpus, sat: dict[str, Any], harm: dict[str, Any] | None,
              args: argparse.Namespace) -> dict[str, Any]:
    asks, stream, w = sat["asks"], sat["stream"], args.window
    lines = {"swarm": [a.satisfied for a in asks],
             "plain": [corpus.plain[q][0] == corpus.questions[q][0] for q, _ in stream],
             "tfidf": [corpus.tfidf[q][0] == corpus.questions[q][0] for q, _ in stream],
             "ideal_try_next": ideal_try_next(stream, corpus)}
    ms = {k: [getattr(a, k) for a in asks] for k in ("ask_ms", "rate_ms")}
    return {
        "spores": args.spores, "chunks": len(corpus.chunks), "questions": len(corpus.questions),
        "asks": len(asks), "zipf": args.zipf, "seed": args.seed, "window": w,
        "distinct_asked": len({a.question for a in asks}),
        "satisfaction": {k: {"first": share(v[:w]), "last": share(v[-w:])}
                         for k, v in lines.items()},
        "after_down": {k: after_down(lines[k], stream) for k in ("swarm", "ideal_try_next")},
        "goal_met": share(lines["swarm"][-w:]) >= GOAL,
        "harm": harm, "series": sat["series"],
        "calibration": {"all": calibration(asks), "first": calibration(asks[:w]),
                        "last": calibration(asks[-w:])},
        "latency_ms": {f"{k[:-3]}_p{p}": percentile(v, p) for k, v in ms.items()
                       for p in (50, 99)},
        "diagnosis": {**diagnose(asks, corpus, w), "votes": sat["votes"],
                      **{k: sat[k] for k in ("sweep_top1", "sweep_top5", "sweep_asked_top1",
                                             "sweep_never_asked_top1", "sweep_never_asked")}},
        "publish_s": sat["publish_s"], "stream_s": sat["stream_s"], "learner": sat["learner"],
        "refusals": sat["refusals"],
    }


def show_harm(h: dict[str, Any], w: int) -> None:
    print(f"do no harm: {h['rated_asks']} rated asks on half A (last {w}: "
          f"{h['rated_last']:.1%} right); half B ({h['unseen']} questions) never rated")
    print(f"  {'':26} {'top-1':>9} {'top-5':>9}")
    for name, k in (("swarm before", "before"), ("swarm after", "after"),
                    ("plain encoder", "plain"), ("TF-IDF", "tfidf")):
        print(f"  {name:26} {h[k + '_top1']:>9.1%} {h[k + '_top5']:>9.1%}")
    delta = h["after_top1"] - h["before_top1"]
    verdict = "helped" if delta > 0 else "hurt" if delta < 0 else "did not change"
    print(f"  learning {verdict} unseen questions: top-1 {delta:+.1%} ({h['turned_right']} "
          f"turned right, {h['turned_wrong']} turned wrong); after - plain encoder: "
          f"{h['after_top1'] - h['plain_top1']:+.1%} top-1, "
          f"{h['after_top5'] - h['plain_top5']:+.1%} top-5")
    print(f"  top-1 changed for {h['changed_top1']} unseen questions; among their 5 sources the "
          f"votes moved it {h['after_votes_moved']}, the agents {h['after_agents_moved']} "
          "(+1 to the right one, -1 away)")
    show_learner(h["learner"], "after half A")
    for d in h["turned_wrong_detail"]:
        print(f"    turned wrong: {d['question']!r}: {d['before']} (cos {d['cos_before']:.3f}) -> "
              f"{d['after']} (cos {d['cos_after']:.3f}); nearest rated question at cos "
              f"{d['nearest_rated']:.2f}")


def show_learner(x: dict[str, list[Any]], when: str) -> None:
    print(f"  learner {when}, per spore: lam {x['lam']}, mu {x['mu']}, trainings "
          f"{x['trainings']}, pairs {x['pairs']}")
    if x.get("held_out"):
        right = [f"{h['cosine']}->{h['learnt']}" for h in x["held_out_right"] if h]
        print(f"    validation per spore: held-out questions {x['held_out']}, their answer taken "
              f"elsewhere {x['exposed']}, right (cosine->learnt) {right}")


def show_calibration(c: dict[str, Any], w: int) -> None:
    print("confidence (the spore's P(top-1 right)) against what the ratings said:")
    for key, name in (("all", "all asks"), ("first", f"first {w}"), ("last", f"last {w}")):
        x = c[key]
        print(f"  {name:10} Brier {x['brier']:.3f} (constant {x['brier_constant']:.3f}), "
              f"ECE {x['ece']:.3f}")
    print("  reliability, all asks: " + "; ".join(
        f"{b['from']:.1f}-{b['to']:.1f}: {b['asks']} asks, said {b['said']:.0%}, right "
        f"{b['right']:.0%}" for b in c["all"]["bins"]))


def show_diagnosis(d: dict[str, Any], w: int) -> None:
    v = d["votes"]
    print("diagnosis:")
    print(f"  right section not among the 5 sources: {d['not_in_sources']:.1%} of asks (last "
          f"{w}: {d['not_in_sources_last']:.1%}); so for {d['last_fails_not_in_sources']:.0%} "
          f"of the {d['last_fails']} wrong in the last {w} (median encoder rank of their right "
          f"section {d['last_fails_rank_median']:.0f}; {d['last_new_questions']} questions "
          f"new in the last {w})")
    print("  next ask of a question after a down vote: new top-1 / after an up vote: same "
          "top-1 (on the voter's or another spore, within 2 s or later):")
    for vote in ("down", "up"):
        parts = [f"{k.removeprefix(vote).strip() or 'all'} {x['as_hoped']:.0%} of {x['n']}"
                 for k, x in d["after_vote"].items() if k.split()[0] == vote]
        print(f"    {vote:4}: " + ", ".join(parts))
    print(f"  among the 5 sources, votes turned the top-1 right {d['votes_to_right']} times, "
          f"wrong {d['votes_from_right']}; the agents turned it right {d['agents_to_right']}, "
          f"wrong {d['agents_from_right']}")
    print(f"  votes cast {v['cast']}; vote entries stored per spore {v['stored']}; received "
          f"by gossip {v['by_gossip']}; memories per spore (taught + adopted) {v['memories']}")
    print(f"  held memories with votes {v['held_with_votes']}, ranked locally without some of them "
          f"{v['ranked_without_some']} ({v['of_which_adopted']} adopted from the swarm)")
    print("  most asked: share, encoder rank of the right section, right (all / last "
          f"{w}), right among the sources, spores that got it right once:")
    for m in d["most_asked"]:
        print(f"    {m['share']:5.1%}  rank {m['encoder_rank']:2d}  {m['right']:6.1%} / "
              f"{m['right_last']:6.1%}  {m['in_sources']:6.1%}  {m['spores_right']}  "
              f"{m['question']}")
    print(f"  after the stream, each question once, unrated: top-1 {d['sweep_top1']:.1%}, "
          f"top-5 {d['sweep_top5']:.1%}; asked in the stream {d['sweep_asked_top1']:.1%}, "
          f"never asked ({d['sweep_never_asked']}) {d['sweep_never_asked_top1']:.1%}")


def show(r: dict[str, Any]) -> None:
    w, s = r["window"], r["satisfaction"]
    print(f"{r['spores']} spores, Debian FAQ: {r['chunks']} answer chunks, {r['questions']} "
          f"questions; {r['asks']} rated asks (Zipf {r['zipf']}, {r['distinct_asked']} distinct "
          f"questions), seed {r['seed']}")
    print(f"satisfaction (top-1 right)   first {w:<4}  last {w}")
    for key, name in (("swarm", "swarm (learning)"), ("plain", "plain encoder"),
                      ("tfidf", "TF-IDF"), ("ideal_try_next", "ideal try-next (ceiling)")):
        print(f"  {name:26} {s[key]['first']:>9.1%} {s[key]['last']:>9.1%}")
    print(f"goal last {w} >= {GOAL:.0%}: {'MET' if r['goal_met'] else 'MISSED'}")
    down, ideal = r["after_down"]["swarm"], r["after_down"]["ideal_try_next"]
    print(f"after a down vote, the next ask of that question right: {down['satisfied']:.1%} "
          f"of {down['n']} (goal >= {AFTER_DOWN_GOAL:.0%}; ideal try-next "
          f"{ideal['satisfied']:.1%} of {ideal['n']})")
    show_learner(r["learner"], "after the stream")
    if r["harm"] is not None:
        show_harm(r["harm"], w)
    p0, p1 = r["series"][0], r["series"][-1]
    print(f"population: agents {p0['agents']} -> {p1['agents']}, max generation "
          f"{p1['max_generation']}, divisions {p1.get('divided', 0)}, deaths {p1.get('died', 0)}"
          f", adoptions {p1.get('adopted', 0)} (children placed on another spore; "
          f"{p1.get('placement_failed', 0)} placements refused), mean fitness "
          f"{p0['mean_fitness']:.2f} -> {p1['mean_fitness']:.2f}")
    show_calibration(r["calibration"], w)
    lat = r["latency_ms"]
    print(f"latency: ask p50 {lat['ask_p50']:.1f} ms, p99 {lat['ask_p99']:.1f} ms; rate p50 "
          f"{lat['rate_p50']:.1f} ms, p99 {lat['rate_p99']:.1f} ms")
    show_diagnosis(r["diagnosis"], w)
    honest = dict(r["refusals"])
    if r["harm"] is not None:
        for k, n in r["harm"]["refusals"].items():
            honest[k] = honest.get(k, 0) + n
    print(f"refusals between these honest spores (both runs): {sum(honest.values())} "
          f"{honest or ''}")
    print(f"publishing {r['publish_s']:.0f} s, stream {r['stream_s']:.0f} s, "
          f"wall {r['wall_s']:.0f} s; plot: {r['png']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spores", type=int, default=8)
    ap.add_argument("--asks", type=int, default=2000)
    ap.add_argument("--harm-asks", type=int, default=1000)
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="600 asks, 300 on half A")
    ap.add_argument("--skip-harm", action="store_true")
    ap.add_argument("--harm-only", action="store_true")
    ap.add_argument("--png", type=Path, default=Path(tempfile.gettempdir()) / "learning.png")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.asks, args.harm_asks = 600, 300
    args.window = min(args.window, args.asks // 2, args.harm_asks)
    wall = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    corpus = load_corpus()
    tmp = Path(tempfile.mkdtemp())
    try:
        if args.harm_only:
            show_harm(harm_run(tmp, corpus, args, rng), args.window)
            return
        sat = satisfaction_run(tmp, corpus, args, rng)
        harm = None if args.skip_harm else harm_run(tmp, corpus, args, rng)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    draw(args.png, sat["asks"], sat["series"], corpus)
    result = summarize(corpus, sat, harm, args)
    result.update(wall_s=time.perf_counter() - wall, png=str(args.png))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)


if __name__ == "__main__":
    main()
