"""`spore ingest`: read and chunk files here, send them in batches."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from cli.documents import Chunk, IngestError, expand_paths, file_chunks
from p2pnode.client import Client

HIDDEN_SHOWN = 5  # a home folder holds dozens of hidden entries: name a few
# A batch's JSON stays far below the API's 4 MiB body limit even when its
# chunks are chat answers of up to 16 KiB each (and \u-escaped).
MAX_BATCH_BYTES = 1024 * 1024


def run_ingest(api: Client, paths: Sequence[Path], batch: int, progress: bool) -> dict[str, Any]:
    listing = expand_paths(list(paths))
    skipped = listing.skipped
    for path, reason in skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    hidden = [str(path) for path in listing.hidden[:HIDDEN_SHOWN]]
    if listing.hidden:
        more = ", …" if len(listing.hidden) > HIDDEN_SHOWN else ""
        click.echo(f"left out {len(listing.hidden)} hidden files and folders "
                   f"({', '.join(hidden)}{more}); name one explicitly to ingest it", err=True)
    chunks: list[Chunk] = []
    left_out: list[dict[str, Any]] = []
    done_files = 0
    for listed in listing.files:
        try:
            found = file_chunks(listed)
        except IngestError as exc:
            skipped.append((listed.path, exc.reason))
            click.echo(f"skipped {exc}", err=True)
            continue
        chunks.extend(found.chunks)
        done_files += 1
        if found.left_out:  # a chat log's unreadable turns, a subtitle's bad cues
            said = ", ".join(f"{n} {why}" for why, n in sorted(found.left_out.items()))
            click.echo(f"left out of {listed.path}: {said}", err=True)
            left_out.extend({"path": str(listed.path), "reason": why, "count": n}
                            for why, n in sorted(found.left_out.items()))
    new = 0
    with click.progressbar(length=len(chunks), label="ingesting", file=None,
                           hidden=not progress) as bar:
        for part in _batches(chunks, batch):
            data = api.post("/v1/ingest", {"chunks": [_wire(c) for c in part]})
            new += int(data["new"])
            bar.update(len(part))
    return {"files": done_files, "chunks": len(chunks), "new": new,
            "skipped": [{"path": str(p), "reason": r} for p, r in skipped],
            "hidden": {"count": len(listing.hidden), "first": hidden},
            "left_out": left_out}


def _wire(chunk: Chunk) -> dict[str, str]:
    wire = {"text": chunk.text, "origin": chunk.origin}
    if chunk.question:
        wire["question"] = chunk.question
    return wire


def _batches(chunks: list[Chunk], batch: int) -> Iterator[list[Chunk]]:
    """At most `batch` chunks and MAX_BATCH_BYTES of JSON at a time."""
    part: list[Chunk] = []
    size = 0
    for chunk in chunks:
        cost = len(json.dumps(_wire(chunk))) + 2
        if part and (len(part) == batch or size + cost > MAX_BATCH_BYTES):
            yield part
            part, size = [], 0
        part.append(chunk)
        size += cost
    if part:
        yield part
