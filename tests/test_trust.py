"""Trust (agents.trust) is a pure function of the signed items: the same items
give the same weights in any order, no item an attacker alone can sign raises
its keys' trust to a say, a revoked key weighs nothing; and in the vote book
(p2pnode.regions) eight members outvote a thousand fresh keys."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import trust
from agents.consensus import REJECTED_BELOW
from agents.trust import DAY_MS, ESTABLISHED, FLOOR, Member, TrustParams, Vote
from crdt.votes import Counter, fitness
from p2pnode.regions import LOW_VOICES_CAP, RegionIndex

NOW = 1_800_000_000_000
P = TrustParams()
FOUNDERS = [b"F%d" % i for i in range(2)]
INVITED = [b"I%d" % i for i in range(3)]
TICKETS = [b"T%d" % i for i in range(3)]  # honest newcomers of an open swarm
ATTACKERS = [b"S%d" % i for i in range(4)]
HONEST = FOUNDERS + INVITED + TICKETS
MEMORIES = [b"m%d" % i for i in range(4)]
REGIONS = [b"r%d" % i for i in range(2)]
MEMBERS: dict[bytes, Member] = (
    {k: Member("founder") for k in FOUNDERS}
    | {k: Member("invited", NOW - i * 10 * DAY_MS) for i, k in enumerate(INVITED)}
    | {k: Member("ticket", NOW) for k in TICKETS}
    | {k: Member("ticket", 0) for k in ATTACKERS[:2]})  # the others: no ticket at all


def votes_by(voters: list[bytes], authors: list[bytes]) -> st.SearchStrategy[list[Vote]]:
    return st.lists(st.builds(Vote, st.sampled_from(voters), st.sampled_from(MEMORIES),
                              st.sampled_from(REGIONS), st.sampled_from([-1, 0, 1]),
                              st.sampled_from([b"", *authors])), max_size=40)


def _weights(votes: list[Vote], members: dict[bytes, Member] = MEMBERS) -> dict[bytes, float]:
    return trust.weights(members, votes, NOW)


def test_the_base_is_membership() -> None:
    assert trust.base(Member("founder"), NOW) == 1.0
    assert trust.base(Member("invited", NOW), NOW) == 0.5
    assert trust.base(Member("invited", NOW - 15 * DAY_MS), NOW) == 0.75
    assert trust.base(Member("invited", NOW - 300 * DAY_MS), NOW) == 1.0
    assert trust.base(Member("invited", NOW + DAY_MS), NOW) == 0.5  # a time ahead: just invited
    assert trust.base(Member("ticket", 0), NOW) == trust.base(None, NOW) == FLOOR
    assert trust.base(Member("founder", revoked=True), NOW) == 0.0
    assert _weights([]) == {k: round(trust.base(m, NOW), 6) for k, m in MEMBERS.items()}


@settings(max_examples=200, deadline=None)
@given(votes_by(HONEST + ATTACKERS, HONEST + ATTACKERS), st.randoms(use_true_random=False))
def test_the_same_items_give_the_same_weights_in_any_order(votes: list[Vote],
                                                          rnd: random.Random) -> None:
    again = votes + rnd.sample(votes, k=len(votes) // 2)  # some items twice
    rnd.shuffle(again)
    assert _weights(again) == _weights(votes)
    assert all(0.0 <= w <= 1.0 for w in _weights(votes).values())


@settings(max_examples=300, deadline=None)
@given(votes_by(HONEST, HONEST), votes_by(ATTACKERS, HONEST + ATTACKERS))
def test_what_an_attacker_alone_signs_gives_it_no_say(honest: list[Vote],
                                                      forged: list[Vote]) -> None:
    """Keys S (no founder, no invited member; tickets or none), votes signed by
    S on anything, naming anyone as author, agreeing with each other or with
    the members: no key outside S moves, and no key of S reaches ESTABLISHED
    (agreement alone, which anyone can copy, stops at FLOOR + agree_max)."""
    before, after = _weights(honest), _weights(honest + forged)
    for key, w in after.items():
        if key in ATTACKERS:
            assert w <= FLOOR + P.agree_max < ESTABLISHED
        else:
            assert w == before.get(key, trust.base(MEMBERS.get(key), NOW))


@settings(max_examples=200, deadline=None)
@given(votes_by(HONEST, HONEST), votes_by(ATTACKERS, HONEST + ATTACKERS))
def test_votes_no_member_met_earn_nothing(honest: list[Vote], forged: list[Vote]) -> None:
    """Where no member voted (here: other memories), S's votes earn S nothing,
    however many agree with each other or name S as authors."""
    apart = [v._replace(memory=b"x" + v.memory) for v in forged]
    after = _weights(honest + apart)
    assert all(after.get(k, FLOOR) == FLOOR for k in ATTACKERS)


@settings(max_examples=200, deadline=None)
@given(votes_by(HONEST + ATTACKERS, HONEST + ATTACKERS), st.sets(st.sampled_from(
    HONEST + ATTACKERS)))
def test_a_revoked_key_weighs_nothing(votes: list[Vote], revoked: set[bytes]) -> None:
    members = {k: Member(m.kind, m.since_ms, k in revoked) for k, m in MEMBERS.items()}
    members |= {k: Member(None, revoked=True) for k in revoked if k not in members}
    weights = _weights(votes, members)
    assert all(weights[k] == 0.0 for k in revoked)


def test_a_newcomer_earns_a_say_only_through_members_signatures() -> None:
    new, founders, invited = b"new", FOUNDERS, INVITED
    # 40 votes agreeing with the founders: agreement alone stops at FLOOR + 0.3
    agreed = [Vote(f, b"q%d" % i, b"r", 1) for f in founders for i in range(40)]
    agreed += [Vote(new, b"q%d" % i, b"r", 1) for i in range(40)]
    assert _weights(agreed)[new] == FLOOR + P.agree_max
    # its own memories, rated up by itself and named by its own votes: nothing
    assert _weights([*agreed, Vote(new, b"own", b"r", 1, new)])[new] == FLOOR + P.agree_max
    # one founder rating up many of its memories: one RATED_PER_VOTER (times
    # the founder's trust, 1.0), not enough alone ...
    one = [Vote(founders[0], b"w%d" % i, b"r", 1, new) for i in range(10)]
    assert _weights(one)[new] == FLOOR + P.rated_per_voter < ESTABLISHED
    # ... and with its agreement, established: in an open swarm whose only
    # established voice is the founder, the authors its users rated up join
    assert _weights(agreed + one)[new] == FLOOR + P.agree_max + P.rated_per_voter
    assert FLOOR + P.agree_max + P.rated_per_voter >= ESTABLISHED
    # a new member (0.5) vouches half as much as a founder
    half = [Vote(invited[0], b"w%d" % i, b"r", 1, new) for i in range(10)]
    assert _weights(half)[new] == pytest.approx(FLOOR + P.rated_per_voter * 0.5)
    two = [*one, *half]
    assert _weights(agreed + two)[new] >= ESTABLISHED
    # down votes of members are no credit
    assert _weights([Vote(f, b"w", b"r", -1, new) for f in founders])[new] == FLOOR


def test_disagreeing_with_what_members_settled_costs_trust() -> None:
    member = INVITED[0]  # invited now: 0.5
    votes = [Vote(f, b"q%d" % i, b"r", 1) for f in FOUNDERS for i in range(40)]
    against = votes + [Vote(member, b"q%d" % i, b"r", -1) for i in range(40)]
    assert _weights(against)[member] == 0.5 - P.agree_max
    assert _weights([*votes, Vote(member, b"q0", b"r", -1)])[member] == 0.49


def test_trust_from_the_book_is_trust_from_the_items() -> None:
    book = RegionIndex(8)
    items: list[Vote] = []
    rng = np.random.default_rng(5)
    for _ in range(200):
        v = Vote(HONEST[rng.integers(len(HONEST))], MEMORIES[rng.integers(4)],
                 REGIONS[rng.integers(2)], 0, HONEST[rng.integers(len(HONEST))])
        up, down = int(rng.integers(3)), int(rng.integers(3))
        q = np.eye(8, dtype=np.float32)[REGIONS.index(v.region)]
        if book.put(v.memory, (v.voter, v.region), q, Counter(9, up, down), author=v.author):
            items = [i for i in items if i[:3] != v[:3]]
            items.append(v._replace(stance=(up > down) - (up < down)))
    assert trust.weights(MEMBERS, book.trust_inputs(), NOW) == _weights(items)


def _flood(book: RegionIndex, q: np.ndarray, members: list[bytes], sybils: list[bytes]) -> None:
    """Members rate `good` up and `bad` down for q; the sybils the opposite,
    bury `fresh` that nobody rated, and farm agreement: they copy the
    members' up votes on 30 memories for another question."""
    for voters, good in ((members, True), (sybils, False)):
        for v in voters:
            book.put(b"good", (v, b"r"), q, Counter(1, int(good), int(not good)), author=b"A")
            book.put(b"bad", (v, b"r"), q, Counter(1, int(not good), int(good)), author=b"B")
            for i in range(30):
                book.put(b"farm%d" % i, (v, b"r2"), np.roll(q, 1), Counter(1, 1, 0))
    for v in sybils:
        book.put(b"fresh", (v, b"r"), q, Counter(1, 0, 1))


