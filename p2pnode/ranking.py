"""An ask's ranking, pure: every candidate scored by one function, local or
swarm alike, then ordered (rejected last) and its confidence read.

The score is the encoder's cosine (as `learnt_cosines` moves it: away from
what was rejected for this question, and by what agents.learner earned a
say for) moved by what people said of the memory
for this very question (agents.consensus.combine: its region fitness; the
overall fitness term weighs zero) and, as far as their record has earned it,
by the agents' consensus standing in for part of the cosine. A memory
people rejected for this question ranks after every one they did not,
whatever its score. No clock, no I/O, no randomness: the same candidates and
the same votes give the same order on every spore (tests/test_purity.py).

`abstains` reads the ranking once more: whether the ask's answer is "I don't
know" (ABSTAIN_BELOW).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from agents import consensus, learner

__all__ = ["ABSTAIN_BELOW", "Candidate", "Opinions", "Scored", "abstain_below", "abstains",
           "learnt_cosines", "rank", "runner_up", "scores", "shortlist", "with_score"]

# "I don't know" when the top candidate's encoder cosine is below this (and
# nobody rated it up for this question), per encoder: a cosine means what its
# encoder makes of it. Chosen on half A (even) of the Debian FAQ's 120
# questions (embedded by their words, as an ask embeds them) against the 211
# chunks of its answers: the highest cutoff, rounded down to 0.01, that
# withholds at most 2 % of the half's right top-1 answers (0 of 30; the
# lowest was at 0.282). Our 60 off-topic questions took no part in the
# choice (they reach 0.247). Measured on half B, README "I don't know";
# chosen and measured by
#     .venv/bin/python scripts/bench/abstain.py
ABSTAIN_BELOW = {"all-MiniLM-L6-v2-int8-rq": 0.28}


@dataclass(frozen=True, eq=False)
class Candidate:
    """A memory that may answer: held here (`row`) or fetched from the swarm
    (`record`, a verified p2pnode.records.MemoryRecord), with its cosine to
    the question by its record's own embedding (the same wherever held)."""

    memory_id: bytes
    cosine: float
    vector: np.ndarray = field(repr=False)
    source: Mapping[str, Any]  # what the API shows of it (p2pnode.asking)
    row: int | None = None
    record: Any = None


@dataclass(frozen=True)
class Opinions:
    """What the vote book says of the candidates: region fitness (votes on
    this very question) and overall fitness, by memory id (0.0 when absent)."""

    region: Mapping[bytes, float]
    overall: Mapping[bytes, float] = field(default_factory=dict)

    def rejected(self, memory_id: bytes) -> bool:
        """Rated down for this question (consensus.REJECTED_BELOW)."""
        return bool(consensus.rejected(self.region.get(memory_id, 0.0)))


@dataclass(frozen=True)
class Scored:
    candidate: Candidate
    index: int  # its place among the candidates scored (the agents' column)
    score: float
    rejected: bool
    agents: float | None = None  # the agents' consensus on it, when they had a say


def _combined(cands: Sequence[Candidate], said: Opinions) -> consensus.Ranking:
    ids = [c.memory_id for c in cands]
    return consensus.combine(
        np.asarray([c.cosine for c in cands], np.float32),
        np.asarray([said.overall.get(m, 0.0) for m in ids], np.float32),
        np.asarray([said.region.get(m, 0.0) for m in ids], np.float32))


def scores(cands: Sequence[Candidate], said: Opinions) -> np.ndarray:
    """consensus.combine's score of each candidate, in their order (float32)."""
    if not cands:
        return np.zeros(0, np.float32)
    ranking = _combined(cands, said)
    out = np.empty(len(cands), np.float32)
    out[ranking.order] = ranking.scores
    return out


