"""Can learning reach where votes cannot? Offline, on the learning bench's data.

No daemon: the Debian FAQ chunks and questions of scripts/bench/learning.py,
embedded with the real encoder, the same seeded streams (Zipf asks, drawn in
the same order as learning.py draws them), a simulated user who rates the
top-1 up when it is from the question's section and down otherwise, and one
vote book that knows every vote at once (the limit gossip converges to).
Ranking is agents.consensus.combine, as on a spore; only its cosines change.

1. **Unseen questions** (learning.py's do-no-harm half): a stream of rated
   asks over half A of the questions, then half B (never rated) asked once:
   top-1 with the cosine alone (before) against agents.learner's
   ranking_cosines with what the ratings taught (after): the learnt mapping
   (weight lam) and taken_elsewhere (weight mu: memories rated up for
   unlike questions), each weight 0 unless held-out validation on the
   ratings alone gave it a say. For information, in hindsight on B (not
   policies): the mapping forced at each lam, taken_elsewhere forced at
   each mu, and one agent of the population (a fresh genome taught by
   agents.evolution.learn on every rating) at its best weight.
2. **After a down vote**: over the satisfaction stream, the share of asks
   right among those that follow a down vote on the same question (and the
   ask right after a question's first down vote), for each try-next policy,
   today's (the rejected memory ordered last) and the ceiling of
   learning.py (one new section per down vote: the ideal walk of the
   encoder's order) and the oracle of votes (that walk also skipping every
   section rated up for another question so far: the most any reordering
   of the encoder's ranking by votes can reach), each on its own
   trajectory; with the down votes cast and the last-500 satisfaction
   (which must not fall).

    PYTHONPATH=. .venv/bin/python scripts/bench/learner.py [--seeds 1 2 3]
        [--asks 2000] [--harm-asks 1000] [--json]
"""

from __future__ import annotations

import os

# One BLAS thread: on 2 shared cores a threaded 384x384 SVD took 2 s, not 0.07 s.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from _spore import FAQ_DIR  # noqa: E402

from agents import consensus  # noqa: E402
from agents.encoder import load_encoder  # noqa: E402
from agents.evolution import LEARNING_RATE, learn  # noqa: E402
from agents.genome import Weights  # noqa: E402
from agents.learner import (  # noqa: E402
    LAMBDAS,
    MUS,
    NOTHING_LEARNT,
    Learnt,
    fit,
    mmr_penalty,
    near_duplicates,
    near_up_bonus,
    ranking_cosines,
    ratings,
    taken_elsewhere,
    train,
)
from agents.pool import reference_scores  # noqa: E402
from cli.documents import chunk_text, faq_sections  # noqa: E402
from crdt.votes import fitness  # noqa: E402
from p2pnode.regions import question_text  # noqa: E402

SPORES, ZIPF, WINDOW = 8, 1.1, 500
RETRAIN_EVERY = 200  # asks between two trainings of the learner inside a stream


# --- the learning bench's data and draws (as scripts/bench/learning.py) --------------

@dataclass(frozen=True)
class Corpus:
    chunks: list[tuple[str, str]]  # (section, text)
    questions: list[tuple[str, str]]  # (section, question)
    right_rank: list[int]  # per question: rank of its section among the encoder's sections
    qv: np.ndarray  # question embeddings
    cv: np.ndarray  # chunk embeddings


def load_corpus() -> Corpus:
    """The FAQ's question headings and their answers' chunks, as learning.py
    loads them (its faq_pairs), embedded with the real encoder."""
    if not FAQ_DIR.is_dir():
        raise SystemExit("the Debian FAQ is missing: apt-get install debian-faq")
    pairs = []
    for page in sorted(FAQ_DIR.glob("*.en.html")):
        for i, (q, a) in enumerate(faq_sections(page.read_text(encoding="utf-8"))):
            if q.rstrip().endswith("?") and a.strip():
                pairs.append((f"{page.stem}#{i}", q.strip(), a.strip()))
    chunks = [(sec, c) for sec, _, a in pairs for c in chunk_text(a)]
    questions = [(sec, q) for sec, q, _ in pairs]
    encoder = load_encoder(threads=2)
    cv = encoder.embed([c for _, c in chunks]).astype(np.float32)
    qv = encoder.embed([question_text(q) or q for _, q in questions]).astype(np.float32)
    order = np.argsort(-(qv @ cv.T), axis=1)
    ranks = [list(dict.fromkeys(chunks[i][0] for i in row)).index(sec)
             for (sec, _), row in zip(questions, order, strict=True)]
    return Corpus(chunks, questions, ranks, qv, cv)


