"""Chat logs and subtitles for `spore ingest`: parsers, hostile files, a real daemon."""

from __future__ import annotations

import itertools
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.documents import (
    DEFAULT_MAX_BYTES,
    Chunk,
    IngestError,
    expand_paths,
    file_chunks,
)
from cli.transcripts import (
    MAX_TURN_BYTES,
    Piece,
    Transcript,
    TranscriptError,
    parse_chat,
    parse_subtitles,
    parse_transcript,
)
from tests.conftest import Daemon, make_daemon

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def jsonl(*values: object) -> str:
    return "".join(json.dumps(value) + "\n" for value in values)


# --------------------------------------------------------------- chat logs

# Shaped like OpenAI's fine-tuning / chat-completions logs: a system prompt,
# a tool call (content null) answered by a tool, extra keys, a weight.
OPENAI_JSONL = jsonl(
    {"messages": [
        {"role": "system", "content": "You are a helpful assistant for Sporemind."},
        {"role": "user", "content": "Which port does the local API listen on?"},
        {"role": "assistant", "content": "It listens on 127.0.0.1:7150 by default.",
         "weight": 1},
        {"role": "user", "content": "What is the weather in Lyon?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": "{\"city\": \"Lyon\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
        {"role": "assistant", "content": "It is 21 °C in Lyon right now."},
    ]},
    {"messages": [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "How do I rate an answer?"},
        {"role": "assistant", "content": "Run `spore rate <answer id> up` or down."},
    ], "metadata": {"source": "support"}},
)


def test_openai_jsonl_pairs_each_question_with_its_answer() -> None:
    found = parse_transcript("support.jsonl", OPENAI_JSONL)
    assert found.pieces == [
        Piece("It listens on 127.0.0.1:7150 by default.",
              "Which port does the local API listen on?", "#1:1"),
        Piece("It is 21 °C in Lyon right now.", "What is the weather in Lyon?", "#1:2"),
        Piece("Run `spore rate <answer id> up` or down.", "How do I rate an answer?", "#2:1"),
    ]
    # The tool call's null content is a turn without text; system, developer
    # and tool turns are passed over without a word.
    assert found.left_out == {"turns without text": 1}


# Shaped like a ChatGPT-style export: a list of conversations with titles
# and times, content as a list of parts (text and images).
CHATGPT_LIST = [
    {"title": "Backups", "create_time": 1714000000.5, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "When does the backup run?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Every night at 02:00,"},
            {"type": "text", "text": "with restic."}]},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": "That screenshot shows a failed run."},
        {"role": "user", "content": "Thanks!"},
    ]},
    {"title": "Split question", "messages": [
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "I have a question about peers."},
        {"role": "user", "content": "How many replicas hold a memory?"},
        {"role": "assistant", "content": "Three replicas; a write needs two."},
    ]},
]


def test_chatgpt_style_list_joins_parts_and_counts_what_it_leaves_out() -> None:
    found = parse_transcript("export.json", json.dumps(CHATGPT_LIST))
    assert found.pieces == [
        Piece("Every night at 02:00,\nwith restic.", "When does the backup run?", "#1:1"),
        Piece("Three replicas; a write needs two.",
              "I have a question about peers.\n\nHow many replicas hold a memory?", "#2:1"),
    ]
    assert found.left_out == {
        "turns without text": 1,  # the image-only question
        "answers without a question": 2,  # the answer to it, and the greeting
        "questions without an answer": 1,  # "Thanks!"
    }


def test_one_object_a_bare_list_and_one_message_per_line_are_chat_logs() -> None:
    messages = [{"role": "User", "content": "What is a spore?"},
                {"role": "Assistant", "content": "One daemon of the swarm."}]
    expected = [Piece("One daemon of the swarm.", "What is a spore?", "#1:1")]
    assert parse_chat(json.dumps({"messages": messages}), lines=False).pieces == expected
    assert parse_chat(json.dumps(messages), lines=False).pieces == expected
    assert parse_chat(jsonl(*messages), lines=True).pieces == expected
    assert parse_chat(jsonl(messages, messages), lines=True).pieces == [
        expected[0], Piece(expected[0].text, expected[0].question, "#2:1")]