def learnt_cosines(q: np.ndarray, cands: Sequence[Candidate], said: Opinions, *,
                   rejected: np.ndarray, ups: tuple[np.ndarray, np.ndarray],
                   learnt: learner.Learnt) -> list[Candidate]:
    """The stage between the candidates and their ranking: each candidate's
    cosine as agents.learner.ranking_cosines reads it, the question `q` (the
    one the cosines were taken against) moved away from the `rejected`
    memories' vectors (after a down vote, try another direction: Rocchio),
    plus what the learner earned a say for (`learnt`: its mapping, and
    `mu` against memories rated up for unlike questions, `ups`: as
    RegionIndex.ups_on gives them). With nothing rejected and nothing
    learnt, the candidates come back as they were: a spore with few ratings
    ranks exactly as without the stage."""
    rejected = np.asarray(rejected, np.float32).reshape(-1, len(q)) if len(rejected) else (
        np.zeros((0, len(q)), np.float32))
    if not cands or (not len(rejected) and not learnt.lam and not learnt.mu):
        return list(cands)
    taken = None
    if learnt.mu:
        own_up = np.array([said.region.get(c.memory_id, 0.0) > 0 for c in cands])
        taken = learner.taken_elsewhere(q, len(cands), ups[0], ups[1], own_up)
    cos = learner.ranking_cosines(q, np.stack([c.vector for c in cands]), learnt=learnt,
                                  rejected=rejected, taken=taken)
    return [replace(c, cosine=float(x)) for c, x in zip(cands, cos, strict=True)]


def shortlist(cands: Sequence[Candidate], said: Opinions, keep: int) -> list[Candidate]:
    """The best `keep` of some candidates, best first (rejected last): the
    order `rank` gives them without the agents, which is combine's."""
    if not cands:
        return []
    return [cands[int(i)] for i in _combined(cands, said).order[:keep]]


def rank(cands: Sequence[Candidate], said: Opinions, agents: np.ndarray | None = None,
         weight: float = 0.0) -> list[Scored]:
    """Every candidate scored (`scores`, then the agents' consensus `agents`,
    aligned with `cands`, replacing `weight` of the cosine; those past its
    end get no say), best first: those rejected for this question after all
    the others, each group by score (ties keep the candidates' order)."""
    base = scores(cands, said)
    out = []
    for i, c in enumerate(cands):
        score = float(base[i])
        say = None
        if agents is not None and weight > 0 and i < len(agents):
            say = float(agents[i])
            score += weight * (say - c.cosine)
        out.append(Scored(c, i, score, said.rejected(c.memory_id), say))
    return sorted(out, key=lambda s: (s.rejected, -s.score))


def runner_up(ranked: Sequence[Scored]) -> tuple[float, float]:
    """(top score, runner-up score) of a ranking: what its confidence reads."""
    top = ranked[0].score if ranked else 0.0
    return top, ranked[1].score if len(ranked) > 1 else 0.0


def with_score(s: Scored) -> Scored:
    """`s` with its source showing its score (and agents' say, and rejection)."""
    source = dict(s.candidate.source, score=round(s.score, 4))
    if s.agents is not None:
        source["agents"] = round(s.agents, 4)
    if s.rejected:
        source["rejected"] = True
    return replace(s, candidate=replace(s.candidate, source=source))


def abstain_below(encoder: str) -> float:
    """The cosine under which an ask with `encoder` says "I don't know": an
    encoder nobody measured (the tests' fake one) never abstains by cosine."""
    return ABSTAIN_BELOW.get(encoder, -math.inf)


def abstains(q: np.ndarray, ranked: Sequence[Scored], said: Opinions, below: float) -> bool:
    """Whether an ask's answer is "I don't know": nothing ranked, or a top
    candidate nobody rated up for this very question (its region fitness, in
    `said`) whose encoder cosine to `q` is below `below` or not a number.
    The cosine is read from the memory's own embedding, before the votes and
    the learnt stage moved it: votes say what is known (an up vote on this
    question makes the memory known whatever its cosine), the cosine says
    whether anything held is near at all."""
    if not ranked:
        return True
    top = ranked[0].candidate
    if said.region.get(top.memory_id, 0.0) > 0:
        return False
    with np.errstate(invalid="ignore", over="ignore"):
        cosine = float(np.dot(np.asarray(q, np.float32).ravel(),
                              np.asarray(top.vector, np.float32).ravel()))
    return not cosine >= below  # NaN abstains
