"""Learning from ratings where votes cannot act (pure, numpy only).

Votes move a memory only for the question they were cast on
(agents.consensus). This module holds what might reach further, each part
measured by scripts/bench/learner.py against its baseline in the same run:

* **What other questions' answers say** (`taken_elsewhere`): a memory
  rated up for a question *unlike* this one is probably that question's
  answer, not this one's (an FAQ answers each question once). Such
  memories lose `mu` of cosine. Whether the swarm's ratings bear this out
  is validated, never assumed: where memories answer many questions, the
  held-out questions' own answers are taken elsewhere and `mu` stays 0.
* **A learnt mapping** from question embeddings to answer embeddings,
  trained on the rated (question, memory) pairs: ridge regression W q ≈ ±a
  (an up vote pulls W q towards its memory, a down vote away), truncated
  to a low rank; it adds `lam · cos(W q, a)`.
* **What to try after a down vote** (`feedback_query`): the question is
  moved away from the memories rejected for it (Rocchio's negative
  feedback) before the candidates' cosines are taken. `near_duplicates`,
  `mmr_penalty` and `near_up_bonus` are the policies it was measured
  against (they lost).

`lam` and `mu` are chosen by held-out validation over whole questions
(k-fold, a question never in its own training fold: the unseen case). The
mapping stays at 0 unless it puts the rated-up memory first for
`Limits.min_gain` more held-out questions than it loses, and a sign test
says so. `mu` can only hurt a question whose own answer is taken elsewhere
(*exposed*); where held-out questions show that rarely (a 90 % upper bound
of the exposed share at most `Limits.max_exposed`), `mu` earns its say by
winning more held-out questions than it loses, at the largest weight that
wins most; elsewhere it must pass the mapping's sign test. (With ~50 rated
questions the penalty wins a few held-out questions and loses none; no
sign test over a few wins can pass, so the strict test alone kept it out
of every bench run.)
`ranking_cosines` is the one entry point for the ask's scoring stage.

Hostile input: vectors that are not finite, not of the right dimension,
zero or absurdly long are dropped (and counted) before they touch a sum;
the cost of training is bounded by `Limits` whatever the number of votes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["LAMBDAS", "MUS", "NOTHING_LEARNT", "ROCCHIO_BETA", "UNLIKE_BELOW", "Learnt",
           "Limits", "Ratings", "feedback_query", "fit", "mmr_penalty", "near_duplicates",
           "near_up_bonus", "ranking_cosines", "ratings", "taken_elsewhere", "train"]

Array = npt.NDArray[np.float32]
Numbers = npt.NDArray[np.int64]

LAMBDAS = (0.05, 0.1, 0.2, 0.3, 0.5)  # the mapping's weights tried (0 always competes)
MUS = (0.02, 0.05, 0.1, 0.2, 0.5)  # taken_elsewhere's weights tried (0 always competes)
# How far the question moves away from the mean of its rejected memories:
# 0.3 won on scripts/bench/learner.py (0.6 about as well, 1.0 worse than none).
ROCCHIO_BETA = 0.3
# An up vote on a question at least this alike (consensus.REGION_FLOOR) says
# its memory may answer this one too: it never counts as taken elsewhere.
UNLIKE_BELOW = 0.85
MAX_NORM = 1e3  # an embedding longer than this is not an embedding (ours are unit)
_TINY = 1e-6


@dataclass(frozen=True)
class Limits:
    """What one training may cost, whatever the number of votes: O(max_pairs·d²
    + d³ + max_held·(max_pool + max_pairs)·d) time, O((max_pairs + max_pool)·d
    + d²) memory."""

    max_pairs: int = 2048  # the latest rated pairs kept
    max_pool: int = 2048  # other memories, distractors for validation
    max_held: int = 256  # held-out questions scored by validation
    rank: int = 32  # of the stored mapping: 2·d·rank floats
    alpha: float = 1.0  # ridge
    negative_weight: float = 0.5  # a down vote's pull, relative to an up vote's
    folds: int = 5
    min_questions: int = 10  # questions with an up vote needed to validate at all
    min_gain: int = 2  # held-out questions a setting must win beyond the cosine
    max_p: float = 0.1  # a sign test's p-value its wins against its losses must reach
    # taken_elsewhere without the sign test where, held out, a question's own
    # answer is rarely taken elsewhere (90 % upper bound of that share):
    max_exposed: float = 0.1


@dataclass(frozen=True, eq=False)
class Ratings:
    """Clean rated pairs: unit questions and answers [n, d], signs ±1, and
    numbers naming each pair's question and memory (same number: same one)."""

    questions: Array
    answers: Array
    signs: Array
    groups: Numbers
    memories: Numbers
    dropped: int = 0  # pairs refused as hostile or malformed

    def __len__(self) -> int:
        return len(self.signs)


