"""Agent genomes, lineage, state, the batched pool and the agents' consensus."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import guard
from agents.consensus import earned_weight
from agents.genome import (
    AGENT_DOMAIN,
    DIM,
    Agent,
    Weights,
    decode_lineage,
    from_onnx,
    make_lineage,
    mutate,
    new_agent,
    to_onnx,
)
from agents.pool import Pool, agent_weights, combine, reference_scores
from p2pnode.errors import VerifyError
from p2pnode.identity import Identity
from p2pnode.records import MEMORY_DOMAIN

ALICE = Identity.from_seed(b"alice")
T0 = 1_700_000_000_000


def unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def agents() -> list[Agent]:
    rng = np.random.default_rng(7)
    roots = [new_agent(ALICE, Weights.initial(rng), created_ms=T0 + i) for i in range(32)]
    # Half are mutated children, so the pool sees agents that really differ.
    children = [new_agent(ALICE, mutate(a.weights, 0.02, rng), created_ms=T0 + 100,
                          parent=a.lineage) for a in roots]
    return roots + children


# -- genome -------------------------------------------------------------------


def test_genome_round_trip_through_the_guard() -> None:
    weights = Weights.initial(np.random.default_rng(1))
    data = to_onnx(weights)
    guard.check(data)
    assert from_onnx(data) == weights
    assert to_onnx(weights) == data  # deterministic: the lineage signs its hash
    assert sum(a.size for a in weights.arrays()) == 98_816
    assert len(data) < guard.MAX_GENOME_BYTES / 2


def test_from_onnx_checks_before_it_reads() -> None:
    with pytest.raises(guard.GenomeRejected) as info:
        from_onnx(to_onnx(Weights.initial(np.random.default_rng(1)))[:-10])
    assert info.value.reason == "corrupt"


def test_weights_refuse_wrong_shapes_and_dtypes() -> None:
    w = Weights.initial(np.random.default_rng(1))
    with pytest.raises(ValueError, match="W1"):
        Weights(w.w1[:, :64], w.b1, w.w2, w.b2)
    with pytest.raises(ValueError, match="b2"):
        Weights(w.w1, w.b1, w.w2, w.b2.astype(np.float64))


def test_fresh_agent_ranks_like_plain_cosine() -> None:
    rng = np.random.default_rng(2)
    cand = unit(rng.standard_normal((200, DIM)))
    queries = unit(rng.standard_normal((20, DIM)))
    for q in queries:
        weights = Weights.initial(rng)
        agent = reference_scores([weights], q, cand)[0]
        plain = cand @ q
        assert spearman(agent, plain) >= 0.99
        assert agent.argmax() == plain.argmax()


def test_mutation_moves_the_ranking() -> None:
    rng = np.random.default_rng(3)
    cand, q = unit(rng.standard_normal((200, DIM))), unit(rng.standard_normal(DIM))
    child = mutate(Weights.initial(rng), 0.03, rng)
    assert spearman(reference_scores([child], q, cand)[0], cand @ q) < 0.95


@pytest.mark.parametrize("sigma", [0.001, 0.05])
def test_mutate_adds_gaussian_noise_of_sigma(sigma: float) -> None:
    rng = np.random.default_rng(4)
    parent = Weights.initial(rng)
    before = [a.copy() for a in parent.arrays()]
    child = mutate(parent, sigma, rng)
    deltas = np.concatenate([(c.astype(np.float64) - p).ravel()
                             for c, p in zip(child.arrays(), parent.arrays(), strict=True)])
    assert abs(deltas.std() / sigma - 1) < 0.02
    assert abs(deltas.mean()) < 5 * sigma / np.sqrt(deltas.size)
    assert all(a.dtype == np.float32 for a in child.arrays())
    assert all(np.array_equal(b, a) for b, a in zip(before, parent.arrays(), strict=True))


# -- lineage ------------------------------------------------------------------


def test_lineage_signs_and_verifies_a_family() -> None:
    rng = np.random.default_rng(5)
    root = new_agent(ALICE, Weights.initial(rng), created_ms=T0)
    bob = Identity.from_seed(b"bob")
    child = new_agent(bob, mutate(root.weights, 0.01, rng), created_ms=T0 + 5,
                      parent=root.lineage)
    for agent in (root, child):
        decoded = decode_lineage(agent.lineage.wire)
        assert decoded == agent.lineage and decoded.agent_id == agent.agent_id
        decoded.check_genome(to_onnx(agent.weights))
    assert (root.lineage.parent, root.lineage.generation) == (b"", 0)
    assert (child.lineage.parent, child.lineage.generation) == (root.agent_id, 1)
    assert child.lineage.creator == bob.public_key != root.lineage.creator
    with pytest.raises(VerifyError, match="genome"):
        child.lineage.check_genome(to_onnx(root.weights))


def test_lineage_tampering_is_detected() -> None:
    lineage = new_agent(ALICE, Weights.initial(np.random.default_rng(6)), created_ms=T0).lineage
    body, sig = msgpack.unpackb(lineage.wire)
    fields = msgpack.unpackb(body)
    fields[5] += 1  # created_ms
    forged = msgpack.packb([msgpack.packb(fields), sig])
    with pytest.raises(VerifyError, match="signature"):
        decode_lineage(forged)
    bad_sig = msgpack.packb([body, bytes([sig[0] ^ 1]) + sig[1:]])
    with pytest.raises(VerifyError):
        decode_lineage(bad_sig)
    # Same body signed for another record kind: the domain keeps them apart.
    other_domain = msgpack.packb([body, ALICE.sign(MEMORY_DOMAIN, body)])
    with pytest.raises(VerifyError):
        decode_lineage(other_domain)


@pytest.mark.parametrize(("parent", "generation"), [(b"", 1), (b"\x01" * 32, 0),
                                                     (b"\x01" * 31, 1), (b"", -1)])
def test_lineage_with_an_impossible_family_is_refused(parent: bytes, generation: int) -> None:
    body = msgpack.packb(["agent", 1, parent, generation, ALICE.public_key, T0, b"\x02" * 32])
    wire = msgpack.packb([body, ALICE.sign(AGENT_DOMAIN, body)])
    with pytest.raises(VerifyError, match="wrong type"):
        decode_lineage(wire)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_decode_lineage_raises_only_verify_error(data: bytes) -> None:
    with pytest.raises(VerifyError):
        decode_lineage(data)


def test_lineage_ids_differ_for_different_genomes() -> None:
    rng = np.random.default_rng(8)
    a, b = (make_lineage(ALICE, genome=to_onnx(Weights.initial(rng)), created_ms=T0)
            for _ in range(2))
    assert a.agent_id != b.agent_id


# -- agent state --------------------------------------------------------------


def test_specialty_moves_toward_queries_served_well() -> None:
    rng = np.random.default_rng(9)
    agent = new_agent(ALICE, Weights.initial(rng), created_ms=T0)
    assert not agent.specialty.any()
    q = unit(rng.standard_normal(DIM))
    for _ in range(50):
        agent.served_well(q, rate=0.1)
    assert float(unit(agent.specialty) @ q) > 0.999
    assert agent.specialty.dtype == np.float32


def test_fitness_decays_with_time_passed_in() -> None:
    agent = new_agent(ALICE, Weights.initial(np.random.default_rng(10)), created_ms=T0)
    assert agent.fitness_ms == T0
    agent.feedback(4.0, now_ms=T0, half_life_ms=1000)
    agent.decay(T0 + 1000, half_life_ms=1000)
    assert agent.fitness == pytest.approx(2.0)
    agent.decay(T0 + 500, half_life_ms=1000)  # the clock stepped back: nothing moves
    assert agent.fitness == pytest.approx(2.0)
    agent.feedback(-1.0, now_ms=T0 + 3000, half_life_ms=1000)
    assert agent.fitness == pytest.approx(2.0 / 4 - 1.0)
    assert agent.interactions == 2


# -- pool ---------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 7, 64])
@pytest.mark.parametrize("candidates", [1, 200])
def test_pool_matches_the_numpy_reference(agents: list[Agent], count: int,
                                          candidates: int) -> None:
    rng = np.random.default_rng(count * 1000 + candidates)
    members = agents[:count]
    pool = Pool(members)
    cand = unit(rng.standard_normal((candidates, DIM)))
    for q in unit(rng.standard_normal((3, DIM))):
        got = pool.scores(q, cand)
        assert got.shape == (count, candidates) and got.dtype == np.float32
        np.testing.assert_allclose(got, reference_scores([a.weights for a in members], q, cand),
                                   atol=1e-4)


def test_pool_rows_follow_each_agent_alone(agents: list[Agent]) -> None:
    rng = np.random.default_rng(11)
    q, cand = unit(rng.standard_normal(DIM)), unit(rng.standard_normal((50, DIM)))
    together = Pool(agents[30:36]).scores(q, cand)
    for row, agent in enumerate(agents[30:36]):
        session = guard.load(to_onnx(agent.weights))
        r = session.run(None, {"q": q[None, :]})[0][0]
        np.testing.assert_allclose(together[row], cand @ unit(r), atol=1e-4)


def test_pool_rebuilds_for_a_new_membership(agents: list[Agent]) -> None:
    rng = np.random.default_rng(12)
    q, cand = unit(rng.standard_normal(DIM)), unit(rng.standard_normal((20, DIM)))
    pool = Pool(agents[:7])
    assert pool.scores(q, cand).shape == (7, 20)
    pool.rebuild(agents[40:43])
    assert pool.agent_ids == tuple(a.agent_id for a in agents[40:43])
    np.testing.assert_allclose(pool.scores(q, cand),
                               reference_scores([a.weights for a in agents[40:43]], q, cand),
                               atol=1e-4)
    pool.rebuild([])
    assert len(pool) == 0 and pool.scores(q, cand).shape == (0, 20)


def test_the_pool_holds_one_copy_of_each_agents_weights(agents: list[Agent]) -> None:
    """After a rebuild each member's weights are views of the stacked arrays
    the session is fed (0.4 MB an agent, not twice), equal to what they were:
    the same genome, the same scores; a later membership stacks anew."""
    members = [Agent(a.lineage, a.weights) for a in agents[50:54]]
    genomes = [to_onnx(a.weights) for a in members]
    pool = Pool(members)
    feeds = pool._state[1]
    for i, a in enumerate(members):
        for mine, stacked in zip(a.weights.arrays(), (feeds["W1"], feeds["b1"], feeds["W2"],
                                                      feeds["b2"]), strict=True):
            assert np.shares_memory(mine, stacked) and mine.flags.c_contiguous
        assert to_onnx(a.weights) == genomes[i]
    old = feeds["W1"]
    pool.rebuild(members[:2])
    assert not np.shares_memory(members[0].weights.w1, old)
    assert [to_onnx(a.weights) for a in members[:2]] == genomes[:2]


def test_pool_refuses_wrong_shapes(agents: list[Agent]) -> None:
    pool = Pool(agents[:2])
    q = np.ones(DIM, dtype=np.float32)
    assert pool.scores(q, np.zeros((0, DIM), dtype=np.float32)).shape == (2, 0)
    with pytest.raises(ValueError, match="cand"):
        pool.scores(q, np.ones((3, DIM - 1), dtype=np.float32))
    with pytest.raises(ValueError, match="cand"):
        pool.scores(np.ones(DIM + 1, dtype=np.float32), np.ones((3, DIM), dtype=np.float32))


# -- consensus of the agents ----------------------------------------------------


def test_combine_weights_fitter_agents_more() -> None:
    scores = np.array([[0.9, 0.1], [0.1, 0.9]], dtype=np.float32)
    assert combine(scores, [2.0, 0.0]).argmax() == 0
    assert combine(scores, [0.0, 2.0]).argmax() == 1
    np.testing.assert_allclose(combine(scores, [1.0, 1.0]), [0.5, 0.5])
    # Only differences in fitness count; negative fitness is fine.
    np.testing.assert_allclose(combine(scores, [-3.0, -1.0]), combine(scores, [7.0, 9.0]),
                               atol=1e-6)
    weights = agent_weights([0.0, 1.0, 5.0])
    assert weights.sum() == pytest.approx(1.0) and (np.diff(weights) > 0).all()


def test_agents_earn_their_say_on_their_record() -> None:
    won, lost, tie = (True, False), (False, True), (True, True)
    assert earned_weight([], 20, 0.5) == 0.0
    assert earned_weight([won] * 19, 20, 0.5) == 0.0  # still on trial
    assert earned_weight([won] * 11 + [lost] * 9, 20, 0.5) == 0.5
    assert earned_weight([tie] * 20, 20, 0.5) == 0.0  # as good is not better
    assert earned_weight([won] * 9 + [lost] * 11, 20, 0.5) == 0.0


def test_combine_refuses_nonsense() -> None:
    scores = np.zeros((2, 3), dtype=np.float32)
    for fitness in ([], [1.0, float("nan")], [1.0, 2.0, 3.0]):
        with pytest.raises(ValueError, match=r"fitness|agents"):
            combine(scores, fitness)


def test_genome_and_pool_import_without_onnxruntime() -> None:
    """Pure code (consensus) may use combine; onnxruntime loads only with a session."""
    code = ("import sys, agents.genome, agents.pool, agents.guard\n"
            "print('onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_learnt_agents_survive_a_restart_with_what_they_learnt(tmp_path: Path) -> None:
    import sqlite3

    from p2pnode.colony import Colony
    from p2pnode.identity import Identity

    me = Identity.from_seed(b"colony keeper")
    path = tmp_path / "agents.sqlite3"
    colony = Colony(identity=me, path=path, rng=np.random.default_rng(3))
    colony.start(1_000, 0.005)
    q = unit(np.random.default_rng(4).standard_normal(384).astype(np.float32))
    m = unit(np.random.default_rng(5).standard_normal(384).astype(np.float32))
    colony.feedback({a: 0.5 for a in colony.agents}, q, m, True, 2_000, 10**9, 20, 0.005)
    learnt = {i: a.weights.w2.copy() for i, a in colony.agents.items()}
    colony.close()  # flushes the learnt weights

    again = Colony(identity=me, path=path)
    assert set(again.agents) == set(learnt)  # none skipped: the signed genome still checks
    for i, a in again.agents.items():
        assert np.array_equal(a.weights.w2, learnt[i])
        assert a.interactions == 1
    again.close()

    with sqlite3.connect(path) as db:  # torn learnt weights: back to the birth weights
        db.execute("UPDATE weights SET data = x'00' WHERE ref IN (SELECT version FROM agents)")
    third = Colony(identity=me, path=path)
    assert set(third.agents) == set(learnt)
    assert not any(np.array_equal(a.weights.w2, learnt[i]) for i, a in third.agents.items())
    third.close()


def test_card_updates_are_rate_limited_births_and_deaths_are_not() -> None:
    import asyncio

    from p2pnode import agentnet
    from p2pnode import dna as dna_mod
    from p2pnode.colony import Colony
    from p2pnode.gossip import KIND_AGENT, GossipStore
    from p2pnode.identity import Identity
    from p2pnode.peers import validators
    from p2pnode.records import decode_agent_card

    me = Identity.from_seed(b"card keeper")
    dna = dna_mod.found(me, swarm="cards", encoder_name="e", encoder_sha256="00" * 32, dim=384,
                        created_ms=1)
    gossip = GossipStore(validators(dna.swarm_id, lambda: dna))
    colony = Colony(identity=me, path=None, seed_agents=2, rng=np.random.default_rng(1))

    async def inline(fn: Any, *args: Any) -> Any:
        return fn(*args)

    net = agentnet.AgentNet(colony=colony, identity=me, swarm=dna.swarm_id, store=gossip,
                            compute=inline, dna=lambda: dna)

    def fitness_on_cards() -> dict[bytes, float]:
        cards = [decode_agent_card(item) for _, item in gossip.with_prefix(KIND_AGENT)]
        return {c.agent_id: c.fitness for c in cards if c.alive}

    async def scenario() -> None:
        await net.start(None)
        first = fitness_on_cards()
        assert len(first) == 2  # births go out at once
        agents = list(colony.agents.values())
        for a in agents:
            a.fitness = 5.0
        net.publish_cards(agents, updates=True)  # just sent: the update waits
        assert fitness_on_cards() == first
        net._card_sent = {i: t - agentnet.CARD_UPDATE_S for i, t in net._card_sent.items()}
        net.publish_cards([], updates=True)  # due now: the waiting updates go out
        assert set(fitness_on_cards().values()) == {5.0}
        net.publish_cards([], [agents[0]])  # a death goes out at once
        assert set(fitness_on_cards()) == {agents[1].agent_id}
        await net.stop()

    asyncio.run(scenario())