def zipf_stream(rng: np.random.Generator, pool: list[int], asks: int
                ) -> list[tuple[int, int]]:
    """(question, spore) per ask: questions by Zipf over a random rank order."""
    ranked = rng.permutation(pool)
    p = np.arange(1, len(ranked) + 1, dtype=float) ** -ZIPF
    qs = rng.choice(ranked, size=asks, p=p / p.sum())
    return [(int(q), int(s)) for q, s in zip(qs, rng.integers(SPORES, size=asks), strict=True)]


def ideal_try_next(stream: list[tuple[int, int]], corpus: Corpus) -> list[bool]:
    """learning.py's ceiling: the k-th ask of a question is right once k >= the
    rank of its section in the encoder's order (one new section per down vote)."""
    seen: Counter[int] = Counter()
    out: list[bool] = []
    for q, _ in stream:
        out.append(seen[q] >= corpus.right_rank[q])
        seen[q] += 1
    return out


@dataclass
class Book:
    """Every vote at once: per question, per memory, each voter's last stance;
    and the net stance of each (question, memory) pair."""

    said: dict[int, dict[int, dict[int, int]]] = field(default_factory=dict)
    net: dict[tuple[int, int], int] = field(default_factory=dict)

    def vote(self, q: int, memory: int, voter: int, up: bool) -> None:
        voices = self.said.setdefault(q, {}).setdefault(memory, {})
        voices[voter] = 1 if up else -1
        self.net[(q, memory)] = sum(voices.values())

    def region(self, q: int, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        for m, voices in self.said.get(q, {}).items():
            ups = sum(s > 0 for s in voices.values())
            out[m] = fitness(ups, len(voices) - ups)
        return out

    def pairs(self) -> tuple[list[int], list[int], list[int]]:
        """(question, memory, sign) per rated pair, net over voters, oldest first."""
        kept = [(q, m, int(np.sign(n))) for (q, m), n in self.net.items() if n]
        return [q for q, _, _ in kept], [m for _, m, _ in kept], [s for _, _, s in kept]


@dataclass
class World:
    corpus: Corpus
    book: Book
    learnt: Learnt = NOTHING_LEARNT

    @property
    def n(self) -> int:
        return len(self.corpus.cv)


Policy = Callable[[World, int], int]


def ranked_first(w: World, q: int, cosines: np.ndarray, demote: np.ndarray | None = None
                 ) -> int:
    """consensus.combine over every chunk; `demote`d ones after the others."""
    region = w.book.region(q, w.n)
    order = consensus.combine(cosines, np.zeros(w.n), region).order
    if demote is not None and not demote[order].all():
        order = order[np.argsort(demote[order], kind="stable")]
    return int(order[0])


def rejected(w: World, q: int) -> np.ndarray:
    return w.corpus.cv[np.nonzero(consensus.rejected(w.book.region(q, w.n)))[0]]


def taken(w: World, q: int) -> np.ndarray:
    """Candidates rated up for questions unlike q (agents.learner.taken_elsewhere)."""
    ups = [(qq, m) for (qq, m), n in w.book.net.items() if n > 0 and qq != q]
    return taken_elsewhere(w.corpus.qv[q], w.n, w.corpus.qv[[a for a, _ in ups]],
                           [m for _, m in ups], w.book.region(q, w.n) > 0)


def today(w: World, q: int) -> int:
    return ranked_first(w, q, w.corpus.qv[q] @ w.corpus.cv.T)


def rocchio(beta: float) -> Policy:
    def policy(w: World, q: int) -> int:
        return ranked_first(w, q, ranking_cosines(w.corpus.qv[q], w.corpus.cv,
                                                  rejected=rejected(w, q), beta=beta))
    return policy


def skip_twins(threshold: float) -> Policy:
    def policy(w: World, q: int) -> int:
        twins = near_duplicates(w.corpus.cv, rejected(w, q), threshold)
        return ranked_first(w, q, w.corpus.qv[q] @ w.corpus.cv.T, twins)
    return policy


def mmr(beta: float) -> Policy:
    def policy(w: World, q: int) -> int:
        cos = w.corpus.qv[q] @ w.corpus.cv.T
        return ranked_first(w, q, cos + mmr_penalty(w.corpus.cv, rejected(w, q), beta))
    return policy


def near_up(w: World, q: int) -> int:
    ups = [(qq, m) for (qq, m), n in w.book.net.items() if n > 0 and qq != q]
    cos = w.corpus.qv[q] @ w.corpus.cv.T
    if ups:
        cos = cos + near_up_bonus(w.corpus.qv[q], w.corpus.cv, w.corpus.qv[[a for a, _ in ups]],
                                  w.corpus.cv[[m for _, m in ups]])
    return ranked_first(w, q, cos)


def learnt(beta: float, forced: Learnt | None = None) -> Policy:
    """ranking_cosines with what was learnt (retrained every RETRAIN_EVERY
    asks, validated) or `forced` weights, the question moved by `beta`."""
    def policy(w: World, q: int) -> int:
        what = forced or w.learnt
        return ranked_first(w, q, ranking_cosines(
            w.corpus.qv[q], w.corpus.cv, learnt=what, rejected=rejected(w, q),
            taken=taken(w, q) if what.mu else None, beta=beta))
    return policy


POLICIES: dict[str, Policy] = {
    "today (rejected last)": today,
    "rocchio 0.3": rocchio(0.3), "rocchio 0.6": rocchio(0.6), "rocchio 1.0": rocchio(1.0),
    "skip twins cos>=0.8": skip_twins(0.8), "skip twins cos>=0.7": skip_twins(0.7),
    "mmr 0.3": mmr(0.3), "mmr 0.6": mmr(0.6),
    "rated up for alike questions": near_up,
    "learnt (validated)": learnt(0.0),
    "rocchio 0.3 + learnt (validated)": learnt(0.3),
    "rocchio 0.3 + taken mu 0.5 (forced)": learnt(0.3, Learnt(NOTHING_LEARNT.u,
                                                              NOTHING_LEARNT.v, 0.0, 0.5)),
}


def learn_from(w: World) -> Learnt:
    qs, ms, signs = w.book.pairs()
    if not qs:
        return NOTHING_LEARNT
    r = ratings(w.corpus.qv[qs], w.corpus.cv[ms], signs, dim=w.corpus.qv.shape[1])
    return train(r, w.corpus.cv)


@dataclass(frozen=True)
class Walk:
    after_down: list[bool]  # each ask that follows a down vote on its question: right?
    first_down: list[bool]  # the ask right after a question's first down vote
    right: list[bool]  # every ask


def walk_of(stream: list[tuple[int, int]], right: list[bool]) -> Walk:
    last: dict[int, bool] = {}
    downs: Counter[int] = Counter()
    after, first = [], []
    for (q, _), ok in zip(stream, right, strict=True):
        if q in last and not last[q]:
            after.append(ok)
            if downs[q] == 1:
                first.append(ok)
        downs[q] += not ok
        last[q] = ok
    return Walk(after, first, right)


def run_stream(corpus: Corpus, stream: list[tuple[int, int]], policy: Policy,
               retrain: bool) -> tuple[Walk, Book, list[tuple[int, int, int]]]:
    """Each ask answered by `policy` and rated by the simulated user: the walk,
    the book, and the ratings in order (question, memory, ±1)."""
    w = World(corpus, Book())
    right, rated = [], []
    for k, (q, spore) in enumerate(stream):
        if retrain and k and k % RETRAIN_EVERY == 0:
            w.learnt = learn_from(w)
        chosen = policy(w, q)
        ok = corpus.chunks[chosen][0] == corpus.questions[q][0]
        right.append(ok)
        rated.append((q, chosen, 1 if ok else -1))
        w.book.vote(q, chosen, spore, ok)
    return walk_of(stream, right), w.book, rated


def streams(seed: int, nq: int, asks: int, harm_asks: int
            ) -> tuple[list[tuple[int, int]], list[int], list[int], list[tuple[int, int]]]:
    """learning.py's draws, in its order: the satisfaction stream, the sweep's
    spores, then the halves A and B, B's spores and the stream over A."""
    rng = np.random.default_rng(seed)
    stream = zipf_stream(rng, list(range(nq)), asks)
    rng.integers(SPORES, size=nq)
    order = [int(q) for q in rng.permutation(nq)]
    a_half, b_half = order[: nq // 2], order[nq // 2:]
    rng.integers(SPORES, size=len(b_half))
    return stream, a_half, b_half, zipf_stream(rng, a_half, harm_asks)


def share(xs: list[bool]) -> float:
    return sum(xs) / max(len(xs), 1)


# --- 1. unseen questions --------------------------------------------------------------

def top1(corpus: Corpus, qs: list[int], scores: np.ndarray) -> float:
    return share([corpus.chunks[int(np.argmax(s))][0] == corpus.questions[q][0]
                  for q, s in zip(qs, scores, strict=True)])


def agent_scores(corpus: Corpus, rated: list[tuple[int, int, int]], qs: list[int],
                 seed: int, rate: float) -> np.ndarray:
    """One agent (a fresh genome) taught by evolution.learn on every rating, in
    order (more than any one agent of a population sees): its cos(r(q), a)."""
    w = Weights.initial(np.random.default_rng(seed))
    for q, memory, sign in rated:
        w = learn(w, corpus.qv[q], corpus.cv[memory], float(sign), rate)
    return np.stack([reference_scores([w], corpus.qv[q], corpus.cv)[0] for q in qs])


def unseen(corpus: Corpus, harm: list[tuple[int, int]], b_half: list[int], seed: int
           ) -> dict[str, Any]:
    _, book, rated = run_stream(corpus, harm, today, retrain=False)
    w = World(corpus, book)
    t = time.perf_counter()
    w.learnt = learn_from(w)
    train_s = time.perf_counter() - t
    cos = corpus.qv[b_half] @ corpus.cv.T
    gone = [taken(w, q) for q in b_half]

    def scored(what: Learnt) -> np.ndarray:
        return np.stack([ranking_cosines(corpus.qv[q], corpus.cv, learnt=what, taken=t)
                         for q, t in zip(b_half, gone, strict=True)])

    qs, ms, signs = book.pairs()
    mapping = fit(ratings(corpus.qv[qs], corpus.cv[ms], signs, dim=corpus.qv.shape[1]))
    forced_lam = {lam: top1(corpus, b_half, scored(Learnt(mapping.u, mapping.v, lam)))
                  for lam in LAMBDAS}
    forced_mu = {mu: top1(corpus, b_half, scored(Learnt(mapping.u, mapping.v, 0.0, mu)))
                 for mu in MUS}
    agents = {}
    for rate in (LEARNING_RATE, 0.1):
        say = agent_scores(corpus, rated, b_half, seed, rate)
        agents[rate] = max(top1(corpus, b_half, cos + lam * say) for lam in LAMBDAS)
    best = max(w.learnt.validation.items(), key=lambda kv: kv[1], default=((0.0, 0.0), 0))
    return {"before": top1(corpus, b_half, cos), "after": top1(corpus, b_half,
                                                                scored(w.learnt)),
            "lam": w.learnt.lam, "mu": w.learnt.mu, "train_s": train_s,
            "held_out_cosine": w.learnt.validation.get((0.0, 0.0), 0),
            "held_out_best": best[1], "held_out_best_at": best[0],
            "pairs_up": sum(s > 0 for s in signs), "pairs_down": sum(s < 0 for s in signs),
            "questions_rated": len(set(qs)), "forced_lam": forced_lam, "forced_mu": forced_mu,
            "agent_hindsight": agents}


# --- 2. after a down vote -------------------------------------------------------------

def oracle_of_votes(stream: list[tuple[int, int]], corpus: Corpus) -> list[bool]:
    """The most the votes can tell a walk of the encoder's order: each ask
    takes the first section in the encoder's order that was neither rejected
    for this question (a whole section at a time, which a spore cannot see)
    nor rated up for another question so far (taken elsewhere, known exactly
    and at once everywhere, with no similarity threshold). A ceiling for
    every policy here: each reorders the encoder's ranking with votes."""
    sections = [s for s, _ in corpus.chunks]
    order = np.argsort(-(corpus.qv @ corpus.cv.T), axis=1)
    by_section = [list(dict.fromkeys(sections[i] for i in row)) for row in order]
    rejected: dict[int, set[str]] = {}
    owner: dict[str, int] = {}  # section -> the question it was rated up for
    out: list[bool] = []
    for q, _ in stream:
        mine = corpus.questions[q][0]
        gone = rejected.setdefault(q, set())
        pick = next(s for s in by_section[q] if s not in gone and owner.get(s, q) == q)
        out.append(pick == mine)
        if pick == mine:
            owner[pick] = q
        else:
            gone.add(pick)
    return out


def after_down(corpus: Corpus, stream: list[tuple[int, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ideal = walk_of(stream, ideal_try_next(stream, corpus))
    out["ceiling (ideal walk)"] = summary(ideal)
    out["ceiling (oracle of votes)"] = summary(walk_of(stream, oracle_of_votes(stream, corpus)))
    for name, policy in POLICIES.items():
        walk, _, _ = run_stream(corpus, stream, policy, retrain="validated" in name)
        out[name] = summary(walk)
    return out


def summary(w: Walk) -> dict[str, Any]:
    return {"after_down": share(w.after_down), "n": len(w.after_down),
            "first_down": share(w.first_down), "n_first": len(w.first_down),
            "downs": w.right.count(False), "last": share(w.right[-WINDOW:])}


# --- output ---------------------------------------------------------------------------

def show(results: dict[int, dict[str, Any]]) -> None:
    seeds = list(results)
    print("1. unseen questions (half B, never rated), top-1 after a rated stream on half A")
    print(f"  {'seed':>4} {'before':>7} {'after':>7} {'lam':>5} {'mu':>5}  held-out right "
          "(cosine -> best at (lam, mu)); rated pairs up/down, questions; train s")
    for s in seeds:
        u = results[s]["unseen"]
        print(f"  {s:>4} {u['before']:>7.1%} {u['after']:>7.1%} {u['lam']:>5g} {u['mu']:>5g}  "
              f"{u['held_out_cosine']} -> {u['held_out_best']} at {u['held_out_best_at']}; "
              f"{u['pairs_up']}/{u['pairs_down']}, {u['questions_rated']}; "
              f"{u['train_s']:.2f}")
    print("  hindsight on B (not policies): the mapping forced at lam / taken_elsewhere forced "
          "at mu / one agent taught every rating, at its best lam")
    for s in seeds:
        u = results[s]["unseen"]
        lam = " ".join(f"{k:g}:{v:.1%}" for k, v in u["forced_lam"].items())
        mu = " ".join(f"{k:g}:{v:.1%}" for k, v in u["forced_mu"].items())
        agent = " ".join(f"rate {k:g}: {v:.1%}" for k, v in u["agent_hindsight"].items())
        print(f"  {s:>4} lam [{lam}]  mu [{mu}]  agent [{agent}]")
    before = np.mean([results[s]["unseen"]["before"] for s in seeds])
    after = np.mean([results[s]["unseen"]["after"] for s in seeds])
    worst = min(results[s]["unseen"]["after"] - results[s]["unseen"]["before"] for s in seeds)
    print(f"  mean before {before:.1%}, after {after:.1%} ({after - before:+.1%}; goal +3.0 "
          f"points), worst seed {worst:+.1%} (goal >= 0)")
    print("2. after a down vote: the next ask of that question right (each policy on its "
          "own walk)")
    names = list(results[seeds[0]]["after_down"])
    print(f"  {'policy':36}" + "".join(f"   seed {s}: after-down  1st-down downs last500"
                                       for s in seeds))
    for name in names:
        row = "".join(
            f"   {x['after_down']:>6.1%} of {x['n']:<4} {x['first_down']:>6.1%} "
            f"{x['downs']:>5} {x['last']:>7.1%}"
            for x in (results[s]["after_down"][name] for s in seeds))
        mean = np.mean([results[s]["after_down"][name]["after_down"] for s in seeds])
        print(f"  {name:36}{row}   mean {mean:.1%}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--asks", type=int, default=2000)
    ap.add_argument("--harm-asks", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    wall = time.perf_counter()
    corpus = load_corpus()
    results: dict[int, dict[str, Any]] = {}
    for seed in args.seeds:
        stream, _, b_half, harm = streams(seed, len(corpus.questions), args.asks,
                                          args.harm_asks)
        results[seed] = {"unseen": unseen(corpus, harm, b_half, seed),
                         "after_down": after_down(corpus, stream)}
    wall_s = time.perf_counter() - wall
    if args.json:
        print(json.dumps({"seeds": results, "wall_s": wall_s}, indent=2, default=str))
        return
    print(f"Debian FAQ: {len(corpus.chunks)} chunks, {len(corpus.questions)} questions; "
          f"{args.asks} asks, {args.harm_asks} on half A; seeds {args.seeds}")
    show(results)
    print(f"wall {wall_s:.0f} s")


if __name__ == "__main__":
    main()
