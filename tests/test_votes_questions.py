"""A vote acts on its own question only (real daemon, real encoder).

Measured before: a down vote on "…a string to a number?" rejected the right
answer of "…a number to a string?" (cosine 0.99); an up vote on an answer for
question B undid its rejection for question A when the two shared an LSH
bucket (one counter for both). Now a vote's region is its question itself,
and "the same question" is the same words whatever the case and marks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, make_daemon

TO_STRING = "How do I convert a number to a string?"
TO_NUMBER = "How do I convert a string to a number?"
MEMORIES = [
    "Call str(n) to convert a number to a string: str(42) gives '42'.",
    "Call int(s) to convert a string to a number: int('42') gives 42.",
    "Debian keeps the system logs under /var/log, and journalctl reads the journal.",
    "Log rotation on Debian is done by logrotate, configured in /etc/logrotate.d.",
    "The kernel log can be read with dmesg or journalctl -k.",
]


@pytest.fixture(scope="module")
def spore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = make_daemon(Path(tmp_path_factory.mktemp("votes")))
    d.start()
    for text in MEMORIES:
        d.cli_json("teach", text)
    yield d
    d.stop()


def _order(d: Daemon, question: str) -> tuple[str, list[str]]:
    got = d.cli_json("ask", question, "--top", str(len(MEMORIES)))
    return got["answer_id"], [s["id"] for s in got["sources"]]


def test_a_down_vote_leaves_the_opposite_question_alone(spore: Daemon) -> None:
    _, before = _order(spore, TO_STRING)
    answer, wrong_order = _order(spore, TO_NUMBER)
    spore.cli_json("rate", answer, "down")
    _, after = _order(spore, TO_NUMBER)
    assert after[0] != wrong_order[0] and after[-1] == wrong_order[0]
    assert _order(spore, TO_STRING)[1] == before  # 0.99 alike, yet another question


def test_the_same_words_in_another_case_and_marks_are_the_same_question(
        spore: Daemon) -> None:
    question = "Where does Debian keep its logs?"
    answer, before = _order(spore, question)
    spore.cli_json("rate", answer, "down")
    got = spore.cli_json("ask", "  where does debian KEEP its logs", "--top", "5")
    assert got["sources"][0]["id"] != before[0]
    assert [s["id"] for s in got["sources"] if s.get("rejected")] == [before[0]]


def test_an_up_vote_for_another_question_does_not_undo_a_rejection(spore: Daemon) -> None:
    question_a, question_b = "How do I read the kernel log?", "Can dmesg or journalctl -k read it?"
    answer, before = _order(spore, question_a)
    spore.cli_json("rate", answer, "down")  # its top-1 is wrong for A
    rejected = before[0]
    for _ in range(3):  # ... and right for B, again and again
        answer_b, order_b = _order(spore, question_b)
        assert order_b[0] == rejected
        spore.cli_json("rate", answer_b, "up")
    _, after = _order(spore, question_a)
    assert after[0] != rejected and after[-1] == rejected