def test_jsonl_conversations_are_numbered_by_line_and_split_at_newlines_only() -> None:
    line = {"messages": [{"role": "user", "content": "line\u2028separator?"},
                         {"role": "assistant", "content": "kept\u2029whole"}]}
    text = "\ufeff\n" + json.dumps(line, ensure_ascii=False) + "\r\n\n" + json.dumps(line)
    found = parse_chat(text, lines=True)
    assert [(p.anchor, p.question, p.text) for p in found.pieces] == [
        ("#2:1", "line\u2028separator?", "kept\u2029whole"),
        ("#4:1", "line\u2028separator?", "kept\u2029whole")]


@pytest.mark.parametrize(("content", "reason"), [
    (42, "turns without text"),
    ({"text": "a dict is not a part list"}, "turns without text"),
    ("   \n\t", "turns without text"),
    ([], "turns without text"),
    ([{"type": "text", "text": 7}], "turns without text"),
    ("\ud800 lone surrogate", "turns with invalid characters (lone surrogates)"),
    ("x" * (MAX_TURN_BYTES + 1), "turns over 16 KiB"),
    ("é" * (MAX_TURN_BYTES // 2 + 1), "turns over 16 KiB"),  # characters fit, bytes do not
])
def test_unusable_answers_are_left_out_and_counted(content: object, reason: str) -> None:
    text = json.dumps({"messages": [
        {"role": "user", "content": "A question?"}, {"role": "assistant", "content": content},
        {"role": "user", "content": "Next?"}, {"role": "assistant", "content": "Next answer."}]})
    found = parse_chat(text, lines=False)
    assert found.pieces == [Piece("Next answer.", "Next?", "#1:2")]
    assert found.left_out == {reason: 1, "questions without an answer": 1}


def test_a_turn_of_exactly_the_limit_is_kept_and_an_exchange_over_it_is_not() -> None:
    full = "\U0001f344" * (MAX_TURN_BYTES // 4)  # 16 KiB of UTF-8 exactly
    half = "a" * (MAX_TURN_BYTES // 2 + 1)
    text = json.dumps({"messages": [
        {"role": "user", "content": "Mushrooms?"}, {"role": "assistant", "content": full},
        {"role": "user", "content": half}, {"role": "user", "content": half},
        {"role": "assistant", "content": "joined question too long"},
        {"role": "narrator", "content": "?"}]})
    found = parse_chat(text, lines=False)
    assert found.pieces == [Piece(full, "Mushrooms?", "#1:1")]
    assert found.left_out == {"exchanges over 16 KiB": 1, "turns with an unknown role": 1}


@pytest.mark.parametrize(("name", "text", "reason"), [
    ("a.json", "", None),
    ("a.json", "[]", None),
    ("a.json", "{\"messages\": [1]}", "not a chat log, message 1: not a message (an object "
                                      "with a string 'role')"),
    ("a.json", "{\"name\": \"my-package\", \"version\": \"1.0.0\"}",
     "not a chat log: no 'messages' list"),
    ("a.json", "{\"messages\": \"hi\"}",
     "not a chat log: not a conversation (an object with a 'messages' list)"),
    ("a.json", "3.5", "not a chat log: the JSON is a number, not an object with 'messages' "
                      "or a list"),
    ("a.json", "[{\"messages\": []}, {\"title\": \"x\"}]", "conversation 2: no 'messages' list"),
    ("a.json", "[{\"role\": \"user\"}, {\"content\": \"no role\"}]",
     "message 2: not a message (an object with a string 'role')"),
    ("a.json", "{\"messages\": [{\"role\": \"user\",\n \"content\": \"hi\"}\n",
     "not valid JSON (Expecting ',' delimiter at line 3, column 1)"),
    ("a.jsonl", "{\"messages\": []}\n{\"messages\": []}\n{\"messages\": [}\n",
     "line 3: not valid JSON (Expecting value at column 15)"),
    ("a.jsonl", "{\"messages\": []}\n[1, 2]\n", "line 2, message 1: not a message (an object "
                                                "with a string 'role')"),
    ("a.jsonl", "{\"role\": \"user\", \"content\": \"q\"}\n{\"messages\": []}\n",
     "line 2: not a message (an object with a string 'role')"),
    ("a.json", "1" * 5000, "not valid JSON (Exceeds the limit (4300 digits) for integer string "
                           "conversion"),
])
def test_a_file_that_is_no_chat_log_says_precisely_why(
    name: str, text: str, reason: str | None
) -> None:
    if reason is None:
        assert parse_transcript(name, text) == Transcript([], {})
        return
    with pytest.raises(TranscriptError) as info:
        parse_transcript(name, text)
    assert info.value.reason.startswith(reason)
    assert len(info.value.reason) < 200


# --------------------------------------------------------------- subtitles

# Shaped like YouTube's automatic captions: a header with metadata, cue
# settings, word timings in <c> tags, each line shown twice (rolling), tiny
# 10 ms cues; plus what authored WebVTT holds: STYLE, NOTE, ids, voices.
YOUTUBE_VTT = """WEBVTT
Kind: captions
Language: en

STYLE
::cue(.yellow) { color: yellow; }

NOTE generated by the recorder,
two lines long

00:00:00.000 --> 00:00:02.350 align:start position:0%
\x20
so<00:00:00.240><c> today</c><00:00:00.480><c> we're</c><00:00:00.960><c> going</c>

00:00:02.350 --> 00:00:02.360 align:start position:0%
so today we're going
\x20

00:00:02.360 --> 00:00:05.120 align:start position:0%
so today we're going
to<00:00:02.560><c> talk</c><00:00:02.800><c> about</c><00:00:03.120><c> spores</c>

intro-4
00:00:05.120 --> 00:00:07.000 line:90% size:80%
<v.loud Ada>Fish &amp; chips &lt;3 caf&eacute;</v>
<c.yellow>in yellow</c> &#8212; done

01:02:03.500 --> 01:02:04.000
after a long break
"""


def test_youtube_style_vtt_loses_its_markup_and_repeats_and_keeps_its_times() -> None:
    found = parse_transcript("talk.vtt", YOUTUBE_VTT)
    assert found.pieces == [
        Piece("so today we're going to talk about spores Ada: Fish & chips <3 café "
              "in yellow — done", "", "@00:00:00-00:00:07"),
        Piece("after a long break", "", "@01:02:03-01:02:04"),  # a silence ends a passage
    ]
    assert found.left_out == {}


SRT_CRLF_BOM = (
    "\ufeff1\r\n00:00:01,000 --> 00:00:03,500\r\n<i>Welcome to the</i>\r\n<b>swarm.</b>\r\n\r\n"
    "00:00:04,000 --> 00:00:05,000\r\n{\\an8}No index above me.\r\n\r\n"
    "3\r\n00:00:05,200 --> 00:00:06,000 X1:100 X2:200 Y1:10 Y2:20\r\nA blank line\r\n\r\n"
    "inside a cue.\r\n4\r\n00:00:06,000 --> 00:00:07,9\r\nNo blank line before my index.\r\n"
)


def test_srt_with_crlf_bom_and_sloppy_blocks() -> None:
    found = parse_transcript("talk.SRT", SRT_CRLF_BOM)
    assert found.pieces == [Piece(
        "Welcome to the swarm. No index above me. A blank line inside a cue. "
        "No blank line before my index.", "", "@00:00:01-00:00:08")]
    assert found.left_out == {}


def cue_file(cues: list[tuple[int, int, str]]) -> str:
    """An SRT file of (start ms, end ms, text) cues."""
    def stamp(ms: int) -> str:
        seconds = ms // 1000
        return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d},{ms % 1000:03d}"
    return "".join(f"{n}\n{stamp(a)} --> {stamp(b)}\n{text}\n\n"
                   for n, (a, b, text) in enumerate(cues, 1))


def test_cues_merge_into_passages_of_the_target_size_with_their_time_ranges() -> None:
    sentence = "Peers exchange signed records and keep what they learn."  # 56 characters
    cues = [(k * 3000, k * 3000 + 2500, f"{k}. {sentence}") for k in range(60)]
    found = parse_subtitles(cue_file(cues), target_chars=800, max_chars=1500)
    assert 4 <= len(found.pieces) <= 6
    assert all(len(p.text) <= 800 for p in found.pieces)
    assert " ".join(p.text for p in found.pieces) == " ".join(text for _, _, text in cues)
    spans = [tuple(p.anchor[1:].split("-")) for p in found.pieces]
    assert (spans[0][0], spans[-1][1]) == ("00:00:00", "00:03:00")  # 179.5 s, rounded up
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))


def test_a_cue_longer_than_a_chunk_is_split_and_keeps_its_range() -> None:
    long_cue = " ".join(["word"] * 500)  # 2,499 characters
    found = parse_subtitles(cue_file([(0, 1000, "before"), (61_000, 62_500, long_cue)]),
                            target_chars=800, max_chars=1500)
    assert [p.anchor for p in found.pieces] == [
        "@00:00:00-00:00:01", "@00:01:01-00:01:03", "@00:01:01-00:01:03"]
    assert all(len(p.text) <= 1500 for p in found.pieces)
    assert " ".join(p.text for p in found.pieces[1:]) == long_cue


# ---------------------------------------------------------- hostile inputs


def test_invalid_timestamps_and_backward_cues_are_left_out_and_counted() -> None:
    text = ("1\n00:61:00,000 --> 00:62:00,000\nsixty-one minutes\n\n"
            "2\naa:bb:cc,000 --> 00:00:01,000\nletters\n\n"
            "3\n00:00:09,000 --> 00:00:08,000\nbackwards\n\n"
            "4\n00:00:01,000 --> 00:00:02,000\nkept\n\n"
            "5\n123456:00:00,000 --> 123456:00:01,000\nhuge hours\n")
    found = parse_subtitles(text)
    assert found.pieces == [Piece("kept", "", "@00:00:01-00:00:02")]
    assert found.left_out == {"cues with an unreadable time": 3,
                              "cues that end before they start": 1}


def test_cues_out_of_order_are_put_in_time_order() -> None:
    cues = [(20_000, 21_000, "third"), (0, 1000, "first"), (10_000, 11_000, "second"),
            (10_000, 10_500, "second, same start")]
    found = parse_subtitles(cue_file(cues))
    assert found.pieces == [
        Piece("first second second, same start third", "", "@00:00:00-00:00:21")]


def test_deeply_nested_json_is_refused_quickly() -> None:
    for text in ("[" * 1_000_000, "{\"messages\": " + "[" * 100_000 + "]" * 100_000 + "}"):
        began = time.monotonic()
        with pytest.raises(TranscriptError, match="JSON nested too deeply"):
            parse_chat(text, lines=False)
        assert time.monotonic() - began < 2
    deep_content = {"messages": [{"role": "user", "content": "q?"},
                                 {"role": "assistant", "content": [[[[[["deep"]]]]]]}]}
    assert parse_chat(json.dumps(deep_content), lines=False).left_out == {
        "turns without text": 1, "questions without an answer": 1}


def test_ten_megabyte_single_lines_are_handled_in_bounded_time() -> None:
    huge = "a" * (10 * 1024 * 1024)
    began = time.monotonic()
    chat = json.dumps({"messages": [{"role": "user", "content": "big?"},
                                    {"role": "assistant", "content": huge}]})
    assert parse_chat(chat, lines=True).left_out == {
        "turns over 16 KiB": 1, "questions without an answer": 1}
    with pytest.raises(TranscriptError, match="no subtitle cue"):
        parse_subtitles(huge)
    one_cue = parse_subtitles(f"00:00:00.000 --> 00:00:01.000 {huge}\n<i>{huge}</i>\n")
    assert one_cue == Transcript([], {"cues over 16 KiB": 1})
    assert time.monotonic() - began < 10


def test_nul_bytes_and_oversized_files_are_refused_whole(tmp_path: Path) -> None:
    nul = write(tmp_path / "talk.srt", b"1\n00:00:00,000 --> 00:00:01,000\nhi\x00there\n")
    with pytest.raises(IngestError, match=r"binary data \(NUL character at offset 34\)"):
        file_chunks(nul)
    big = write(tmp_path / "chat.jsonl", b"{\"messages\": [\"" + b"a" * DEFAULT_MAX_BYTES)
    with pytest.raises(IngestError, match="larger than 8 MiB"):
        file_chunks(big)
    latin1 = "1\n00:00:00,000 --> 00:00:01,000\ncafé\n".encode("cp1252")
    with pytest.raises(IngestError, match=r"not UTF-8 text \(byte 0xe9 at offset 35\)"):
        file_chunks(write(tmp_path / "old.srt", latin1))


# ------------------------------------------------------------- properties

SUFFIXES = ("a.json", "a.jsonl", "a.srt", "a.vtt")


def check_pieces(found: Transcript) -> None:
    for piece in found.pieces:
        assert piece.text.strip() and piece.text == piece.text.strip()
        assert len(piece.text.encode()) <= MAX_TURN_BYTES
        assert len(piece.question.encode()) <= MAX_TURN_BYTES
        assert not _CONTROL.search(piece.anchor)
        assert re.fullmatch(r"#\d+:\d+|@\d\d+:\d\d:\d\d-\d\d+:\d\d:\d\d", piece.anchor)
    assert all(count > 0 for count in found.left_out.values())


def parse_or_refuse(name: str, text: str) -> None:
    try:
        found = parse_transcript(name, text)
    except TranscriptError as exc:
        reason = exc.reason
    else:
        check_pieces(found)
        return
    assert reason and "\n" not in reason


@settings(max_examples=300, deadline=2000)
@given(st.sampled_from(SUFFIXES), st.text(max_size=2000))
def test_any_text_gives_pieces_or_the_one_error(name: str, text: str) -> None:
    parse_or_refuse(name, text)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=30) | st.sampled_from(["user", "assistant", "system", "text"]),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.sampled_from(["messages", "role", "content", "type", "text", "x"]),
                      inner, max_size=4),
    max_leaves=30)