@dataclass(frozen=True, eq=False)
class Learnt:
    """The mapping W = u·vᵀ at weight lam, and the weight mu of taken_elsewhere;
    both 0 until validation gave them a say."""

    u: Array
    v: Array
    lam: float = 0.0
    mu: float = 0.0
    validation: dict[tuple[float, float], int] = field(default_factory=dict)
    held_out: int = 0  # questions validation scored
    exposed: int = 0  # of them, whose own answer was taken elsewhere

    def mapping_scores(self, q: npt.ArrayLike, candidates: npt.ArrayLike) -> Array:
        """lam · cos(W q, a) per candidate (zeros without a say)."""
        cands = np.asarray(candidates, np.float32)
        if self.lam == 0.0 or not len(cands) or not self.u.size:
            return np.zeros(len(cands), np.float32)
        mapped = _unit((self.v.T @ np.asarray(q, np.float32).reshape(-1)) @ self.u.T)
        return (self.lam * (_unit_rows(cands) @ mapped)).astype(np.float32)


NOTHING_LEARNT = Learnt(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32))


def _unit(x: np.ndarray) -> Array:
    n = float(np.linalg.norm(x))
    return (x / n if n > _TINY else np.zeros_like(x)).astype(np.float32)


def _unit_rows(x: np.ndarray) -> Array:
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True) if len(x) else np.ones((0, 1), np.float32)
    out: Array = x / np.maximum(n, np.float32(_TINY))
    return out


def _sane_rows(x: np.ndarray) -> npt.NDArray[np.bool_]:
    # Norms summed in float64 a row at a time (no float64 copy of x).
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    ok: npt.NDArray[np.bool_] = np.isfinite(x).all(axis=1) & (norms > _TINY) & (
        norms <= MAX_NORM)
    return ok


def _matrix(x: npt.ArrayLike, dim: int, name: str) -> np.ndarray:
    """float32, as embeddings are (beyond its range: inf, dropped as not
    finite): at the caps, each float64 copy of a pair matrix was 6 MB more
    at the training's peak."""
    with np.errstate(over="ignore"):
        arr = np.asarray(x, dtype=np.float32)
    if arr.size == 0:
        return np.zeros((0, dim), np.float32)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{name} must be [n, {dim}], got {arr.shape}")
    return arr


def _numbers(units: np.ndarray) -> Numbers:
    """The same vector (int8-rounded, as the vote book keeps questions) gets
    the same number, numbered in order of first appearance."""
    if not len(units):
        return np.zeros(0, np.int64)
    scaled = np.multiply(units, np.float32(127.0), dtype=np.float32)
    codes = np.rint(scaled, out=scaled).astype(np.int8)  # one float32 temporary
    del scaled
    _, first, numbers = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    out: Numbers = rank[numbers.reshape(-1)].astype(np.int64)
    return out


def ratings(questions: npt.ArrayLike, answers: npt.ArrayLike, signs: npt.ArrayLike, *,
            dim: int, limits: Limits = Limits()) -> Ratings:
    """Rated pairs made safe to learn from: shapes checked (ValueError), then
    each pair whose vectors are not finite, zero or longer than MAX_NORM, or
    whose sign is not a finite non-zero number, is dropped; the latest
    `limits.max_pairs` are kept (give them oldest first)."""
    q, a = _matrix(questions, dim, "questions"), _matrix(answers, dim, "answers")
    with np.errstate(over="ignore"):
        s = np.asarray(signs, dtype=np.float64).reshape(-1)
    if not len(q) == len(a) == len(s):
        raise ValueError("questions, answers and signs must be aligned")
    ok = _sane_rows(q) & _sane_rows(a) & np.isfinite(s) & (s != 0)
    keep: Numbers = np.nonzero(ok)[0][-limits.max_pairs:] if limits.max_pairs > 0 else (
        np.zeros(0, np.int64))
    qs, answers_ = _unit_rows(q[keep]), _unit_rows(a[keep])
    return Ratings(qs, answers_, np.sign(s[keep]).astype(np.float32), _numbers(qs),
                   _numbers(answers_), dropped=int(len(s) - ok.sum()))


