"""p2pnode.answering, pure: the routing of an ask, the prompt, the citations
of a generated text, the origin of the memory it becomes, and what a hostile
provider's text is reduced to."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from p2pnode import answering as a
from p2pnode.records import MAX_ORIGIN_CHARS

IDS = [f"{i:x}" * 64 for i in range(1, 6)]  # five fake memory ids, 64 hex digits each
SOURCES: list[dict[str, Any]] = [{"id": IDS[0], "question": "When do backups run?",
            "text": "The backup job runs restic every night at 02:00."},
           {"id": IDS[1], "question": "", "text": "Restic keeps 30 daily snapshots."},
           {"id": IDS[2], "question": "", "text": "Rated down here.", "rejected": True}]


def route(**kw: object) -> a.Decision:
    args: dict[str, object] = {"held": True, "abstained": False, "confidence": 0.5,
                               "rated_up": False, "generate": True, "threshold": 0.6}
    return a.decide(**(args | kw))  # type: ignore[arg-type]


def test_answering_imports_no_io_framework() -> None:
    code = ("import sys, p2pnode.answering\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('asyncio', 'aiohttp', 'kademlia', 'onnxruntime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


# -- routing ---------------------------------------------------------------------------
def test_confident_memory_answers_without_generating() -> None:
    assert route(confidence=0.6).route == "memory"  # at the threshold: memory
    assert route(confidence=0.95).route == "memory"
    assert route(confidence=0.59).route == "generated"


def test_rated_up_for_this_question_answers_from_memory_whatever_the_confidence() -> None:
    got = route(confidence=0.01, rated_up=True)
    assert got.route == "memory" and "rated up" in got.why


def test_abstained_is_unknown_unless_ungrounded_answers_are_allowed() -> None:
    assert route(abstained=True).route == "unknown"
    assert route(held=False).route == "unknown"
    ungrounded = route(abstained=True, ungrounded=True)
    assert ungrounded.route == "generated" and not ungrounded.grounded
    # No generator: "I don't know" stays, allowed or not.
    assert route(abstained=True, ungrounded=True, generate=False).route == "unknown"


def test_without_a_generator_an_unsure_memory_still_answers_as_today() -> None:
    assert route(confidence=0.1, generate=False).route == "memory"


def test_a_nan_confidence_never_routes_to_memory_by_itself() -> None:
    assert route(confidence=math.nan).route == "generated"
    assert route(confidence=math.nan, generate=False).route == "memory"


def test_the_threshold_is_a_named_constant_in_the_unit_interval() -> None:
    assert 0.0 < a.MEMORY_CONFIDENCE < 1.0
    assert a.decide(held=True, abstained=False, confidence=a.MEMORY_CONFIDENCE,
                    rated_up=False, generate=True).route == "memory"


# -- the prompt ------------------------------------------------------------------------
def test_passages_are_numbered_as_the_sources_and_skip_the_rejected() -> None:
    given = a.passages(SOURCES)
    assert [(p.n, p.memory_id) for p in given] == [(1, IDS[0]), (2, IDS[1])]
    assert given[0].text.startswith("When do backups run? The backup job")


def test_the_prompt_numbers_the_passages_and_instructs_to_cite_them() -> None:
    messages = a.prompt("when do backups run?", a.passages(SOURCES))
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "[1]" in messages[0]["content"] and "do not know" in messages[0]["content"]
    user = messages[1]["content"]
    assert "[1] When do backups run? The backup job runs restic" in user
    assert "[2] Restic keeps 30 daily snapshots." in user
    assert "[3]" not in user and "Rated down" not in user
    assert user.rstrip().endswith("cite the passages you used, like [1].")
    assert "Question: when do backups run?" in user


def test_the_prompt_is_bounded_whatever_the_passages_and_question() -> None:
    huge = [{"id": IDS[i], "text": ("word " * 40_000) + "\x1b[31m\n\u202e"} for i in range(5)]
    messages = a.prompt("why? " * 10_000, a.passages(huge))
    user = messages[1]["content"]
    assert len(user) < a.PASSAGES_CHARS + a.QUESTION_CHARS + 400
    assert "\x1b" not in user and "\u202e" not in user
    assert user.count("\n[") == 5  # five passages, one line each


def test_no_passage_gives_the_ungrounded_instruction() -> None:
    messages = a.prompt("who painted the Mona Lisa?", [])
    assert messages[0]["content"] == a.SYSTEM_UNGROUNDED
    assert "Passages" not in messages[1]["content"]


# -- citations -------------------------------------------------------------------------
def test_citations_map_markers_to_memory_ids_in_order_first_cited() -> None:
    given = a.passages(SOURCES)
    got = a.cite("Nightly at 02:00 [2][1], as [1] says; see also [1, 2].", given)
    assert got.cited == ((2, IDS[1]), (1, IDS[0]))
    assert got.json() == [{"n": 2, "id": IDS[1], "by": "marker"},
                          {"n": 1, "id": IDS[0], "by": "marker"}]
    assert got.ignored == 0 and not got.inferred


def test_out_of_range_and_malformed_markers_are_ignored_and_counted() -> None:
    given = a.passages(SOURCES)  # [1] and [2]; [3] was rejected, so it is no passage
    got = a.cite("[0] [3] [999] [99999999] [1a] [2.5] [#1] [-1] [sic] [] [1", given)
    assert got.cited == ()
    # [0] [3] [999]: out of range; [99999999] [1a] [2.5] [#1] [-1]: malformed;
    # [sic] has no digit and [] no content: not a citation at all.
    assert got.ignored == 8


def test_without_a_marker_the_passages_whose_words_it_took_are_cited_as_inferred() -> None:
    given = a.passages(SOURCES)
    got = a.cite("Restic runs the backup job at 02:00 every night.", given)
    assert got.cited == ((1, IDS[0]),) and got.inferred
    assert got.json() == [{"n": 1, "id": IDS[0], "by": "words"}]
    # Too few words, or words of no passage: nothing is inferred.
    assert a.cite("At night.", given).cited == ()
    assert a.cite("The cat sleeps on the warm windowsill all afternoon.", given).cited == ()
    # A marker that names a passage wins over the words.
    assert a.cite("Restic runs the backup job at 02:00 every night [2].", given).cited == (
        (2, IDS[1]),)
    # Markers naming nothing are still counted when words decide.
    assert a.cite("Restic runs the backup job at 02:00 every night [7].", given).ignored == 1


def test_stored_text_renumbers_the_markers_as_its_origin_lists_the_ids() -> None:
    given = a.passages(SOURCES)
    text = "At 02:00 [2] by restic [1] [9], see [2, 1]."
    cited = a.cite(text, given)
    assert a.stored_text(text, cited) == "At 02:00 [1] by restic [2] , see [1, 2]."
    assert a.origin("SmolLM2", cited.ids) == f"generated by SmolLM2 from {IDS[1]},{IDS[0]}"


@given(st.text(max_size=300))
def test_citations_of_any_text_name_only_passages_given(text: str) -> None:
    given = a.passages(SOURCES)
    got = a.cite(text, given)
    assert {n for n, _ in got.cited} <= {1, 2}
    assert all(memory_id in IDS for _, memory_id in got.cited)
    assert got.ignored >= 0
    a.stored_text(text, got)  # never raises


# -- the memory it becomes ---------------------------------------------------------------
def test_origin_is_one_bounded_line_whatever_the_model_name() -> None:
    hostile = "evil\n\x1b[2J\u202emodel" + "x" * 5000
    got = a.origin(hostile, IDS * 100)
    assert len(got) <= MAX_ORIGIN_CHARS
    assert "\n" not in got and "\x1b" not in got and "\u202e" not in got
    assert got.startswith("generated by evil2Jmodelxxx") and got.endswith(" more")
    assert a.origin("", []) == "generated by an unnamed model"
    assert a.origin("m", [], grounded=False) == "generated by m (ungrounded)"
    assert a.origin("m", ["not hex!", IDS[0]]) == f"generated by m from {IDS[0]}"


@given(st.text(max_size=200), st.lists(st.sampled_from(IDS), max_size=40))
def test_origin_always_fits_what_records_accept(model: str, ids: list[str]) -> None:
    got = a.origin(model, ids)
    assert len(got) <= MAX_ORIGIN_CHARS
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in got)


def test_clean_strips_what_a_terminal_or_log_would_obey() -> None:
    text = "ok\x1b[31mred\x07\x00 \u202eevil\u200b\ud800 fine\nnext\tcol\x85"
    assert a.clean(text) == "ok[31mred evil fine\nnext\tcol"
    assert a.bounded("x" * 10, 4) == ("xxxx", True)
    assert a.bounded("xy", 4) == ("xy", False)
