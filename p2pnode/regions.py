"""What people said about memories, by the question they said it for.

A vote is about an answer *to a question* (DESIGN.md section 3): each keeps
its question's embedding, taken of the question's text without case,
punctuation or spacing (`question_text`), and is kept under a region that is
that very question (`region_key`): two questions never share a counter. What
a vote says counts only for the same question (`agents.consensus.
region_weights`); an up vote on a question like this one only brings its
memory in as a candidate (`RegionIndex.said`: recalled). Whatever its
counters claim, a voter is one voice per memory, here as in the overall
fitness (crdt.votes.voices): one key cannot bury or lift an answer alone.

A voice weighs its voter's trust (agents.trust, given by `set_trust`; 1.0
each until then), the spore's own always 1.0: the asker's vote acts at once
on its own spore. The voices below trust.ESTABLISHED fill silence only: on
a memory where an established voice (or our own) spoke they count for
nothing, elsewhere each weighs what it earned above trust.FLOOR, and all
together LOW_VOICES_CAP at most (per question in `said`, and overall): a
thousand fresh keys weigh nothing (at FLOOR each, K = 1,000 Sybils that
no established voice ever met were the whole low pool and could reject what
tickets not yet established had rated up), keys with a history a quarter
of a voice where no member said anything, and nothing against a member.

`RegionIndex` is the spore's one vote book (the event loop's; no locks):
every vote it knows, whoever holds the memory, in flat arrays. A vote costs
~0.25 KB here whatever its question (questions are kept once each, as int8
codes; voters and authors once each, as numbers), ~0.35 KB when each vote
is a new voter's, and an ask costs one product over the distinct questions and a few
numpy passes over the votes, never a Python loop per vote.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agents import consensus, trust
from crdt.votes import Counter, VoteKey, fitness, stance
from dht import compact

__all__ = ["RegionIndex", "Said", "question_text", "region_key"]

REGION_DOMAIN = b"sporemind/question-region/v1"
_END_MARKS = "?!.,;:¿¡…\"'«»“”‘’()[] \t\n"
CHUNK = 4096  # questions compared with an ask at once (bounds the float copy: 6 MB at 384-d)
UPS_MAX = 4096  # up-rated (question, memory) pairs read for one ask's candidates
# What all voices below trust.ESTABLISHED on one memory weigh together at most.
# Below 0.5 so that they never reject a memory alone (fitness -c/(c+2) stays
# above consensus.REJECTED_BELOW = -0.2): alone they move a memory by
# 0.4 * 0.11 = 0.044 of cosine for its question, and one member's voice
# (>= 0.5 in an invited swarm) outweighs them.
LOW_VOICES_CAP = 0.25
# Per memory number, in the book's tally: voices (entries, up, down), then
# their weights in trust.UNIT, up and down, of the established and of the low.
_ENTRIES, _UP, _DOWN, _HIGH_UP, _HIGH_DOWN, _LOW_UP, _LOW_DOWN = range(7)


def question_text(question: str) -> str:
    """What makes two questions the same question: their words, whatever the
    case, the spacing and the marks around them ("How do I X?" = "how do i
    x"); marks inside stay ("C++ vs C#?" is not "C vs C")."""
    return " ".join(question.casefold().split()).strip(_END_MARKS)


def region_key(qvec: bytes) -> bytes:
    """A vote's region: its question itself (the hash of its compact embedding).
    An LSH bucket, before, made one counter of different questions that
    shared it: a vote for one question then acted on the other."""
    return hashlib.sha256(REGION_DOMAIN + qvec).digest()


@dataclass(frozen=True)
class Said:
    """What people said near one question: region fitness per memory (votes on
    this very question) and memories rated up for questions like it."""

    fitness: dict[bytes, float]
    recalled: list[bytes]


class _Column:
    """A growable numpy column (doubling): rows appended, read as a view."""

    def __init__(self, dtype: type, width: int = 0) -> None:
        self.data: np.ndarray = np.zeros((64, width) if width else 64, dtype)
        self.n = 0

    def append(self, value: object) -> int:
        if self.n == len(self.data):
            self.data = np.concatenate([self.data, np.zeros_like(self.data)])
        self.data[self.n] = value
        self.n += 1
        return self.n - 1

    @property
    def view(self) -> np.ndarray:
        return self.data[:self.n]


class RegionIndex:
    """Every vote the spore knows, by memory, voter and question: what people
    said about each memory for questions like q (`said`, one product per
    ask), each memory's voices overall (`voices`, `weighed`, kept as votes
    come), each entry's counter (`counter`: a voter's next rating builds on
    it), and the columns trust is derived from (`trust_inputs`)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        # Hashes that find a vote's row are keyed by a secret of this process,
        # so no key can be ground to share another voter's row.
        self._salt = os.urandom(16)
        self._question_of: dict[bytes, int] = {}  # digest of a compact question → its row
        self._codes = _Column(np.int8, dim)
        self._scales = _Column(np.float32)
        self._memory_of: dict[bytes, int] = {}  # memory id → its number
        self._memories: list[bytes] = []
        self._tally = _Column(np.int64, 7)  # per memory number: voices and weights (_UP…)
        self._key_of: dict[bytes, int] = {}  # voter or author key → its number
        self._keys: list[bytes] = []
        self._units = _Column(np.int64)  # per key number: its voice's weight, in trust.UNIT
        self._low = _Column(np.bool_)  # per key number: under LOW_VOICES_CAP
        self._trust: Mapping[bytes, float] | None = None  # None: every voice weighs 1.0
        self._default = 1.0
        self._own: bytes | None = None
        self._cap = LOW_VOICES_CAP
        self._row_of: dict[bytes, int] = {}  # digest of (memory, voter, region) → vote row
        self._question = _Column(np.int32)  # per vote: its question's row
        self._memory = _Column(np.int32)  # per vote: its memory's number
        self._voter = _Column(np.int32)  # per vote: its voter's key number
        self._author = _Column(np.int32)  # per vote: the author's key number it names, or -1
        self._stance = _Column(np.int8)  # per vote: crdt.votes.stance
        self._counter = _Column(np.int64, 3)  # per vote: seq, up, down
        self._pair_sum: dict[int, int] = {}  # memory << 32 | voter → its entries' stances summed

    def __len__(self) -> int:
        return self._stance.n

    def _digest(self, *parts: bytes, size: int = 16) -> bytes:
        h = hashlib.blake2b(digest_size=size, key=self._salt)
        for part in parts:
            h.update(len(part).to_bytes(2, "big") + part)
        return h.digest()

    def put(self, memory_id: bytes, key: VoteKey, q: np.ndarray, c: Counter, *,
            author: bytes = b"") -> bool:
        """Take a vote whose question is the embedding `q` (int8-rounded here)."""
        codes, scales = compact.to_int8(np.asarray(q, np.float32)[None, :])
        return self.put_compact(memory_id, key, compact.pack(codes[0], float(scales[0])), c,
                                author=author)

    def put_compact(self, memory_id: bytes, key: VoteKey, qvec: bytes, c: Counter, *,
                    author: bytes = b"") -> bool:
        """Take a vote whose question is a compact embedding (dht.compact) at
        this dimension (ValueError if not), naming the memory's author (b"":
        unknown); False if the entry held is as new."""
        voter, region = key
        row = self._row_of.get(self._digest(memory_id, voter, region))
        if row is not None:
            if tuple(self._counter.data[row]) >= (c.seq, c.up, c.down):
                return False
            self._restance(row, stance(c))
            self._counter.data[row] = (c.seq, c.up, c.down)
            self._author.data[row] = self._key(author) if author else -1
            return True
        question = self._question_row(qvec)
        m = self._memory_of.get(memory_id)
        if m is None:
            m = self._memory_of[memory_id] = len(self._memories)
            self._memories.append(memory_id)
            self._tally.append(0)
        self._row_of[self._digest(memory_id, voter, region)] = self._stance.append(0)
        self._question.append(question)
        self._memory.append(m)
        self._voter.append(self._key(voter))
        self._author.append(self._key(author) if author else -1)
        self._counter.append((c.seq, c.up, c.down))
        self._tally.data[m, _ENTRIES] += 1
        self._restance(self._stance.n - 1, stance(c))
        return True

    def _question_row(self, qvec: bytes) -> int:
        digest = self._digest(qvec)
        row = self._question_of.get(digest)
        if row is None:
            codes, scale = compact.unpack(qvec, self.dim)
            row = self._question_of[digest] = self._codes.append(codes)
            self._scales.append(scale)
        return row

    def _key(self, key: bytes) -> int:
        """A voter's or author's number (a new one weighs what set_trust said)."""
        number = self._key_of.get(key)
        if number is None:
            number = self._key_of[key] = len(self._keys)
            self._keys.append(key)
            units, low = self._weight(key)
            self._units.append(units)
            self._low.append(low)
        return number

    def _weight(self, key: bytes) -> tuple[int, bool]:
        """(weight in trust.UNIT, under the low cap) of a key's voice."""
        if self._trust is None or key == self._own:
            return trust.UNIT, False
        w = self._trust.get(key, self._default)
        w = min(w, 1.0) if w > 0 else 0.0  # NaN too: a weight out of [0, 1] is no weight
        if w < trust.ESTABLISHED:  # a low voice weighs what it earned above FLOOR
            return round(max(w - trust.FLOOR, 0.0) * trust.UNIT), True
        return round(w * trust.UNIT), False

    def _restance(self, row: int, new: int) -> None:
        """Set a vote's stance, moving its memory's voices as its voter's sum turns."""
        old = int(self._stance.data[row])
        self._stance.data[row] = new
        if new == old:
            return
        m, voter = int(self._memory.data[row]), int(self._voter.data[row])
        pair = m << 32 | voter
        before = self._pair_sum.get(pair, 0)
        after = before - old + new
        self._pair_sum[pair] = after
        tally, units = self._tally.data[m], int(self._units.data[voter])
        low = 2 if self._low.data[voter] else 0
        for total, sign in ((before, -1), (after, 1)):
            if total:
                down = int(total < 0)
                tally[_UP + down] += sign
                tally[_HIGH_UP + low + down] += sign * units

    # --- trust ---------------------------------------------------------------------

    def set_trust(self, weights: Mapping[bytes, float], *, default: float,
                  own: bytes | None, cap: float = LOW_VOICES_CAP) -> None:
        """Weigh each voice by its voter's trust (agents.trust.weights: keys
        it does not name weigh `default`), `own` (this spore's key) by 1.0,
        and those below trust.ESTABLISHED on one memory by `cap` at most
        together. The book keeps `weights` (do not change it afterwards): a
        new voter weighs what it says. One pass over the votes."""
        self._trust, self._default, self._own, self._cap = weights, default, own, cap
        for number, key in enumerate(self._keys):
            self._units.data[number], self._low.data[number] = self._weight(key)
        self._retally()

    def _retally(self) -> None:
        """Every memory's weights from its voices (after the keys' weights moved)."""
        tally = self._tally.view
        tally[:, _HIGH_UP:] = 0
        if not len(self):
            return
        memories, units = self._weigh(np.arange(len(self)))
        for column in range(4):
            tally[:, _HIGH_UP + column] = np.bincount(
                memories, weights=units[column], minlength=len(tally)).astype(np.int64)

    def trust_inputs(self) -> trust.Votes:
        """What agents.trust.weights derives trust from: a copy of every vote
        as numbers (voter, memory, question, stance, author), and the keys."""
        return trust.Votes(list(self._keys), self._voter.view.copy(), self._memory.view.copy(),
                           self._question.view.copy(), self._stance.view.copy(),
                           self._author.view.copy())

    # --- reading -------------------------------------------------------------------

    def voices(self, memory_id: bytes) -> tuple[int, int, int]:
        """(entries, up voices, down voices) on one memory, all questions."""
        m = self._memory_of.get(memory_id)
        if m is None:
            return 0, 0, 0
        entries, up, down = (int(x) for x in self._tally.data[m, :_HIGH_UP])
        return entries, up, down

    def weighed(self, memory_id: bytes) -> tuple[float, float]:
        """(up, down) on one memory, all questions: its voices' weights, the
        low ones capped together."""
        m = self._memory_of.get(memory_id)
        if m is None:
            return 0.0, 0.0
        up, down = self._capped(self._tally.data[m:m + 1, _HIGH_UP:].T.astype(np.float64))
        return float(up[0]), float(down[0])

    def overall(self, memory_id: bytes) -> float:
        return fitness(*self.weighed(memory_id))

    def counter(self, memory_id: bytes, key: VoteKey) -> Counter | None:
        row = self._row_of.get(self._digest(memory_id, *key))
        if row is None:
            return None
        seq, up, down = (int(x) for x in self._counter.data[row])
        return Counter(seq, up, down)

    def ups_on(self, memory_ids: Sequence[bytes], limit: int = UPS_MAX
               ) -> tuple[np.ndarray, np.ndarray]:
        """What agents.learner.taken_elsewhere reads: for these memories, the
        question of each (memory, question) the established voices rated up
        on net, as float32 rows [k, dim], and the index in `memory_ids` of
        the memory it rated; the latest `limit` (one numpy pass over the
        votes, however many a peer sent)."""
        numbers = [self._memory_of[m] for m in memory_ids if m in self._memory_of]
        empty = np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64)
        if not numbers:
            return empty
        rows = np.nonzero(np.isin(self._memory.view, numbers))[0]
        memory, question, net = self._net_pairs(rows)
        up = np.nonzero(net > 0)[0][-max(limit, 0):] if limit > 0 else np.zeros(0, np.int64)
        if not len(up):
            return empty
        at = {self._memory_of[m]: i for i, m in enumerate(memory_ids) if m in self._memory_of}
        return self._questions(question[up]), np.array([at[int(m)] for m in memory[up]],
                                                       np.int64)

    def rated_pairs(self, limit: int) -> tuple[np.ndarray, list[bytes], np.ndarray]:
        """What the learner trains on: every (question, memory) the established
        voices (and ours) rated, net, as (questions [k, dim] float32, memory
        ids, signs ±1), the `limit` whose latest vote came last, oldest
        first. Low voices (below trust.ESTABLISHED) teach nothing: a pile of
        fresh keys cannot steer what is learnt."""
        if not len(self) or limit <= 0:
            return np.zeros((0, self.dim), np.float32), [], np.zeros(0, np.float32)
        memory, question, net = self._net_pairs(np.arange(len(self)))
        keep = np.nonzero(net != 0)[0][-limit:]
        return (self._questions(question[keep]),
                [self._memories[int(m)] for m in memory[keep]],
                np.sign(net[keep]).astype(np.float32))

    def _net_pairs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Over `rows`, per (memory, question): its memory number, question row
        and net stance weighed by its voters' trust, low voices left out;
        ordered by the last vote row of each (oldest first)."""
        memory = self._memory.view[rows].astype(np.int64)
        question = self._question.view[rows].astype(np.int64)
        voter = self._voter.view[rows]
        weight = np.where(self._low.view[voter], 0, self._units.view[voter]).astype(np.float64)
        _, first, at = np.unique(memory << 32 | question, return_index=True,
                                 return_inverse=True)
        at = at.ravel()
        net = np.bincount(at, weights=self._stance.view[rows] * weight, minlength=len(first))
        last = np.zeros(len(first), np.int64)
        np.maximum.at(last, at, rows.astype(np.int64))
        order = np.argsort(last, kind="stable")
        return memory[first][order], question[first][order], net[order]

    def _questions(self, rows: np.ndarray) -> np.ndarray:
        """Question rows as float32 embeddings (int8 codes times their scale)."""
        with np.errstate(over="ignore"):  # a peer's absurd scale: inf, dropped by the learner
            out: np.ndarray = (self._codes.view[rows].astype(np.float32)
                               * self._scales.view[rows, None])
        return out

    def said(self, q: np.ndarray, recall_max: int) -> Said:
        """Region fitness (consensus.region_weights, votes.fitness) per memory
        with votes on this very question, and up to `recall_max` memories rated
        up (net, by weight) for questions like it (consensus.near_questions),
        best first. Each voter is one voice per memory in both."""
        if not len(self):
            return Said({}, [])
        same_q, near_q = self._alike(np.asarray(q, np.float32))
        of = self._question.view
        same = self._voices(np.nonzero(same_q[of])[0])
        near = self._voices(np.nonzero(near_q[of])[0])
        ups = {m: up - down for m, (up, down) in near.items()}
        recalled = sorted((m for m, net in ups.items() if net > 0), key=lambda m: -ups[m])
        return Said({m: fitness(*weights) for m, weights in same.items()}, recalled[:recall_max])

    def _alike(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per distinct question: the same as q, and like q (in chunks: the
        int8 codes are widened to float a chunk at a time)."""
        codes, scales = self._codes.view, self._scales.view
        same = np.zeros(len(codes), bool)
        near = np.zeros(len(codes), bool)
        for at in range(0, len(codes), CHUNK):
            # Cosines, not dot products: int8 rounding leaves a row's length up
            # to ~1e-3 short of 1, and SAME_QUESTION sits 1e-3 below 1. A
            # cosine is the codes' alone: a peer's scale (finite, >= 0: checked
            # by compact.unpack) weighs nothing, and one of 0 is no question.
            block = codes[at:at + CHUNK].astype(np.float32)
            norms = np.linalg.norm(block, axis=1, keepdims=True)
            norms[(norms == 0) | (scales[at:at + CHUNK, None] <= 0)] = np.inf  # rows of 0s
            block /= norms
            same[at:at + CHUNK] = consensus.region_weights(q, block) > 0
            near[at:at + CHUNK] = consensus.near_questions(q, block)
        return same, near

    def _weigh(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Over `rows`, a voter's entries on a memory together are one voice, by
        the sign of their stances' sum: per voice, (its memory number, its
        weight in trust.UNIT as high up, high down, low up, low down)."""
        memory = self._memory.view[rows].astype(np.int64)
        voter = self._voter.view[rows]
        _, first, at = np.unique(memory << 32 | voter, return_index=True, return_inverse=True)
        says = np.sign(np.bincount(at.ravel(), weights=self._stance.view[rows]))
        voter = voter[first]
        units = self._units.view[voter].astype(np.float64)
        low = self._low.view[voter]
        weights = np.stack([units * ((says > 0) & ~low), units * ((says < 0) & ~low),
                            units * ((says > 0) & low), units * ((says < 0) & low)])
        return memory[first], weights

    def _capped(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(up, down) per memory from its weights (_weigh's four rows, summed
        per memory): low voices fill silence only. Where an established voice
        (or this spore's own) spoke, they count for nothing; elsewhere they
        are scaled down to weigh the cap together. (Counted against members,
        a capped pile of fresh keys still undid rejections: one member's down
        vote, fitness -0.29, went back above REJECTED_BELOW with 0.25 up from
        Sybils: scripts/bench/sybil.py turned 173 right answers wrong.)"""
        w = w.copy()
        w[2:, (w[0] + w[1]) > 0] = 0
        low, cap = w[2] + w[3], round(self._cap * trust.UNIT)
        over = low > cap  # cap * part / low: exact when a part is all of it
        w[2:, over] = cap * w[2:, over] / low[over]
        return (w[0] + w[2]) / trust.UNIT, (w[1] + w[3]) / trust.UNIT

    def _voices(self, rows: np.ndarray) -> dict[bytes, tuple[float, float]]:
        """memory → (up, down) weighed over `rows`, the low voices capped."""
        if len(rows) == 0:
            return {}
        memory, weights = self._weigh(rows)
        memories, of = np.unique(memory, return_inverse=True)
        summed = np.stack([np.bincount(of.ravel(), weights=w, minlength=len(memories))
                           for w in weights])
        up, down = self._capped(summed)
        return {self._memories[int(m)]: (float(u), float(d))
                for m, u, d in zip(memories, up, down, strict=True)}