@settings(max_examples=300, deadline=2000)
@given(st.lists(JSON_VALUES, min_size=1, max_size=4), st.booleans())
def test_any_json_gives_pieces_or_the_one_error(values: list[object], lines: bool) -> None:
    text = jsonl(*values) if lines else json.dumps(values[0])
    parse_or_refuse("a.jsonl" if lines else "a.json", text)


SUBTITLE_LINES = st.sampled_from([
    "", " ", "WEBVTT", "NOTE x", "STYLE", "1", "42", "00:00:01,000 --> 00:00:02,000",
    "00:01.5 --> 00:02.250 align:start", "99:99:99,999 --> 00:00:00,000", "--> -->",
    "01:00:00.000 --> 00:00:00.000", "<i>text</i>", "<c.red>x</c><00:00:01.000>", "&amp;&#0;",
    "{\\an8}top", "<v Bob>hi", "plain words", "\ufeffbom", "\r",
])


@settings(max_examples=300, deadline=2000)
@given(st.lists(SUBTITLE_LINES | st.text(max_size=20), max_size=40),
       st.sampled_from(["\n", "\r\n", "\r"]), st.sampled_from(["a.srt", "a.vtt"]))
def test_any_cue_soup_gives_pieces_or_the_one_error(
    lines: list[str], newline: str, name: str
) -> None:
    parse_or_refuse(name, newline.join(lines))


