""""I don't know" (p2pnode.ranking.abstains): with the real encoder, a spore
taught a page of the Debian FAQ abstains on a question it holds nothing for
(answer null, confidence 0, the nearest memories as "maybe", an answer id to
rate them by), answers one it holds, and answers after an up vote on a maybe
for that very question; the daemon's API serves it as documented
(p2pnode.openapi) and `spore ask` exits 0. The pure rule at its edges.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.encoder import MODEL_NAME, Encoder, load_encoder
from cli.documents import chunk_text, faq_sections
from p2pnode import openapi, ranking
from p2pnode.node import TeachItem
from tests.conftest import Daemon
from tests.harness import alone
from tests.test_ask_inprocess import run

FAQ = Path("/usr/share/doc/debian/FAQ")
PAGE = "pkg-basics.en"
OFF_TOPIC = "What is the airspeed velocity of an unladen swallow?"
ALSO_OFF_TOPIC = "Who painted the Mona Lisa?"
ON_TOPIC = "How do I put a package on hold?"
needs_faq = pytest.mark.skipif(not FAQ.is_dir(), reason="debian-faq is not installed")


# ------------------------------------------------------------------ the pure rule

def _scored(q_cos: float, *, moved: float | None = None, memory: bytes = b"m") -> ranking.Scored:
    """A top candidate whose vector is at cosine `q_cos` to Q (its `cosine`
    and score as the learnt stage and the votes may have moved them)."""
    vec = np.array([q_cos, math.sqrt(max(0.0, 1 - q_cos * q_cos)), 0.0], np.float32)
    shown = q_cos if moved is None else moved
    return ranking.Scored(ranking.Candidate(memory, shown, vec, {}), 0, shown, False)


Q = np.array([1.0, 0.0, 0.0], np.float32)
NOBODY = ranking.Opinions({})
CUT = ranking.abstain_below(MODEL_NAME)


def test_nothing_ranked_abstains() -> None:
    assert ranking.abstains(Q, [], NOBODY, CUT)
    assert ranking.abstains(Q, [], NOBODY, -math.inf)


def test_the_cutoff_is_the_measured_one_for_its_encoder_only() -> None:
    assert CUT == ranking.ABSTAIN_BELOW[MODEL_NAME] == 0.28
    assert ranking.abstain_below("fake-bag-of-stems") == -math.inf  # never measured


def test_the_top_candidate_at_the_cutoff_answers_and_below_it_abstains() -> None:
    assert not ranking.abstains(Q, [_scored(CUT + 1e-3)], NOBODY, CUT)
    assert ranking.abstains(Q, [_scored(CUT - 1e-3)], NOBODY, CUT)
    assert ranking.abstains(Q, [_scored(-0.5)], NOBODY, CUT)
    # Only the top one counts: a near memory ranked second does not make it known.
    assert ranking.abstains(Q, [_scored(0.1), _scored(0.9, memory=b"n")], NOBODY, CUT)


def test_the_encoder_cosine_is_read_before_votes_and_the_learnt_stage() -> None:
    """A candidate's `cosine` and score may have been moved; the rule reads
    the memory's own vector against the question."""
    assert ranking.abstains(Q, [_scored(0.1, moved=0.9)], NOBODY, CUT)
    assert not ranking.abstains(Q, [_scored(0.9, moved=0.1)], NOBODY, CUT)


def test_an_up_vote_for_this_question_makes_it_known_whatever_its_cosine() -> None:
    assert not ranking.abstains(Q, [_scored(0.05)], ranking.Opinions({b"m": 0.33}), CUT)
    assert ranking.abstains(Q, [_scored(0.05)], ranking.Opinions({b"other": 0.33}), CUT)
    assert ranking.abstains(Q, [_scored(0.05)], ranking.Opinions({b"m": 0.0}), CUT)
    assert ranking.abstains(Q, [_scored(0.05)], ranking.Opinions({b"m": -0.5}), CUT)


