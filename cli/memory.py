"""`spore forget`, `spore export`, `spore import`: a memory's way out, and a
spore's memories to a file and back (p2pnode.forgetting, p2pnode.exchange).

Both directions stream: an export is written as the daemon sends it (to a
file beside PATH, renamed into place when whole), an import is read a line
at a time (each at most MAX_LINE_BYTES: a longer one is refused unread) and
sent in batches, with a progress bar on stderr."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click

from p2pnode.client import ApiError, Client, DaemonUnreachable
from p2pnode.config import load_config

__all__ = ["COMMANDS", "read_lines"]

CHUNK = 1 << 16
MAX_LINE_BYTES = 1 << 20  # p2pnode.exchange's (not imported: `spore` starts fast)
BATCH_BYTES = 2 << 20  # JSON of one import request at most (the API takes 4 MiB)


def _api(ctx: click.Context) -> Client:
    """The client of the daemon the root command's options name (as cli.main's,
    which imports this module: not imported from here)."""
    root = ctx.find_root()
    root.ensure_object(dict)
    return Client(load_config(os.environ, dict(root.obj)))


def _emit(as_json: bool, data: Any, human: str) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        click.echo(human)


# --- forget ----------------------------------------------------------------------------

@click.command()
@click.argument("memory_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def forget(ctx: click.Context, memory_id: str, as_json: bool) -> None:
    """Forget MEMORY_ID: your own memory on every spore of the swarm (a signed
    tombstone, gossiped), anyone else's hidden on this spore only."""
    data = _api(ctx).post("/v1/forget", {"memory_id": memory_id.strip().lower()})
    how = data.get("forgotten")
    if how == "everywhere":
        human = (f"forgotten: {data['memory_id']} (yours): every spore drops it as the "
                 "tombstone reaches it" + ("" if data.get("spread") else
                                           " — not gossiped: the gossip store refused it"))
    elif how == "here":
        human = (f"hidden on this spore: {data['memory_id']} was written by "
                 f"{data['author'][:16]}…; only its author can forget it everywhere")
    else:
        human = f"already forgotten: {data['memory_id']}"
    _emit(as_json, data, human)


# --- export ----------------------------------------------------------------------------

def _stream(api: Client, path: str) -> Iterator[bytes]:
    req = urllib.request.Request(api.base + path, method="GET")
    if api.token:
        req.add_header("Authorization", f"Bearer {api.token}")
    try:
        with urllib.request.urlopen(req, timeout=api.timeout) as resp:
            while chunk := resp.read(CHUNK):
                yield chunk
    except urllib.error.HTTPError as exc:
        try:
            message = str(json.loads(exc.read()).get("error", exc.reason))
        except ValueError:
            message = str(exc.reason)
        raise ApiError(exc.code, message) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise DaemonUnreachable(f"no spore daemon at {api.base} "
                                f"({getattr(exc, 'reason', exc)})") from None


@click.command("export")
@click.option("--rated", is_flag=True,
              help="Rated question/answer pairs (training data) instead of the records.")
@click.argument("path", required=False, default="-", metavar="[PATH|-]")
@click.pass_context
def export(ctx: click.Context, rated: bool, path: str) -> None:
    """Write this spore's memories, tombstones and votes as JSON lines (signed
    records as they are) to PATH, or standard output (`-`, the default)."""
    api = _api(ctx)
    api.need_token()
    chunks = _stream(api, f"/v1/export?rated={'true' if rated else 'false'}")
    if path == "-":
        out = sys.stdout.buffer
        for chunk in chunks:
            out.write(chunk)
        out.flush()
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    lines = size = 0
    try:
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                lines += chunk.count(b"\n")
                size += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    click.echo(f"exported {lines} lines ({size} bytes) to {target}", err=True)


# --- import ----------------------------------------------------------------------------

def read_lines(fh: IO[bytes], limit: int = MAX_LINE_BYTES) -> Iterator[tuple[str | None, int]]:
    """(line, bytes read so far) for each line of `fh`, read in chunks: a
    line over `limit` bytes or not UTF-8 comes as None (never held whole);
    a last line without its newline (a cut file) comes as it is."""
    buf, skipping, done = b"", False, 0
    while chunk := fh.read(CHUNK):
        done += len(chunk)
        buf += chunk
        while (end := buf.find(b"\n")) >= 0:
            line, buf = buf[:end], buf[end + 1:]
            if skipping:
                skipping = False
                yield None, done
            else:
                yield _text(line, limit), done
        if len(buf) > limit:
            buf, skipping = b"", True
    if skipping:
        yield None, done
    elif buf:
        yield _text(buf, limit), done


def _text(line: bytes, limit: int) -> str | None:
    if len(line) > limit:
        return None
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _batches(lines: Iterator[tuple[str | None, int]], batch: int
             ) -> Iterator[tuple[list[str], int, int]]:
    """(lines to send, lines refused here, bytes read) per request."""
    part: list[str] = []
    refused = size = done = 0
    for line, done in lines:
        if line is None:
            refused += 1
            continue
        if not line.strip():
            continue
        cost = len(json.dumps(line)) + 2
        if part and (len(part) >= batch or size + cost > BATCH_BYTES):
            yield part, refused, done
            part, refused, size = [], 0, 0
        part.append(line)
        size += cost
    if part or refused:
        yield part, refused, done


@click.command("import")
@click.argument("path", metavar="PATH|-")
@click.option("--batch", default=256, show_default=True, type=click.IntRange(1, 1024),
              help="Lines per request.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (and no progress bar).")
@click.pass_context
def import_(ctx: click.Context, path: str, batch: int, as_json: bool) -> None:
    """Import an export (PATH, or standard input: `-`): every signed record
    verified, memories deduplicated by content, forgotten ones refused."""
    api = _api(ctx)
    total: dict[str, Any] = {"lines": 0, "imported": 0, "duplicate": 0, "votes": 0,
                             "tombstones": 0, "refused": {}}
    try:
        fh = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from exc
    size = None if path == "-" else os.fstat(fh.fileno()).st_size
    with fh, click.progressbar(length=size or 0, label="importing", file=sys.stderr,
                               hidden=as_json or size is None) as bar:
        seen = 0
        for part, refused, done in _batches(read_lines(fh), batch):
            if refused:
                total["lines"] += refused
                _add(total["refused"], {"line_too_long_or_not_utf8": refused})
            if part:
                got = api.post("/v1/import", {"lines": part})
                for name in ("lines", "imported", "duplicate", "votes", "tombstones"):
                    total[name] += int(got.get(name, 0))
                _add(total["refused"], got.get("refused", {}))
            bar.update(done - seen)
            seen = done
    refusals = ", ".join(f"{n} {r}" for r, n in sorted(total["refused"].items())) or "none"
    _emit(as_json, total, f"imported {total['imported']} memories ({total['duplicate']} "
          f"known already), {total['votes']} votes, {total['tombstones']} tombstones from "
          f"{total['lines']} lines; refused: {refusals}")
    taken = total["imported"] + total["duplicate"] + total["votes"] + total["tombstones"]
    if total["lines"] and not taken:
        ctx.exit(1)


def _add(into: dict[str, int], more: dict[str, Any]) -> None:
    for reason, n in more.items():
        into[str(reason)] = into.get(str(reason), 0) + int(n)


COMMANDS = (forget, export, import_)
