"""Export and import (p2pnode.exchange, cli/memory.py's reader): a round trip
from one spore into a fresh one gives the same answers; a hostile file (a
forged line, an oversized line, insane fields under a valid signature, a cut
last line) has each bad line refused with its reason and the rest imported,
and nothing already stored is lost; tombstoned memories are refused.
"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cli.memory import MAX_LINE_BYTES as CLI_MAX_LINE
from cli.memory import read_lines
from p2pnode.exchange import MAX_LINE_BYTES, export_lines, import_lines
from p2pnode.identity import Identity
from p2pnode.node import Spore, TeachItem
from p2pnode.records import MAX_SKEW_MS, make_memory
from tests.harness import DIM, Harness, alone
from tests.test_ask_inprocess import FIRST, OTHER, QUESTION, SECOND, run

QUESTIONS = (QUESTION, "What does my cat like?", "Which packages does Debian install?")


async def export_to(spore: Spore, path: Path, *, rated: bool = False) -> int:
    lines = 0
    with open(path, "w", encoding="utf-8") as fh:  # noqa: ASYNC230 (a test's small file)
        async for line in export_lines(spore, rated=rated):
            fh.write(line)
            lines += 1
    return lines


async def import_from(spore: Spore, path: Path, batch: int = 2) -> dict[str, Any]:
    """As the CLI does it: the file read a bounded line at a time, in batches."""
    total: dict[str, Any] = {"lines": 0, "imported": 0, "duplicate": 0, "votes": 0,
                             "tombstones": 0, "refused": {}}
    part: list[str] = []

    async def send() -> None:
        got = (await import_lines(spore, part)).json()
        for name in ("lines", "imported", "duplicate", "votes", "tombstones"):
            total[name] += got[name]
        for reason, n in got["refused"].items():
            total["refused"][reason] = total["refused"].get(reason, 0) + n
        part.clear()

    with open(path, "rb") as fh:  # noqa: ASYNC230
        for line, _ in read_lines(fh):
            if line is None:
                total["lines"] += 1
                total["refused"]["line_too_long"] = total["refused"].get("line_too_long", 0) + 1
                continue
            part.append(line)
            if len(part) == batch:
                await send()
    if part:
        await send()
    return total


async def answers(spore: Spore) -> list[list[tuple[str, str]]]:
    out = []
    for q in QUESTIONS:
        got = await spore.ask(q, 3)
        out.append([(s["id"], s["text"]) for s in got["sources"]])
    return out


def test_a_round_trip_into_a_fresh_spore_gives_the_same_answers(tmp_path: Path) -> None:
    async def scenario() -> None:
        dump = tmp_path / "export.jsonl"
        async with alone(tmp_path / "a") as a:
            await a.teach([TeachItem(FIRST), TeachItem(SECOND, question="apt?"),
                           TeachItem(OTHER, origin="notes.md")])
            asked = await a.ask(QUESTION)
            await a.rate(asked["answer_id"], False)  # a down vote moves FIRST down
            before = await answers(a)
            assert before[0][0][1] == SECOND
            lines = await export_to(a, dump)
            assert lines == 1 + 3 + 1  # header, memories, the vote
            rated = tmp_path / "rated.jsonl"
            assert await export_to(a, rated, rated=True) == 2
            pair = json.loads(rated.read_text().splitlines()[1])
            assert (pair["question"], pair["answer"], pair["label"]) == (QUESTION, FIRST, "down")
        async with alone(tmp_path / "b") as b:
            assert b.identity.public_key != a.identity.public_key
            got = await import_from(b, dump)
            assert got == {"lines": 5, "imported": 3, "duplicate": 0, "votes": 1,
                           "tombstones": 0, "refused": {}}
            assert await answers(b) == before
            again = await import_from(b, dump)  # deduplicated by content
            assert again["imported"] == 0 and again["duplicate"] == 4
            mem = await b.memory(bytes.fromhex(before[2][0][0]))
            assert mem["origin"] and mem["author"] == a.identity.public_key.hex()
        async with alone(tmp_path / "b") as b:  # durable: a restart answers alike
            assert await answers(b) == before
    run(scenario)


def _line(kind: str, wire: bytes, **extra: Any) -> str:
    return json.dumps({"kind": kind, "record": base64.b64encode(wire).decode(), **extra}) + "\n"


def test_a_hostile_file_has_each_bad_line_refused_and_the_rest_imported(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        dump = tmp_path / "export.jsonl"
        async with alone(tmp_path / "a") as a:
            await a.teach([TeachItem(FIRST), TeachItem(SECOND)])
            await export_to(a, dump)
        lines = dump.read_text().splitlines(keepends=True)
        good = [ln for ln in lines if '"memory"' in ln]
        wire = base64.b64decode(json.loads(good[0])["record"])
        flipped = bytearray(wire)
        flipped[-5] ^= 1  # in the signature
        mallory = Identity.from_seed(b"mallory")
        now = int(time.time() * 1000)
        emb = np.ones(DIM, np.float32) / np.sqrt(DIM)

        def signed(**change: Any) -> bytes:
            fields: dict[str, Any] = {"question": "", "answer": "insane", "embedding": emb,
                                      "created_ms": now, "origin": "x", "dna_hash": b"d" * 32}
            return make_memory(mallory, **{**fields, **change}).wire

        hostile = [
            _line("memory", bytes(flipped)),  # forged
            "{" + '"kind":"memory","record":"' + "A" * (MAX_LINE_BYTES + 10) + '"}\n',
            _line("memory", signed(embedding=np.full(DIM, np.nan, np.float32))),
            _line("memory", signed(created_ms=now + MAX_SKEW_MS + 3_600_000)),
            _line("memory", signed(embedding=np.ones(DIM // 2, np.float32))),
            _line("memory", signed(origin="two\nlines")),
            _line("memory", b"\x93\x01\x02"),
            '{"kind": "memory", "record": "not base64!"}\n',
            '{"kind": "who knows"}\n',
            "[1, 2, 3]\n",
            good[1],
            good[0][: len(good[0]) // 2],  # the file cut in the middle of its last line
        ]
        (tmp_path / "hostile.jsonl").write_text("".join(hostile))
        async with alone(tmp_path / "b") as b:
            await b.teach([TeachItem(OTHER)])
            held = await answers(b)
            got = await import_from(b, tmp_path / "hostile.jsonl", batch=3)
            assert got["imported"] == 1, got
            assert got["refused"] == {
                "record_signature": 1, "line_too_long": 1, "embedding_finite": 1,
                "created_ms_future": 1, "embedding_size": 1, "origin_control": 1,
                "record_malformed": 2, "kind_unknown": 1, "line_malformed": 2}, got
            assert got["lines"] == len(hostile)
            assert (await b.ask("What does my cat like?"))["answer"] == OTHER  # nothing lost
            assert len(await b.memories(10, 0)) == 2
            assert held[1][0][1] == OTHER
    run(scenario)


def test_an_import_refuses_forgotten_memories_and_carries_tombstones(tmp_path: Path) -> None:
    """An old export brings back nothing its author forgot since; a newer
    export's tombstones make a fresh spore refuse the old one's copy too."""
    async def scenario() -> None:
        old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
        async with alone(tmp_path / "a") as a:
            [(mid, _), _] = await a.teach([TeachItem(FIRST), TeachItem(SECOND)])
            await export_to(a, old)
            await a.forgetting.forget(mid)
            await export_to(a, new)
            got = await import_from(a, old)
            assert got["refused"] == {"forgotten": 1} and got["duplicate"] == 1
        async with alone(tmp_path / "b") as b:
            got = await import_from(b, new)
            assert (got["imported"], got["tombstones"]) == (1, 1), got
            got = await import_from(b, old)
            assert got["refused"] == {"forgotten": 1}, got
            assert FIRST not in [s["text"] for s in (await b.ask(QUESTION, 5))["sources"]]
    run(scenario)


def test_votes_are_judged_as_a_peers_would_be(tmp_path: Path) -> None:
    """Into a spore of an invite swarm, a vote by someone not a member is
    refused for its standing; the memories come in all the same."""
    async def scenario() -> None:
        dump = tmp_path / "export.jsonl"
        async with alone(tmp_path / "a") as a:
            await a.teach([TeachItem(FIRST), TeachItem(SECOND)])
            await a.rate((await a.ask(QUESTION))["answer_id"], True)
            await export_to(a, dump)
        async with Harness(tmp_path / "h") as h:
            [node] = await h.spores(1)
            got = await import_from(node.spore, dump)
            assert got["imported"] == 2 and got["refused"] == {"vote_not_member": 1}, got
    run(scenario)


def test_the_reader_never_holds_an_oversized_line_and_keeps_a_cut_one() -> None:
    assert CLI_MAX_LINE == MAX_LINE_BYTES
    data = b"a\n" + b"x" * 300_000 + b"\nb\n\xff\xfe\nlast"
    out = [line for line, _ in read_lines(io.BytesIO(data), limit=1000)]
    assert out == ["a", None, "b", None, "last"]
    done = [n for _, n in read_lines(io.BytesIO(data), limit=1000)]
    assert done[-1] == len(data)
    with pytest.raises(StopIteration):
        next(iter(read_lines(io.BytesIO(b""))))
