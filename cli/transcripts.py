"""Chat logs and subtitles → pieces for `spore ingest` (pure: text in, pieces out).

cli.documents reads and decodes the file, then hands its text here; what
comes back is a list of pieces, each an answer text, the question it
answers (empty for subtitles) and an anchor the caller appends to the
file's path to make the memory's origin, plus a count of what was left out
and why. The one error is TranscriptError, raised when the file as a whole
is not what its name says (a .json that is no chat log, malformed JSON, a
.srt with no cue); a bad turn or cue is only left out and counted, so that
one odd message does not cost a whole export, and is never lost in silence.

Chat logs (.json, .jsonl) are in the common shape {"messages": [{"role",
"content"}, …]}: one such object, a JSON list of them, JSONL with one per
line (or one message per line), or a bare list of messages. The user's
words since the last answer are the question, the assistant's words until
the next user turn the answer; system and tool turns say nothing to a
reader and are passed over. Anchor "#<conversation>:<exchange>", counted
from 1 (in JSONL the conversation is its line number).

Subtitles (.srt, .vtt) become passages of about the size cli.documents
targets, consecutive cues merged, each keeping its time range: anchor
"@HH:MM:SS-HH:MM:SS", so an answer's citation says where to listen.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from p2pnode.errors import SporeError

__all__ = [
    "CHAT_SUFFIXES",
    "MAX_TURN_BYTES",
    "SUBTITLE_SUFFIXES",
    "TRANSCRIPT_SUFFIXES",
    "Piece",
    "Transcript",
    "TranscriptError",
    "parse_chat",
    "parse_subtitles",
    "parse_transcript",
]

CHAT_SUFFIXES = (".json", ".jsonl")
SUBTITLE_SUFFIXES = (".srt", ".vtt")
TRANSCRIPT_SUFFIXES = CHAT_SUFFIXES + SUBTITLE_SUFFIXES
# The daemon's default max_text_bytes: a longer question or answer would be
# refused with the whole batch it travels in, so it is left out here.
MAX_TURN_BYTES = 16 * 1024


class TranscriptError(SporeError):
    """The file is not a chat log or subtitle file; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Piece:
    """One memory to be: `text` answers `question` (may be empty); the
    memory's origin is the file's path followed by `anchor`."""

    text: str
    question: str
    anchor: str


@dataclass(frozen=True)
class Transcript:
    """The pieces of one file, and what was left out: {reason: count}."""

    pieces: list[Piece]
    left_out: dict[str, int]


def parse_transcript(
    name: str, text: str, *, target_chars: int = 800, max_chars: int = 1500,
    max_turn_bytes: int = MAX_TURN_BYTES,
) -> Transcript:
    """The pieces of a chat log or subtitle file called `name`; raises TranscriptError."""
    suffix = name.lower()[name.rfind("."):] if "." in name else ""
    if suffix in CHAT_SUFFIXES:
        return parse_chat(text, lines=suffix == ".jsonl", max_turn_bytes=max_turn_bytes)
    if suffix in SUBTITLE_SUFFIXES:
        return parse_subtitles(text, webvtt=suffix == ".vtt", target_chars=target_chars,
                               max_chars=max_chars, max_turn_bytes=max_turn_bytes)
    raise TranscriptError(f"not a chat log or subtitle file ({suffix or 'no suffix'})")


def _size(count: int) -> str:
    return f"{count // 1024} KiB" if count % 1024 == 0 else f"{count} bytes"


# ------------------------------------------------------------------ chat logs

_USER = frozenset({"user", "human"})
_ASSISTANT = frozenset({"assistant", "model", "ai", "bot"})
_PASSED_OVER = frozenset({"system", "developer", "tool", "function", "ipython"})
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
_Message = tuple[str, object]  # (role, content)


def parse_chat(text: str, *, lines: bool, max_turn_bytes: int = MAX_TURN_BYTES) -> Transcript:
    """Question/answer pieces of a JSON (`lines` False) or JSONL chat log."""
    left_out: Counter[str] = Counter()
    pieces: list[Piece] = []
    if text.strip():
        for number, messages in _conversations(text, lines):
            pieces.extend(_exchanges(number, messages, max_turn_bytes, left_out))
    return Transcript(pieces, dict(left_out))


