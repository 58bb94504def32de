"""Selection and the colony's footprint on disk (issue 12, item 5).

The fittest divide, one at most a rating; a child of ours is stored as its
parent's weights, a seed and σ, and re-derived bit for bit; learnt weights
and standing are written rarely, and all of it at close.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from agents.evolution import Member, culled, derive, parent
from agents.genome import Weights, mutate
from p2pnode import colony as colony_mod
from p2pnode.colony import Colony
from p2pnode.identity import Identity

ME = Identity.from_seed(b"colony selection")
HALF_LIFE = 10**12


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(384).astype(np.float32)
    return v / np.linalg.norm(v)


def rate(colony: Colony, rng: np.random.Generator, now_ms: int, threshold: int = 2,
         favourite: bytes | None = None) -> list[colony_mod.Birth]:
    """One rating: random credits, the favourite (if any) credited most."""
    deltas = {a: float(rng.uniform(-0.5, 1.0)) for a in colony.agents}
    if favourite in deltas:
        deltas[favourite] = 1.0
    _, births, _ = colony.feedback(deltas, unit(rng), unit(rng), True, now_ms, HALF_LIFE,
                                   threshold, 0.005)
    return births


def test_derive_is_mutate_from_the_seed_bit_for_bit() -> None:
    w = Weights.initial(np.random.default_rng(1))
    got = derive(w, [(7, 0.01), (8, 0.002)])
    want = mutate(mutate(w, 0.01, np.random.default_rng(7)), 0.002, np.random.default_rng(8))
    assert got == want and got != w


def test_only_the_fittest_with_enough_good_ratings_divide() -> None:
    m = [Member(bytes([i]), fitness=float(i), good=5) for i in range(16)]
    assert parent(m, threshold=5) == bytes([15])
    tired = [Member(x.agent_id, x.fitness, good=0 if x.fitness >= 14 else 5) for x in m]
    assert parent(tired, threshold=5) is None  # the top eighth has not earned it yet
    assert parent([Member(b"a", -1.0, 9), Member(b"b", -2.0, 9)], threshold=1) is None
    assert parent([], threshold=1) is None


def test_culling_takes_the_idle_then_the_least_fit_never_the_last() -> None:
    m = [Member(b"old", 9.0, last_used_ms=0), Member(b"bad", -3.0, last_used_ms=900),
         Member(b"ok", 1.0, last_used_ms=900), Member(b"guest", 1.0, guest=True,
                                                     last_used_ms=900)]
    assert culled(m, cap=2, now_ms=1000, idle_ms=500) == [(b"old", "idle"),
                                                         (b"bad", "least fit")]
    assert culled(m[:1], cap=1, now_ms=10**9, idle_ms=1) == []
    assert culled(m[1:], cap=1, now_ms=1000, idle_ms=500)[1] == (b"guest", "least fit")


def test_a_stream_divides_rarely_and_only_the_fittest() -> None:
    rng = np.random.default_rng(5)
    colony = Colony(identity=ME, path=None, rng=np.random.default_rng(6))
    colony.start(1_000, 0.005)
    ratings = 600
    for k in range(ratings):
        births = rate(colony, rng, 2_000 + k, threshold=20)  # the DNA's default
        assert len(births) <= 1
        for b in births:
            colony.adopt(b, 2_000 + k, "here")
    divided = [e for e in colony.events if e["event"] == "divided"]
    # Before: every participant divided at 20 good ratings, ~0.5 divisions a rating.
    assert 0 < colony.counters["divided"] <= ratings // 10
    for e in divided:  # the parents stood above the population at their division
        assert e["fitness"] >= e["population_mean"]
    assert len(colony.agents) <= colony.max_agents


def test_a_child_is_stored_compactly_and_re_derived_bit_for_bit(tmp_path: Path) -> None:
    path = tmp_path / "agents.sqlite3"
    rng = np.random.default_rng(9)
    colony = Colony(identity=ME, path=path, rng=np.random.default_rng(10))
    colony.start(1_000, 0.005)
    favourite = next(iter(colony.agents))
    births: list[colony_mod.Birth] = []
    for k in range(20):
        births += rate(colony, rng, 2_000 + k, threshold=3, favourite=favourite)
    assert births, "the favourite never divided"
    child = births[0]
    assert child.agent.lineage.parent == favourite
    assert colony.adopt(child, 3_000, "here")[0]
    child_id = child.agent.agent_id
    born = child.agent.weights
    colony.close()
    with sqlite3.connect(path) as db:
        genome, base, steps = db.execute("SELECT genome, base, steps FROM agents WHERE id = ?",
                                         (child_id,)).fetchone()
        assert genome == b"" and base is not None and len(steps) < 64  # no 400 KB copy
    again = Colony(identity=ME, path=path)
    assert child_id in again.agents  # its lineage's genome hash checked the derivation
    assert again.agents[child_id].weights == born  # bit for bit
    assert again.agents[favourite].interactions == 20
    again.close()


def test_learnt_weights_and_standing_are_written_rarely(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(colony_mod, "FLUSH_STEPS", 10)
    monkeypatch.setattr(colony_mod, "STANDING_EVERY", 4)
    path = tmp_path / "agents.sqlite3"
    rng = np.random.default_rng(11)
    colony = Colony(identity=ME, path=path, rng=np.random.default_rng(12))
    colony.start(1_000, 0.005)

    def stored_interactions() -> set[int]:
        with sqlite3.connect(path) as db:
            return {r[0] for r in db.execute("SELECT interactions FROM agents")}

    for k in range(3):
        rate(colony, rng, 2_000 + k, threshold=10**6)
    assert stored_interactions() == {0} and "learned_flushed" not in colony.counters
    rate(colony, rng, 2_010, threshold=10**6)
    assert stored_interactions() == {4}
    for k in range(6):
        rate(colony, rng, 2_020 + k, threshold=10**6)
    assert colony.counters["learned_flushed"] == len(colony.agents)  # 10 steps each
    with sqlite3.connect(path) as db:  # one set of weights each, the old ones gone
        assert db.execute("SELECT count(*) FROM weights").fetchone()[0] == \
            1 + len(colony.agents)  # + the seed agents' base
    colony.close()


def test_a_store_from_before_keeps_its_agents_and_moves_on(tmp_path: Path) -> None:
    """A row of the old shape (its genome whole, learnt weights inline) loads;
    its next learnt weights go to the weights table, the inline copy goes."""
    from agents.genome import new_agent, to_onnx
    from agents.store import pack_weights

    path = tmp_path / "agents.sqlite3"
    birth = Weights.initial(np.random.default_rng(13))
    agent = new_agent(ME, birth, created_ms=1_000)
    learnt = mutate(birth, 0.01, np.random.default_rng(14))
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE agents(id BLOB PRIMARY KEY, lineage BLOB NOT NULL, genome BLOB"
                   " NOT NULL, specialty BLOB NOT NULL, interactions INTEGER NOT NULL, fitness"
                   " REAL NOT NULL, fitness_ms INTEGER NOT NULL, good INTEGER NOT NULL,"
                   " last_used_ms INTEGER NOT NULL, learned BLOB)")
        db.execute("INSERT INTO agents VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (agent.agent_id, agent.lineage.wire, to_onnx(birth),
                    np.zeros(384, np.float32).tobytes(), 3, 1.5, 1_000, 2, 1_000,
                    pack_weights(learnt)))
    colony = Colony(identity=ME, path=path)
    assert colony.agents[agent.agent_id].weights == learnt
    colony.feedback({agent.agent_id: 0.5}, unit(np.random.default_rng(15)),
                    unit(np.random.default_rng(16)), True, 2_000, HALF_LIFE, 10**6, 0.005)
    now = colony.agents[agent.agent_id].weights
    colony.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT learned IS NULL, version IS NOT NULL FROM agents"
                          ).fetchone() == (1, 1)
    again = Colony(identity=ME, path=path)
    assert again.agents[agent.agent_id].weights == now
    assert again.agents[agent.agent_id].interactions == 4
    again.close()


def test_a_batch_of_standing_is_one_transaction_and_all_or_nothing(tmp_path: Path) -> None:
    """On the colony's autocommit connection, executemany committed each row
    alone (a WAL frame and a commit per agent); now one transaction."""
    from agents.store import Store
    from p2pnode.storage import connect_wal

    path = tmp_path / "agents.sqlite3"
    colony = Colony(identity=ME, path=path, rng=np.random.default_rng(17))
    colony.start(1_000, 0.005)
    ids = list(colony.agents)
    colony.close()
    con = connect_wal(path, colony_mod.SCHEMA)
    store = Store(con)
    begun: list[str] = []
    con.set_trace_callback(lambda sql: begun.append(sql) if sql.startswith("BEGIN") else None)
    spec = np.zeros(384, np.float32).tobytes()
    store.standing([(spec, 7, 0.5, 2_000, 1, 2_000, i) for i in ids])
    assert len(begun) == 1 and len(ids) > 1
    with pytest.raises(OverflowError):  # the last row cannot be bound: none is written
        store.standing([(spec, 9, 0.5, 2_000, 1, 2_000, i) for i in ids[:-1]]
                       + [(spec, 2**70, 0.5, 2_000, 1, 2_000, ids[-1])])
    assert {r[0] for r in con.execute("SELECT interactions FROM agents")} == {7}
    assert not con.in_transaction
    con.close()


def test_unchanged_weights_are_held_once_as_views_of_the_pool(tmp_path: Path) -> None:
    """The pool's stack is the one copy of an agent's weights (agents.pool):
    what the colony keeps as saved is that same object while the agent has
    not learnt since, its own arrays only once it has."""
    colony = Colony(identity=ME, path=tmp_path / "agents.sqlite3",
                    rng=np.random.default_rng(13))
    colony.start(1_000, 0.005)

    def check() -> int:
        stacked = colony.pool._state[1]["W1"]
        learnt = 0
        for agent_id, agent in colony.agents.items():
            assert np.shares_memory(agent.weights.w1, stacked)
            kept = colony.kept[agent_id]
            assert (kept.saved is agent.weights) == (kept.unsaved == 0)
            # never a view that would keep an older stack whole
            assert kept.saved.w1.base is None or np.shares_memory(kept.saved.w1, stacked)
            learnt += kept.unsaved > 0
        return learnt

    assert check() == 0
    rng = np.random.default_rng(14)
    for k in range(5):
        rate(colony, rng, 2_000 + k, threshold=3, favourite=next(iter(colony.agents)))
        assert check() > 0
    colony.close()
