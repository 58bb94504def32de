"""`spore ingest`: read and chunk files here, send them in batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from cli.documents import Chunk, IngestError, chunk_file, expand_paths
from p2pnode.client import Client

HIDDEN_SHOWN = 5  # a home folder holds dozens of hidden entries: name a few


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
    done_files = 0
    for listed in listing.files:
        try:
            found = chunk_file(listed)
        except IngestError as exc:
            skipped.append((listed.path, exc.reason))
            click.echo(f"skipped {exc}", err=True)
            continue
        chunks.extend(found)
        done_files += 1
    new = 0
    with click.progressbar(length=len(chunks), label="ingesting", file=None,
                           hidden=not progress) as bar:
        for start in range(0, len(chunks), batch):
            part = chunks[start:start + batch]
            data = api.post("/v1/ingest", {"chunks": [
                {"text": c.text, "origin": c.origin} for c in part]})
            new += int(data["new"])
            bar.update(len(part))
    return {"files": done_files, "chunks": len(chunks), "new": new,
            "skipped": [{"path": str(p), "reason": r} for p, r in skipped],
            "hidden": {"count": len(listing.hidden), "first": hidden}}