def _fit_w(r: Ratings, rows: np.ndarray, limits: Limits) -> tuple[Array, Array]:
    """Ridge W = argmin Σ wᵢ‖W qᵢ − sᵢ aᵢ‖² + α‖W‖² as factors (u, v), W = u·vᵀ,
    truncated to limits.rank (validation folds too: what is validated is what
    is used). Fewer pairs than dimensions: solved in the dual (n×n)."""
    root = np.sqrt(np.where(r.signs[rows] > 0, 1.0, limits.negative_weight)).astype(
        np.float32)[:, None]
    # The [n, d] products in float32 (unit rows: sums of n terms of at most
    # 1), the small [d, d] or [n, n] systems solved in float64.
    q = root * r.questions[rows]
    t = (root * r.signs[rows, None]) * r.answers[rows]
    n, d = q.shape
    alpha = max(limits.alpha, _TINY)
    if n >= d:  # W = tᵀ q (qᵀ q + αI)⁻¹, [d, d]: its own truncated SVD
        gram, cross = (q.T @ q).astype(np.float64), (q.T @ t).astype(np.float64)
        w = np.linalg.solve(gram + alpha * np.eye(d), cross).T
        del gram, cross
        u, sing, vt = np.linalg.svd(w)
        k = max(0, min(limits.rank, len(sing)))
        return (u[:, :k] * sing[:k]).astype(np.float32), vt[:k].T.astype(np.float32)
    # W = tᵀ (q qᵀ + αI)⁻¹ q = left · rightᵀ, both [d, n]
    left = t.T.astype(np.float64)
    right = np.linalg.solve((q @ q.T).astype(np.float64) + alpha * np.eye(n),
                            q.astype(np.float64)).T
    qa, ra = np.linalg.qr(left)
    qb, rb = np.linalg.qr(right)
    mid_u, sing, mid_vt = np.linalg.svd(ra @ rb.T)
    k = max(0, min(limits.rank, len(sing)))
    return ((qa @ mid_u[:, :k]) * sing[:k]).astype(np.float32), (
        qb @ mid_vt[:k].T).astype(np.float32)


def fit(r: Ratings, limits: Limits = Limits(), *, lam: float = 1.0, mu: float = 0.0) -> Learnt:
    """The mapping fitted on every pair, at the weights given, unvalidated
    (what `train` gives a say once it earned it; benchmarks force it)."""
    if not len(r):
        return Learnt(NOTHING_LEARNT.u, NOTHING_LEARNT.v, 0.0, mu)
    u, v = _fit_w(r, np.arange(len(r)), limits)
    return Learnt(u, v, lam, mu)


@dataclass(frozen=True, eq=False)
class _Pool:
    """Every memory validation ranks: unit vectors, a number per memory (by its
    int8-rounded vector: the same memory, the same number), and the number of
    each rated pair's memory."""

    vectors: Array
    numbers: Numbers
    of_pair: Numbers


def _pool(r: Ratings, extra: np.ndarray, limits: Limits) -> _Pool:
    extra = _unit_rows(extra[_sane_rows(extra)][:limits.max_pool]) if len(extra) else extra
    # r.memories numbers the rated memories 0..m-1: memory k's vector is row k here.
    rated = r.answers[np.unique(r.memories, return_index=True)[1]]
    vectors = np.concatenate([rated, extra.astype(np.float32)]) if len(extra) else rated
    numbers = _numbers(vectors)
    return _Pool(vectors.astype(np.float32), numbers, numbers[r.memories])


