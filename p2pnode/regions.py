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

`RegionIndex` is the spore's one vote book (the event loop's; no locks):
every vote it knows, whoever holds the memory, in flat arrays. A vote costs
~0.3 KB here whatever its question (questions are kept once each, as int8
codes), and an ask costs one product over the distinct questions and a few
numpy passes over the votes, never a Python loop per vote.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from agents import consensus
from crdt.votes import Counter, VoteKey, fitness, stance
from dht import compact

__all__ = ["RegionIndex", "Said", "question_text", "region_key"]

REGION_DOMAIN = b"sporemind/question-region/v1"
_END_MARKS = "?!.,;:¿¡…\"'«»“”‘’()[] \t\n"
CHUNK = 4096  # questions compared with an ask at once (bounds the float copy: 6 MB at 384-d)


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
    ask), each memory's voices overall (`voices`, kept as votes come), and
    each entry's counter (`counter`: a voter's next rating builds on it)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        # Hashes that group votes are keyed by a secret of this process, so no
        # key can be ground to share another voter's voice.
        self._salt = os.urandom(16)
        self._question_of: dict[bytes, int] = {}  # digest of a compact question → its row
        self._codes = _Column(np.int8, dim)
        self._scales = _Column(np.float32)
        self._memory_of: dict[bytes, int] = {}  # memory id → its number
        self._memories: list[bytes] = []
        self._counts: list[list[int]] = []  # per memory number: [entries, up, down] voices
        self._row_of: dict[bytes, int] = {}  # digest of (memory, voter, region) → vote row
        self._question = _Column(np.int32)  # per vote: its question's row
        self._memory = _Column(np.int32)  # per vote: its memory's number
        self._pair = _Column(np.int64)  # per vote: hash of (memory, voter): one voice
        self._stance = _Column(np.int8)  # per vote: crdt.votes.stance
        self._counter = _Column(np.int64, 3)  # per vote: seq, up, down
        self._pair_sum: dict[int, int] = {}  # (memory, voter) → sum of its entries' stances

    def __len__(self) -> int:
        return self._stance.n

    def _digest(self, *parts: bytes, size: int = 16) -> bytes:
        h = hashlib.blake2b(digest_size=size, key=self._salt)
        for part in parts:
            h.update(len(part).to_bytes(2, "big") + part)
        return h.digest()

    def put(self, memory_id: bytes, key: VoteKey, q: np.ndarray, c: Counter) -> bool:
        """Take a vote whose question is the embedding `q` (int8-rounded here)."""
        codes, scales = compact.to_int8(np.asarray(q, np.float32)[None, :])
        return self.put_compact(memory_id, key, compact.pack(codes[0], float(scales[0])), c)

    def put_compact(self, memory_id: bytes, key: VoteKey, qvec: bytes, c: Counter) -> bool:
        """Take a vote whose question is a compact embedding (dht.compact) at
        this dimension (ValueError if not); False if the entry held is as new."""
        voter, region = key
        row = self._row_of.get(self._digest(memory_id, voter, region))
        if row is not None:
            if tuple(self._counter.data[row]) >= (c.seq, c.up, c.down):
                return False
            self._restance(row, stance(c))
            self._counter.data[row] = (c.seq, c.up, c.down)
            return True
        question = self._question_row(qvec)
        m = self._memory_of.get(memory_id)
        if m is None:
            m = self._memory_of[memory_id] = len(self._memories)
            self._memories.append(memory_id)
            self._counts.append([0, 0, 0])
        self._row_of[self._digest(memory_id, voter, region)] = self._stance.append(0)
        self._question.append(question)
        self._memory.append(m)
        self._pair.append(int.from_bytes(self._digest(memory_id, voter, size=8), "big",
                                         signed=True))
        self._counter.append((c.seq, c.up, c.down))
        self._counts[m][0] += 1
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

    def _restance(self, row: int, new: int) -> None:
        """Set a vote's stance, moving its memory's voices as its voter's sum turns."""
        old = int(self._stance.data[row])
        self._stance.data[row] = new
        if new == old:
            return
        pair = int(self._pair.data[row])
        before = self._pair_sum.get(pair, 0)
        after = before - old + new
        self._pair_sum[pair] = after
        counts = self._counts[int(self._memory.data[row])]
        for total, sign in ((before, -1), (after, 1)):
            if total > 0:
                counts[1] += sign
            elif total < 0:
                counts[2] += sign

    # --- reading -------------------------------------------------------------------

    def voices(self, memory_id: bytes) -> tuple[int, int, int]:
        """(entries, up voices, down voices) on one memory, all questions."""
        m = self._memory_of.get(memory_id)
        if m is None:
            return 0, 0, 0
        entries, up, down = self._counts[m]
        return entries, up, down

    def overall(self, memory_id: bytes) -> float:
        _, up, down = self.voices(memory_id)
        return fitness(up, down)

    def counter(self, memory_id: bytes, key: VoteKey) -> Counter | None:
        row = self._row_of.get(self._digest(memory_id, *key))
        if row is None:
            return None
        seq, up, down = (int(x) for x in self._counter.data[row])
        return Counter(seq, up, down)

    def said(self, q: np.ndarray, recall_max: int) -> Said:
        """Region fitness (consensus.region_weights, votes.fitness) per memory
        with votes on this very question, and up to `recall_max` memories rated
        up (net) for questions like it (consensus.near_questions), best first.
        Each voter is one voice per memory in both."""
        if not len(self):
            return Said({}, [])
        same_q, near_q = self._alike(np.asarray(q, np.float32))
        of = self._question.view
        same = self._voices(np.nonzero(same_q[of])[0])
        near = self._voices(np.nonzero(near_q[of])[0])
        ups = {m: up - down for m, (up, down) in near.items()}
        recalled = sorted((m for m, net in ups.items() if net > 0), key=lambda m: -ups[m])
        return Said({m: fitness(*counts) for m, counts in same.items()}, recalled[:recall_max])

    def _alike(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per distinct question: the same as q, and like q (in chunks: the
        int8 codes are widened to float a chunk at a time)."""
        codes, scales = self._codes.view, self._scales.view
        same = np.zeros(len(codes), bool)
        near = np.zeros(len(codes), bool)
        for at in range(0, len(codes), CHUNK):
            block = codes[at:at + CHUNK].astype(np.float32) * scales[at:at + CHUNK, None]
            same[at:at + CHUNK] = consensus.region_weights(q, block) > 0
            near[at:at + CHUNK] = consensus.near_questions(q, block)
        return same, near

    def _voices(self, rows: np.ndarray) -> dict[bytes, tuple[int, int]]:
        """memory → (up, down) voices over `rows`: a voter's entries together
        are one voice, by the sign of their stances' sum."""
        if len(rows) == 0:
            return {}
        pairs, first, at = np.unique(self._pair.view[rows], return_index=True,
                                     return_inverse=True)
        says = np.sign(np.bincount(at.ravel(), weights=self._stance.view[rows],
                                   minlength=len(pairs)))
        memories, of = np.unique(self._memory.view[rows][first], return_inverse=True)
        up = np.bincount(of.ravel(), weights=says > 0, minlength=len(memories))
        down = np.bincount(of.ravel(), weights=says < 0, minlength=len(memories))
        return {self._memories[int(m)]: (int(u), int(d))
                for m, u, d in zip(memories, up, down, strict=True)}