@settings(max_examples=150, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SUFFIXES), st.binary(max_size=3000))
def test_any_bytes_in_a_file_give_chunks_or_an_ingest_error(name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder) / name, data)
        try:
            found = file_chunks(path)
        except IngestError as exc:
            refused = exc
        else:
            assert all(chunk.origin.startswith(str(path)) for chunk in found.chunks)
            return
    assert refused.path == path and refused.reason


# ------------------------------------------------------ walking and reading


def test_walks_judge_chat_logs_and_subtitles_like_any_document(tmp_path: Path) -> None:
    root = tmp_path / "notes"
    write(root / "chat.jsonl", OPENAI_JSONL)
    write(root / "talk.vtt", YOUTUBE_VTT)
    write(root / "package.json", "{\"name\": \"x\"}")
    os.chmod(write(root / "private.srt", SRT_CRLF_BOM), 0o600)
    write(tmp_path / "outside.srt", SRT_CRLF_BOM)
    (root / "link.srt").symlink_to(tmp_path / "outside.srt")
    write(root / ".hidden" / "secret.json", "{}")
    listing = expand_paths([root])
    assert [f.path.name for f in listing.files] == ["chat.jsonl", "package.json", "talk.vtt"]
    assert {(p.name, r.split(" →")[0].split(" (")[0]) for p, r in listing.skipped} == {
        ("link.srt", "symlink leaves the named folders"),
        ("private.srt", "readable only by its owner")}
    chat = file_chunks(listing.files[0])
    assert chat.chunks[0] == Chunk(
        "It listens on 127.0.0.1:7150 by default.", f"{root}/chat.jsonl#1:1",
        "Which port does the local API listen on?")
    with pytest.raises(IngestError, match=r"package\.json: not a chat log: no 'messages' list"):
        file_chunks(listing.files[1])
    assert file_chunks(listing.files[2]).chunks[1].origin == f"{root}/talk.vtt@01:02:03-01:02:04"
    assert file_chunks(root / "private.srt").chunks  # named: read whatever its mode