def _held_out_right(r: Ratings, train_rows: np.ndarray, held: np.ndarray, pool: _Pool,
                    u: Array, v: Array, grid: Sequence[tuple[float, float]]
                    ) -> tuple[np.ndarray, npt.NDArray[np.bool_]]:
    """[grid, held-out questions]: per (lam, mu), whether each held-out
    question's rated-up memory scored above every other memory of the pool
    (taken_elsewhere as the training fold's up votes say); and per held-out
    question, whether its own rated-up memory was taken elsewhere (exposed:
    the only questions mu can hurt)."""
    right: list[np.ndarray] = []
    exposed: list[bool] = []
    ups = train_rows[r.signs[train_rows] > 0]
    lams = np.array([g[0] for g in grid])[:, None]
    mus = np.array([g[1] for g in grid])[:, None]
    for group in np.unique(r.groups[held]):
        mine = held[(r.groups[held] == group) & (r.signs[held] > 0)]
        if not len(mine):
            continue
        q = r.questions[mine[0]]
        like = r.questions[ups] @ q >= UNLIKE_BELOW
        taken = np.isin(pool.numbers, np.setdiff1d(pool.of_pair[ups[~like]],
                                                   pool.of_pair[ups[like]]))
        mapped = pool.vectors @ _unit((v.T @ q) @ u.T) if u.size else np.zeros(len(pool.numbers))
        scores = (pool.vectors @ q)[None, :] + lams * mapped[None, :] - mus * taken[None, :]
        is_target = pool.numbers == pool.of_pair[mine[0]]
        exposed.append(bool(taken[is_target].any()))
        right.append(scores[:, is_target].max(axis=1) > scores[:, ~is_target].max(
            axis=1, initial=-np.inf))
    if not right:
        return np.zeros((len(grid), 0), bool), np.zeros(0, bool)
    return np.stack(right, axis=1), np.array(exposed, bool)


def train(r: Ratings, pool: npt.ArrayLike | None = None, *, limits: Limits = Limits(),
          lambdas: Sequence[float] = LAMBDAS, mus: Sequence[float] = MUS) -> Learnt:
    """What the ratings teach, with the say validation gave it (NOTHING_LEARNT
    when there is too little to validate on; weights 0 where no setting
    earned its say, see `_earned`). `pool`:
    other memories' answer vectors, the distractors of validation (hostile
    rows dropped, capped). Folds take questions round-robin: deterministic."""
    if not len(r) or len(np.unique(r.groups[r.signs > 0])) < limits.min_questions:
        return NOTHING_LEARNT
    dim = r.questions.shape[1]
    candidates = _pool(r, _matrix(pool if pool is not None else [], dim, "pool"), limits)
    grid = [(lam, mu) for lam in (0.0, *lambdas) for mu in (0.0, *mus)]
    folds = max(2, limits.folds)
    # Validation scores at most max_held questions: the latest to appear.
    scored = np.unique(r.groups)[-max(limits.max_held, 1):]
    right = [np.zeros((len(grid), 0), bool)]
    exposed = [np.zeros(0, bool)]
    for fold in range(folds):
        in_fold = r.groups % folds == fold
        train_rows, held = np.nonzero(~in_fold)[0], np.nonzero(in_fold)[0]
        held = held[np.isin(r.groups[held], scored)]
        if not len(train_rows) or not len(held):
            continue
        u, v = _fit_w(r, train_rows, limits)
        fold_right, fold_exposed = _held_out_right(r, train_rows, held, candidates, u, v, grid)
        right.append(fold_right)
        exposed.append(fold_exposed)
    per_question = dict(zip(grid, np.concatenate(right, axis=1), strict=True))
    validation = {g: int(x.sum()) for g, x in per_question.items()}
    seen = np.concatenate(exposed)
    evidence = {"held_out": len(seen), "exposed": int(seen.sum())}
    mu = _earned_mu(per_question, seen, mus, limits)
    lam = _earned(per_question, [(lam, mu) for lam in lambdas], (0.0, mu), limits)[0]
    if not lam:
        return Learnt(NOTHING_LEARNT.u, NOTHING_LEARNT.v, 0.0, mu, validation, **evidence)
    learnt = fit(r, limits, lam=lam, mu=mu)
    return Learnt(learnt.u, learnt.v, lam, mu, validation, **evidence)