def test_nan_abstains_and_never_raises() -> None:
    nan_q = np.full(3, np.nan, np.float32)
    assert ranking.abstains(nan_q, [_scored(0.9)], NOBODY, CUT)
    assert ranking.abstains(nan_q, [_scored(0.9)], NOBODY, -math.inf)
    top = _scored(0.9)
    broken = ranking.Scored(ranking.Candidate(b"m", math.nan, np.full(3, np.nan, np.float32),
                                              {}), 0, math.nan, False)
    assert ranking.abstains(Q, [broken], NOBODY, CUT)
    assert ranking.abstains(Q, [top], ranking.Opinions({b"m": math.nan}), math.nan)
    assert ranking.abstains(Q, [_scored(0.05)], ranking.Opinions({b"m": math.nan}), CUT)


# ------------------------------------------------------------------ the real encoder

@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return load_encoder()


def _chunks() -> list[tuple[str, str]]:
    """(origin, text) of every chunk of one FAQ page, as `spore ingest` cuts it."""
    sections = faq_sections((FAQ / f"{PAGE}.html").read_text(encoding="utf-8"))
    return [(f"{PAGE}#{i}.{j}", c) for i, (_, a) in enumerate(sections)
            for j, c in enumerate(chunk_text(a))]


def _is_unknown(out: dict[str, Any]) -> None:
    assert out["abstained"] is True and out["answer"] is None and out["confidence"] == 0.0
    assert out["answer_id"] and out["sources"]
    assert all(s["maybe"] is True for s in out["sources"])


def _is_answer(out: dict[str, Any]) -> None:
    assert out["abstained"] is False and out["answer"] == out["sources"][0]["text"]
    assert 0.0 < out["confidence"] <= 1.0
    assert not any("maybe" in s for s in out["sources"])


@needs_faq
def test_unknown_known_and_an_up_vote_on_a_maybe(tmp_path: Path, encoder: Encoder) -> None:
    async def scenario() -> None:
        async with alone(tmp_path / "s", encoder) as spore:  # type: ignore[arg-type]
            await spore.teach([TeachItem(text, origin=origin) for origin, text in _chunks()])
            unknown = await spore.ask(OFF_TOPIC)
            _is_unknown(unknown)
            on_topic = await spore.ask(ON_TOPIC)
            _is_answer(on_topic)
            assert "hold" in on_topic["answer"]
            # An up vote on the first maybe: known for this very question next time.
            maybe = unknown["sources"][0]
            await spore.rate(unknown["answer_id"], True)
            known = await spore.ask(OFF_TOPIC)
            _is_answer(known)
            assert known["sources"][0]["id"] == maybe["id"]
            _is_unknown(await spore.ask(ALSO_OFF_TOPIC))  # another question: still unknown
            assert spore.counters["abstained"] == 2
    run(scenario)


@needs_faq
def test_the_api_serves_it_as_documented_and_the_cli_exits_0(daemon: Daemon) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    daemon.start()
    daemon.json("POST", "/v1/ingest", {"chunks": [{"text": t, "origin": o}
                                                  for o, t in _chunks()]})
    schema = openapi.OPENAPI["paths"]["/v1/ask"]["post"]["responses"]["200"]["content"][
        "application/json"]["schema"]
    code, unknown = daemon.http("POST", "/v1/ask", {"question": OFF_TOPIC, "top": 5})
    assert code == 200
    jsonschema.validate(unknown, schema)
    _is_unknown(unknown)
    code, answer = daemon.http("POST", "/v1/ask", {"question": ON_TOPIC})
    assert code == 200
    jsonschema.validate(answer, schema)
    _is_answer(answer)
    res = daemon.cli("ask", OFF_TOPIC, "--json")
    assert res.returncode == 0, res.stderr
    _is_unknown(json.loads(res.stdout))
    # A person reads that it does not know, the maybes with their words, and
    # how to make the first one known; never "None" where an answer would be.
    res = daemon.cli("ask", OFF_TOPIC, "--top", "5")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("I don't know") and "None" not in res.stdout
    maybe = [line for line in lines if line.startswith("maybe")]
    assert len(maybe) == 1 and "spore rate " in maybe[0] and " up" in maybe[0]
    assert sum(line.lstrip().startswith("[") for line in lines) == len(unknown["sources"])
    first = " ".join(unknown["sources"][0]["text"].split())[:40]
    assert first in res.stdout
    res = daemon.cli("ask", ON_TOPIC)
    assert res.returncode == 0 and not res.stdout.startswith("I don't know")
    assert "confidence" in res.stdout