def test_a_path_that_cannot_name_a_memory_is_refused_before_sending(tmp_path: Path) -> None:
    odd = write(tmp_path / "line\nbreak.srt", SRT_CRLF_BOM)
    with pytest.raises(IngestError, match="its path cannot name a memory"):
        file_chunks(odd)
    deep = tmp_path / ("d" * 250) / ("e" * 250) / ("f" * 250) / ("g" * 250)
    with pytest.raises(IngestError, match="one line of at most 1024 characters"):
        file_chunks(write(deep / "notes.txt", "text"))


# ------------------------------------------------------------ a real daemon


@pytest.fixture(scope="module")
def spore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = make_daemon(tmp_path_factory.mktemp("spore"))
    d.start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.stop()


def test_a_daemon_learns_questions_from_chats_and_times_from_subtitles(
    spore: Daemon, tmp_path: Path
) -> None:
    folder = tmp_path / "learnt"
    write(folder / "support.jsonl", OPENAI_JSONL)
    write(folder / "export.json", json.dumps(CHATGPT_LIST))
    write(folder / "talk.srt", cue_file([
        (62_000, 65_500, "Mycelium networks pass sugar and signals between trees."),
        (66_000, 70_000, "Foresters call it the wood wide web."),
    ]))
    write(folder / "broken.json", "{\"messages\": [")
    res = spore.cli("ingest", str(folder), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["files"], out["chunks"], out["new"]) == (3, 6, 6)
    assert out["skipped"] == [{"path": str(folder / "broken.json"), "reason":
                               "not valid JSON (Expecting value at line 1, column 15)"}]
    assert {"path": str(folder / "export.json"), "reason": "turns without text",
            "count": 1} in out["left_out"]
    assert f"left out of {folder / 'support.jsonl'}: 1 turns without text" in res.stderr
    assert spore.cli_json("ingest", str(folder))["new"] == 0  # the same exchanges again

    asked = spore.cli_json("ask", "How many replicas hold a memory?")
    assert asked["answer"] == "Three replicas; a write needs two."
    first = asked["sources"][0]
    assert first["question"] == ("I have a question about peers.\n\n"
                                 "How many replicas hold a memory?")
    assert first["origin"] == f"{folder / 'export.json'}#2:1"
    held = {m["origin"]: m for m in spore.json("GET", "/v1/memories?limit=1000")["memories"]}
    assert held[f"{folder / 'support.jsonl'}#1:2"]["question"] == "What is the weather in Lyon?"
    assert held[f"{folder / 'support.jsonl'}#1:2"]["text"] == "It is 21 °C in Lyon right now."

    shown = spore.cli("ask", "what do foresters call the wood wide web", check=True).stdout
    assert shown.startswith("Mycelium networks pass sugar and signals between trees. "
                            "Foresters call it the wood wide web.")
    assert f"{folder / 'talk.srt'}@00:01:02-00:01:10" in shown