def _conversations(text: str, lines: bool) -> list[tuple[int, list[_Message]]]:
    if not lines:
        return _from_document(_load(text.lstrip("\ufeff"), ""))
    # Split at "\n" only: a JSON string may hold U+2028, which splitlines() cuts.
    values = [(n, _load(line, f"line {n}"))
              for n, line in enumerate(text.lstrip("\ufeff").split("\n"), 1) if line.strip()]
    if values and _is_message(values[0][1]):  # one message per line: one conversation
        return [(1, [_message(value, f"line {n}") for n, value in values])]
    return [(n, _messages_of(value, f"line {n}")) for n, value in values]


def _load(text: str, where: str) -> Any:
    at = f"{where}: " if where else ""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise TranscriptError(f"{at}JSON nested too deeply") from exc
    except json.JSONDecodeError as exc:
        place = f"column {exc.colno}" if where else f"line {exc.lineno}, column {exc.colno}"
        raise TranscriptError(f"{at}not valid JSON ({exc.msg} at {place})") from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise TranscriptError(f"{at}not valid JSON ({str(exc)[:100]})") from exc


def _from_document(value: Any) -> list[tuple[int, list[_Message]]]:
    if isinstance(value, dict):
        return [(1, _messages_of(value, "not a chat log"))]
    if not isinstance(value, list):
        raise TranscriptError(f"not a chat log: the JSON is {_kind(value)}, not an object "
                              "with 'messages' or a list")
    if any(isinstance(item, dict) and "messages" in item for item in value):
        return [(n, _messages_of(item, f"conversation {n}")) for n, item in enumerate(value, 1)]
    if not value:
        return []
    return [(1, [_message(item, f"message {n}") for n, item in enumerate(value, 1)])]