def _earned(right: dict[tuple[float, float], np.ndarray], settings: list[tuple[float, float]],
            base: tuple[float, float], limits: Limits) -> tuple[float, float]:
    """The best of `settings` against `base` on the same held-out questions,
    if it won at least min_gain more than it lost and a sign test says the
    wins are no coin toss (p <= limits.max_p, divided by the number of
    settings tried: the best of several is picked, Bonferroni); else `base`.
    Ties go to the smaller weights. Taken_elsewhere is judged first, then the
    mapping beside it: each part earns its own say."""
    was = right[base]
    best, best_net = base, 0
    max_p = limits.max_p / max(len(settings), 1)
    for g in sorted(settings, key=lambda g: g[0] + g[1]):
        wins, losses = int((right[g] & ~was).sum()), int((was & ~right[g]).sum())
        net = wins - losses
        if net > best_net and net >= limits.min_gain and _sign_p(wins, losses) <= max_p:
            best, best_net = g, net
    return best


def _earned_mu(right: dict[tuple[float, float], np.ndarray], exposed: npt.NDArray[np.bool_],
               mus: Sequence[float], limits: Limits) -> float:
    """taken_elsewhere's weight. Where held-out questions' own answers are
    rarely taken elsewhere (`exposed`: 90 % upper bound of the share at most
    limits.max_exposed, over at least limits.min_questions questions), the
    penalty can hurt few questions: the weight that wins most held-out
    questions beyond what it loses (at least one), ties to the larger
    weight (it moves more taken memories aside at no cost seen). Elsewhere,
    the mapping's sign test (`_earned`)."""
    n = len(exposed)
    if n < limits.min_questions or _upper_share(int(exposed.sum()), n) > limits.max_exposed:
        return _earned(right, [(0.0, m) for m in mus], (0.0, 0.0), limits)[1]
    was = right[(0.0, 0.0)]
    best, best_net = 0.0, 0
    for m in sorted(mus):
        now = right[(0.0, m)]
        net = int((now & ~was).sum()) - int((was & ~now).sum())
        if net > 0 and net >= best_net:
            best, best_net = m, net
    return best


def _upper_share(k: int, n: int, confidence: float = 0.9) -> float:
    """One-sided (Clopper-Pearson) upper bound of a share seen k times in n."""
    if n <= 0 or k >= n:
        return 1.0

    def at_most_k(p: float) -> float:  # P(X <= k) for X ~ Binomial(n, p)
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))

    lo, hi = k / n, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if at_most_k(mid) > 1 - confidence else (lo, mid)
    return hi


def _sign_p(wins: int, losses: int) -> float:
    """P(at least `wins` heads in wins + losses fair coin tosses)."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / (1 << n) if n else 1.0


# --- the ask's scoring stage ----------------------------------------------------------

def taken_elsewhere(q: npt.ArrayLike, n: int, up_questions: npt.ArrayLike,
                    up_rows: npt.ArrayLike, own_up: npt.ArrayLike | None = None
                    ) -> npt.NDArray[np.bool_]:
    """Which of n candidates were rated up (net) for a question unlike q
    (cosine < UNLIKE_BELOW), and for none like it nor for q itself (`own_up`:
    region fitness > 0). `up_rows[i]` is the candidate that `up_questions[i]`
    rated up (-1 or out of range: not a candidate). Hostile rows are ignored."""
    query = _unit(np.asarray(q, np.float64).reshape(-1))
    qs = _matrix(up_questions, len(query), "up_questions")
    rows = np.asarray(up_rows, np.int64).reshape(-1)
    if len(rows) != len(qs):
        raise ValueError("up_questions and up_rows must be aligned")
    ok = _sane_rows(qs) & (rows >= 0) & (rows < n)
    like = _unit_rows(qs[ok]) @ query >= UNLIKE_BELOW
    taken = np.zeros(n, bool)
    taken[rows[ok][~like]] = True
    taken[rows[ok][like]] = False
    if own_up is not None:
        taken &= ~np.asarray(own_up, bool).reshape(-1)[:n]
    return taken


def ranking_cosines(q: npt.ArrayLike, candidates: npt.ArrayLike, *,
                    learnt: Learnt = NOTHING_LEARNT, rejected: npt.ArrayLike = (),
                    taken: npt.ArrayLike | None = None, beta: float = ROCCHIO_BETA) -> Array:
    """What the ask ranks by instead of the raw cosines (give the result to
    consensus.combine): each candidate's cosine with the question moved away
    from the memories rejected for it (`rejected`: their vectors), plus the
    mapping's term, minus mu where `taken` (taken_elsewhere)."""
    cands = np.asarray(candidates, np.float32)
    if not len(cands):
        return np.zeros(0, np.float32)
    out = _unit_rows(cands) @ feedback_query(q, rejected, beta)
    out = out + learnt.mapping_scores(q, cands)
    if taken is not None and learnt.mu:
        out = out - learnt.mu * np.asarray(taken, np.float32).reshape(-1)
    result: Array = out.astype(np.float32)
    return result