def test_the_ingest_api_checks_a_chunks_question_as_teach_does(spore: Daemon) -> None:
    code, out = spore.http("POST", "/v1/ingest", {"chunks": [
        {"text": "t", "question": 7, "origin": "x"}]})
    assert (code, out["error"]) == (400, "field 'question' must be a string")
    before = spore.json("GET", "/v1/status")["memories"]
    code, out = spore.http("POST", "/v1/ingest", {"chunks": [
        {"text": "fine", "question": "fine?"},
        {"text": "fine too", "question": "q" * (MAX_TURN_BYTES + 1)}]})
    assert code == 413 and "question is 16385 bytes" in out["error"]
    assert spore.json("GET", "/v1/status")["memories"] == before  # nothing of the batch
    code, out = spore.http("POST", "/v1/ingest", {"chunks": [
        {"text": "Spores gossip every few seconds.", "question": "  How often?  "}]})
    assert code == 200 and out["new"] == 1
    held = spore.json("GET", f"/v1/memories/{out['ids'][0]}")
    assert held["question"] == "How often?"


def test_long_non_ascii_answers_go_in_batches_the_api_accepts(
    spore: Daemon, tmp_path: Path
) -> None:
    # 90 answers of 16 KiB of 4-byte characters: 49 KB of JSON each, 4.4 MB in
    # one batch of 256 (over the API's 4 MiB body limit) unless split by size.
    full = "\U0001f344" * (MAX_TURN_BYTES // 4)
    log = jsonl(*({"messages": [{"role": "user", "content": f"Mushroom {k}?"},
                                {"role": "assistant", "content": f"{k}{full}"[:len(full)]}]}
                  for k in range(90)))
    path = write(tmp_path / "mushrooms.jsonl", log)
    whole = [{"text": c.text, "question": c.question, "origin": c.origin}
             for c in file_chunks(path).chunks]
    code, refused = spore.http("POST", "/v1/ingest", {"chunks": whole})
    assert code == 413, refused  # what one batch of 256 would meet
    out = spore.cli_json("ingest", str(path), "--batch", "256")
    assert (out["files"], out["chunks"], out["new"], out["left_out"]) == (1, 90, 90, [])