def _kind(value: Any) -> str:
    return {str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _is_message(value: Any) -> bool:
    return isinstance(value, dict) and "role" in value and "messages" not in value


def _messages_of(value: Any, where: str) -> list[_Message]:
    """The messages of a conversation: {"messages": […]}, or a bare list of them."""
    if isinstance(value, dict) and "messages" in value:
        value = value["messages"]
    elif isinstance(value, dict):
        raise TranscriptError(f"{where}: no 'messages' list")
    if not isinstance(value, list):
        raise TranscriptError(f"{where}: not a conversation (an object with a 'messages' list)")
    return [_message(item, f"{where}, message {n}") for n, item in enumerate(value, 1)]


def _message(value: Any, where: str) -> _Message:
    if not isinstance(value, dict) or not isinstance(value.get("role"), str):
        raise TranscriptError(f"{where}: not a message (an object with a string 'role')")
    return value["role"].strip().lower(), value.get("content")


@dataclass
class _Run:
    """Consecutive turns of one side (user or assistant) and their usable text."""

    side: str
    texts: list[str]


def _exchanges(number: int, messages: list[_Message], limit: int,
               left_out: Counter[str]) -> Iterator[Piece]:
    """One piece per user run answered by the assistant run that follows it.

    An exchange is numbered by its user run, usable or not, so the numbers
    of the others do not move when one turn is unreadable.
    """
    exchange, question = 0, None
    for run in _runs(messages, limit, left_out):
        if run.side == "user":
            if question:
                left_out["questions without an answer"] += 1
            exchange, question = exchange + 1, run.texts
            continue
        if not question:
            if run.texts:
                left_out["answers without a question"] += 1
        elif not run.texts:
            left_out["questions without an answer"] += 1
        else:
            asked, said = "\n\n".join(question), "\n\n".join(run.texts)
            if _too_big(asked, limit) or _too_big(said, limit):
                left_out[f"exchanges over {_size(limit)}"] += 1
            else:
                yield Piece(text=said, question=asked, anchor=f"#{number}:{exchange}")
        question = None
    if question:
        left_out["questions without an answer"] += 1


def _runs(messages: list[_Message], limit: int, left_out: Counter[str]) -> list[_Run]:
    runs: list[_Run] = []
    for role, content in messages:
        side = "user" if role in _USER else "assistant" if role in _ASSISTANT else None
        if side is None:
            if role not in _PASSED_OVER:
                left_out["turns with an unknown role"] += 1
            continue
        if not runs or runs[-1].side != side:
            runs.append(_Run(side, []))
        turn = _turn_text(content, limit, left_out)
        if turn:
            runs[-1].texts.append(turn)
    return runs


def _turn_text(content: object, limit: int, left_out: Counter[str]) -> str | None:
    """A turn's text, or None (counted) when it has none or too much."""
    if isinstance(content, list):  # OpenAI-style parts: [{"type": "text", "text": …}]
        content = "\n".join(_part_text(part) for part in content).strip() or None
    if not isinstance(content, str) or not content.strip():
        left_out["turns without text"] += 1
        return None
    problem = _unusable(content.strip(), limit, "turns")
    if problem:
        left_out[problem] += 1
        return None
    return content.strip()


def _part_text(part: object) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type") in _TEXT_PARTS:
        text = part.get("text")
        return text if isinstance(text, str) else ""
    return ""


def _unusable(text: str, limit: int, what: str) -> str | None:
    """Why the daemon would refuse `text` (and the batch it is in), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # "\ud800" in JSON: no text, the API refuses it
        return f"{what} with invalid characters (lone surrogates)"
    return f"{what} over {_size(limit)}" if _too_big(text, limit) else None


def _too_big(text: str, limit: int) -> bool:
    # Cheap first: a character is at most 4 bytes of UTF-8.
    return len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit)


# ------------------------------------------------------------------ subtitles

_STAMP = r"(?:(\d{1,4}):)?(\d{1,2}):(\d{1,2})(?:[.,](\d{1,3}))?"
_TIMING = re.compile(rf"[ \t]*{_STAMP}[ \t]*-->[ \t]*{_STAMP}(?:[ \t].*)?")
_SKIPPED_BLOCKS = frozenset({"NOTE", "STYLE", "REGION"})  # WebVTT's, besides its header
_GAP_MS = 30_000  # a silence this long ends a passage: its time range stays one scene
_INDEX = re.compile(r"[ \t]*\d+[ \t]*")
_VOICE = re.compile(r"<v(?:\.[^\s<>]*)?[ \t]+([^<>]*)>")  # <v Roger>: "Roger: "
_TAG = re.compile(r"</?[A-Za-z][^<>]*>|<\d[\d:.]*>")  # <i>, </c>, <c.red>, <00:00:01.200>
_ASS_TAG = re.compile(r"\{\\[^{}]*\}")  # {\an8}: a position, not words


@dataclass
class _Cue:
    start_ms: int
    end_ms: int
    order: int
    lines: list[str]


def parse_subtitles(
    text: str, *, webvtt: bool | None = None, target_chars: int = 800, max_chars: int = 1500,
    max_turn_bytes: int = MAX_TURN_BYTES,
) -> Transcript:
    """Passages of merged cues of an SRT or WebVTT file, each with its time range.

    `webvtt` (by default: whether the text starts with "WEBVTT") lets any line
    before a timing line be the cue's identifier; in SRT only a number is.
    """
    if not 0 < target_chars <= max_chars:
        raise ValueError("need 0 < target_chars <= max_chars")
    left_out: Counter[str] = Counter()
    text = text.lstrip("\ufeff")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if webvtt is None:
        webvtt = text.startswith("WEBVTT")
    cues = _cues(lines, webvtt, left_out)
    if not any("-->" in line for line in lines) and _has_words(lines):
        raise TranscriptError("no subtitle cue (no 'HH:MM:SS,mmm --> HH:MM:SS,mmm' line)")
    cues.sort(key=lambda cue: (cue.start_ms, cue.order))  # a file's order may be wrong
    pieces = _merge(cues, target_chars, max_chars, max_turn_bytes, left_out)
    return Transcript(pieces, dict(left_out))


def _has_words(lines: list[str]) -> bool:
    """Whether the file says anything but a WebVTT header."""
    said = [line for line in lines if line.strip()]
    return bool(said) and not said[0].startswith("WEBVTT")


def _cues(lines: list[str], webvtt: bool, left_out: Counter[str]) -> list[_Cue]:
    """The cues, in file order. Text outside a cue's timing line and payload
    (a header, a note, a style) is dropped; text after a blank line inside a
    cue (sloppy SRT files) continues it."""
    cues: list[_Cue] = []
    current: _Cue | None = None  # the cue text lines go to; None: drop them
    timed_yet = False
    for block in _blocks(lines):
        timed = [i for i, line in enumerate(block) if "-->" in line]
        before = block[:timed[0]] if timed else block
        if timed and before and (webvtt or _INDEX.fullmatch(before[-1])):
            before = before[:-1]  # the cue's identifier
        if before and not _skipped(block, webvtt):
            if current is not None:
                current.lines.extend(before)
            elif not timed_yet:
                left_out["text before the first cue"] += 1
        timed_yet = timed_yet or bool(timed)
        for k, at in enumerate(timed):
            end = timed[k + 1] if k + 1 < len(timed) else len(block)
            body = block[at + 1:end]
            if k + 1 < len(timed) and body and _INDEX.fullmatch(body[-1]):
                body = body[:-1]  # the next cue's SRT index, no blank line between
            current = _cue(block[at], body, len(cues), left_out)
            if current is not None:
                cues.append(current)
    return cues


def _skipped(block: list[str], webvtt: bool) -> bool:
    """A WebVTT header, note, style or region block."""
    if block[0].startswith("WEBVTT"):
        return True
    words = block[0].split(maxsplit=1)
    return webvtt and bool(words) and words[0] in _SKIPPED_BLOCKS


def _blocks(lines: list[str]) -> Iterator[list[str]]:
    block: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            block.append(line)
        elif block:
            yield block
            block = []


def _cue(timing: str, body: list[str], order: int, left_out: Counter[str]) -> _Cue | None:
    found = _TIMING.fullmatch(timing)
    start = _ms(found.groups()[:4]) if found else None
    end = _ms(found.groups()[4:]) if found else None
    if start is None or end is None:
        left_out["cues with an unreadable time"] += 1
        return None
    if end < start:
        left_out["cues that end before they start"] += 1
        return None
    return _Cue(start, end, order, body)


def _ms(parts: tuple[str | Any, ...]) -> int | None:
    hours, minutes, seconds, fraction = parts
    if int(minutes) > 59 or int(seconds) > 59:
        return None
    millis = int((fraction or "0").ljust(3, "0"))  # ",5" is half a second
    return ((int(hours or 0) * 60 + int(minutes)) * 60 + int(seconds)) * 1000 + millis


def _clean(line: str) -> str:
    line = _ASS_TAG.sub("", _TAG.sub("", _VOICE.sub(r"\1: ", line)))
    return " ".join(html.unescape(line).split())


class _Passage:
    """Cue texts being packed into one piece, and the time they span."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.size = 0
        self.start_ms = self.end_ms = 0

    def fits(self, text: str, cue: _Cue, target: int) -> bool:
        if not self.texts:
            return True
        return self.size + 1 + len(text) <= target and cue.start_ms - self.end_ms <= _GAP_MS

    def add(self, text: str, cue: _Cue) -> None:
        if not self.texts:
            self.start_ms, self.end_ms, self.size = cue.start_ms, cue.end_ms, -1
        self.texts.append(text)
        self.size += 1 + len(text)
        self.end_ms = max(self.end_ms, cue.end_ms)

    def take(self) -> list[Piece]:
        if not self.texts:
            return []
        piece = Piece(" ".join(self.texts), "", _span(self.start_ms, self.end_ms))
        self.texts = []
        return [piece]


def _merge(cues: list[_Cue], target: int, max_chars: int, limit: int,
           left_out: Counter[str]) -> list[Piece]:
    """Consecutive cues packed up to `target` characters, repeated lines once
    (rolling captions show each line twice, in two cues)."""
    pieces: list[Piece] = []
    passage = _Passage()
    last = ""
    for cue in cues:
        said = []
        for line in filter(None, map(_clean, cue.lines)):
            if line != last:
                said.append(line)
            last = line
        text = " ".join(said)
        if not text:
            continue
        problem = _unusable(text, limit, "cues")
        if problem:
            left_out[problem] += 1
            continue
        if not passage.fits(text, cue, target) or len(text) > max_chars:
            pieces.extend(passage.take())
        if len(text) > max_chars:
            span = _span(cue.start_ms, cue.end_ms)
            pieces.extend(Piece(part, "", span) for part in _split(text, max_chars))
        else:
            passage.add(text, cue)
    pieces.extend(passage.take())
    return pieces


def _split(text: str, limit: int) -> Iterator[str]:
    """Pieces of at most `limit` characters, cut at a space when there is one."""
    while len(text) > limit:
        cut = text.rfind(" ", 1, limit + 1)
        cut = cut if cut > 0 else limit
        yield text[:cut].rstrip()
        text = text[cut:].lstrip()
    if text:
        yield text


def _span(start_ms: int, end_ms: int) -> str:
    return f"@{_clock(start_ms // 1000)}-{_clock(math.ceil(end_ms / 1000))}"


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
