"""Per-voter vote counters: a state-based CRDT and the fitness derived from it.

A memory's votes are a map ``(voter, region) -> Counter``. Each voter only
ever raises its own counter's ``seq``, so merging keeps, per key, the entry
with the highest ``seq`` (ties broken deterministically): merge is
commutative, associative and idempotent. Fitness is a pure function of the
merged entries; nothing else is stored.

A counter's numbers are its voter's claims: whatever they say, an entry
counts as one vote at most, its net sign (`stance`), and a voter as one
voice per memory (`voices`) however many regions it voted in. So one key
cannot outweigh another by raising its own counters (NOTES.md: "a rank
decided by the writer's own claim").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Counter", "VoteKey", "fitness", "merge_votes", "record_vote", "stance", "tally",
           "voices"]

VoteKey = tuple[bytes, bytes]  # (voter public key, question region)


@dataclass(frozen=True, order=True)
class Counter:
    """One voter's tally for one memory in one region; `seq` only grows."""

    seq: int
    up: int
    down: int


def _newer(a: Counter, b: Counter) -> Counter:
    return a if a >= b else b  # dataclass ordering: seq, then up, then down


def merge_votes(
    a: Mapping[VoteKey, Counter], b: Mapping[VoteKey, Counter]
) -> dict[VoteKey, Counter]:
    """Join of two vote maps: per key, the counter with the highest seq."""
    out = dict(a)
    for key, counter in b.items():
        mine = out.get(key)
        out[key] = counter if mine is None else _newer(mine, counter)
    return out


def record_vote(current: Counter | None, up: bool) -> Counter:
    """The voter's next counter after one more rating."""
    base = current or Counter(0, 0, 0)
    if up:
        return Counter(base.seq + 1, base.up + 1, base.down)
    return Counter(base.seq + 1, base.up, base.down + 1)


def stance(c: Counter) -> int:
    """What an entry says, as one vote: +1 (more ups), -1 (more downs) or 0."""
    return (c.up > c.down) - (c.up < c.down)


def tally(counters: Iterable[Counter]) -> tuple[int, int]:
    """(up, down): the entries that say up and those that say down, one vote each."""
    up = down = 0
    for c in counters:
        said = stance(c)
        up += said > 0
        down += said < 0
    return up, down


def voices(votes: Mapping[VoteKey, Counter]) -> tuple[int, int]:
    """(up, down) by voter: each voter counts once, by the sign of what its
    entries say together (a voter's many regions are still one voice)."""
    by_voter: dict[bytes, int] = {}
    for (voter, _), c in votes.items():
        by_voter[voter] = by_voter.get(voter, 0) + stance(c)
    return (sum(s > 0 for s in by_voter.values()), sum(s < 0 for s in by_voter.values()))


def fitness(up: float, down: float, prior: float = 2.0) -> float:
    """Smoothed net approval in (-1, 1): 0 with no votes, ±0.33 after one."""
    return (up - down) / (up + down + prior)