# --- what to try after a down vote ----------------------------------------------------

def feedback_query(q: npt.ArrayLike, rejected: npt.ArrayLike = (), beta: float = ROCCHIO_BETA
                   ) -> Array:
    """The question moved away from the memories rejected for it (Rocchio):
    unit(q − beta · mean(rejected)). No (sane) rejected memory: q itself, as
    a unit vector. A question that is not a finite non-zero vector: ValueError."""
    query = np.asarray(q, dtype=np.float64).reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        norm = float(np.linalg.norm(query))
    if not (np.isfinite(query).all() and _TINY < norm <= MAX_NORM):
        raise ValueError("the question must be a finite, non-zero vector")
    gone = _matrix(rejected, len(query), "rejected")
    gone = gone[_sane_rows(gone)]
    if not len(gone) or not np.isfinite(beta) or beta == 0:
        return _unit(query)
    moved = _unit(query) - beta * _unit_rows(gone).mean(axis=0)
    return _unit(moved) if np.linalg.norm(moved) > _TINY else _unit(query)


def near_duplicates(candidates: npt.ArrayLike, rejected: npt.ArrayLike, threshold: float
                    ) -> npt.NDArray[np.bool_]:
    """Candidates whose answer is within `threshold` cosine of a rejected one
    (the rejected memory's twins: to skip). Measured: it skips right answers
    too (on the FAQ a right answer is often the wrong one's neighbour)."""
    cands = _unit_rows(np.asarray(candidates, np.float64))
    gone = np.asarray(rejected, np.float64)
    if not len(cands) or not gone.size:
        return np.zeros(len(cands), bool)
    out: npt.NDArray[np.bool_] = (cands @ _unit_rows(gone).T).max(axis=1) >= threshold
    return out


def mmr_penalty(candidates: npt.ArrayLike, rejected: npt.ArrayLike, beta: float) -> Array:
    """Maximal marginal relevance against the rejected: −beta · (max cosine of
    each candidate to a rejected memory), to add to its score."""
    cands = _unit_rows(np.asarray(candidates, np.float64))
    gone = np.asarray(rejected, np.float64)
    if not len(cands) or not gone.size:
        return np.zeros(len(cands), np.float32)
    out: Array = (-beta * (cands @ _unit_rows(gone).T).max(axis=1)).astype(np.float32)
    return out


def near_up_bonus(q: npt.ArrayLike, candidates: npt.ArrayLike, rated_questions: npt.ArrayLike,
                  rated_answers: npt.ArrayLike, *, floor: float = 0.85, weight: float = 0.1
                  ) -> Array:
    """+weight · (cosine of the likest question) for a candidate rated up for a
    question like q (cosine ≥ floor, same answer within 0.999)."""
    cands = _unit_rows(np.asarray(candidates, np.float64))
    rq, ra = np.asarray(rated_questions, np.float64), np.asarray(rated_answers, np.float64)
    out = np.zeros(len(cands), np.float32)
    if not len(cands) or not rq.size:
        return out
    near = _unit_rows(rq) @ _unit(np.asarray(q, np.float64).reshape(-1))
    alike = near >= floor
    if not alike.any():
        return out
    same = (cands @ _unit_rows(ra[alike]).T) >= 0.999  # [C, near ups]
    best = np.where(same, near[alike][None, :], 0.0).max(axis=1)
    bonus: Array = (weight * best).astype(np.float32)
    return bonus