def test_eight_members_outvote_a_thousand_fresh_identities() -> None:
    q = np.eye(8, dtype=np.float32)[0]
    members = [b"H%d" % i for i in range(8)]
    sybils = [b"sybil%d" % i for i in range(1000)]
    book = RegionIndex(8)
    _flood(book, q, members, sybils)
    said = book.said(q, recall_max=4)
    assert said.fitness[b"good"] < 0 < said.fitness[b"bad"]  # one voice each: they win
    roster = {k: Member("invited", NOW) for k in members}  # just invited: 0.5 each
    roster |= {k: Member("ticket", NOW) for k in sybils}
    weights = trust.weights(roster, book.trust_inputs(), NOW)
    assert {weights[k] for k in sybils} == {FLOOR + 0.3 - 0.02}  # 30 copied, 2 against
    assert {weights[k] for k in members} == {0.5 + 0.3}
    book.set_trust(weights, default=FLOOR, own=None)
    said = book.said(q, recall_max=4)
    assert said.fitness[b"good"] > 0.5 and said.fitness[b"bad"] <= REJECTED_BELOW
    assert said.recalled == [b"good"]
    low = LOW_VOICES_CAP  # 1,000 sybils at 0.3 together: a quarter of a voice
    assert REJECTED_BELOW < said.fitness[b"fresh"] == fitness(0, low)  # where no member spoke
    assert said.fitness[b"good"] == fitness(8 * 0.8, 0)  # where members spoke, silent
    assert book.overall(b"good") == said.fitness[b"good"]
