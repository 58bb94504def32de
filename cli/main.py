"""`spore`: the command line. A thin client of the local daemon, plus the
commands that work without one (init, node run, dna show, dna export).

Exit codes: 0 ok, 1 error, 2 usage, 69 daemon not reachable.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cli import output
from cli.doctor import doctor_command
from cli.mcp import mcp_command
from cli.memory import COMMANDS as MEMORY_COMMANDS
from p2pnode.client import Client, DaemonUnreachable
from p2pnode.config import Config, load_config
from p2pnode.errors import SporeError

if TYPE_CHECKING:
    from p2pnode.joining import Invitation

F = TypeVar("F", bound=Callable[..., Any])
EX_UNAVAILABLE = 69


class SporeGroup(click.Group):
    """Maps our errors to a message on stderr and the documented exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DaemonUnreachable as exc:
            click.echo(f"error: {exc}\nstart one with: spore node run", err=True)
            ctx.exit(EX_UNAVAILABLE)
        except SporeError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


class InputError(click.ClickException):
    """A file or value the user gave that cannot be used: exit 2, like a usage error."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)


def config(ctx: click.Context, **flags: Any) -> Config:
    """The Config, built once from the environment, config.toml and flags."""
    root = ctx.find_root()
    root.ensure_object(dict)
    merged = {**root.obj, **{k: v for k, v in flags.items() if v is not None}}
    return load_config(os.environ, merged)


def client(ctx: click.Context) -> Client:
    return Client(config(ctx))


def emit(as_json: bool, data: Any, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        human()


@click.group(cls=SporeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", type=click.Path(path_type=Path), help="State directory.")
@click.option("--config-dir", type=click.Path(path_type=Path), help="Config directory.")
@click.option("--host", "api_host", help="API address (default 127.0.0.1).")
@click.option("--port", "api_port", type=int, help="API port (default 7150).")
@click.version_option(package_name="sporemind")
@click.pass_context
def main(ctx: click.Context, state_dir: Path | None, config_dir: Path | None,
         api_host: str | None, api_port: int | None) -> None:
    """Sporemind: a peer-to-peer collective memory. This is a spore's CLI."""
    ctx.obj = {k: v for k, v in {"state_dir": state_dir, "config_dir": config_dir,
                                 "api_host": api_host, "api_port": api_port}.items()
               if v is not None}


@main.command()
@click.option("--swarm", help="Name of the swarm to found (default: solo-<node id>).")
@click.option("--open", "open_swarm", is_flag=True,
              help="Found an open swarm (anyone with its DNA file joins, paying a small "
                   "puzzle per identity) instead of an invite-only one.")
@click.option("--puzzle-bits", type=click.IntRange(0, 32), default=None, metavar="BITS",
              help="With --open: the identity puzzle's difficulty (default 20: about a "
                   "second per identity here, a few on a Raspberry Pi; each bit doubles "
                   "it; 0 makes identities free, as swarms from before membership).")
@click.option("--join", "join", metavar="CODE_OR_FILE",
              help="Join a swarm instead of founding one: an invitation code (from "
                   "`spore invite` on a member), or a file holding one, or a swarm's "
                   "signed DNA file for an open swarm (- for standard input).")
@click.option("--peer", "peers", multiple=True, metavar="HOST:PORT",
              help="With --join: a spore of that swarm to join through (its DHT port); "
                   "repeatable; kept in config.toml.")
@json_option
@click.pass_context
def init(ctx: click.Context, swarm: str | None, open_swarm: bool, puzzle_bits: int | None,
         join: str | None, peers: tuple[str, ...], as_json: bool) -> None:
    """Create this spore's identity, and found its swarm or join one (`node run`
    founds an invite swarm too if there is none)."""
    from p2pnode.daemon import prepare_state

    if swarm is not None and join is not None:
        raise click.UsageError("--swarm founds a swarm and --join joins one: give only one")
    if open_swarm and join is not None:
        raise click.UsageError("--open founds an open swarm; a joined swarm's DNA says "
                               "whether it is open")
    if puzzle_bits is not None and not open_swarm:
        raise click.UsageError("--puzzle-bits goes with --open (an invite swarm needs none)")
    if peers and join is None:
        raise click.UsageError("--peer goes with --join (to found a swarm, give no peer)")
    cfg = config(ctx)
    if join is not None:
        _init_join(cfg, join, peers, as_json)
        return
    identity, dna, founded = prepare_state(cfg, swarm, puzzle_bits=puzzle_bits,
                                           membership="open" if open_swarm else "invite")
    data = {"node_id": identity.node_id.hex(), "state_dir": str(cfg.state_dir),
            "swarm": dna.fields["swarm"], "swarm_id": dna.swarm_id.hex(),
            "version": dna.version, "dna_hash": dna.hash.hex(), "founded": founded,
            "membership": dna.membership}
    emit(as_json, data, lambda: click.echo(_founded_lines(data, cfg.state_dir)))


def _founded_lines(data: dict[str, Any], state_dir: Path) -> str:
    how = ("invite: bring devices in with `spore invite`" if data["membership"] == "invite"
           else "open: share its DNA with `spore dna export`")
    return (f"{'founded' if data['founded'] else 'already have'} swarm {data['swarm']} "
            f"(id {data['swarm_id'][:16]}…, dna v{data['version']} "
            f"{data['dna_hash'][:16]}…)\nmembership {how}\n"
            f"node {data['node_id']}\nstate {state_dir}")


def _init_join(cfg: Config, join: str, peers: tuple[str, ...], as_json: bool) -> None:
    from cli import join as join_mod
    from p2pnode import dna as dna_mod
    from p2pnode.config import CONFIG_FILE
    from p2pnode.daemon import ensure_state_dir, prepare_state
    from p2pnode.errors import ConfigError

    try:
        wanted = join_mod.peer_strings(peers)
        offered = join_mod.invitation_or_dna(join, sys.stdin.buffer)
    except (join_mod.NotDna, ConfigError) as exc:
        raise InputError(str(exc)) from exc
    conf_file = cfg.config_dir / CONFIG_FILE
    old_text = conf_file.read_text(encoding="utf-8") if conf_file.exists() else ""
    ensure_state_dir(cfg.state_dir)
    if isinstance(offered, dna_mod.Dna):
        _, adopted = join_mod.adopt(cfg.state_dir, offered)
        offered_version = offered.version
    else:
        wanted = list(dict.fromkeys([join_mod.inviter_address(offered), *wanted]))
        adopted, offered_version = _redeem(cfg, offered), 0
    new_text = join_mod.with_peers(old_text, conf_file, wanted) if wanted else old_text
    identity, dna, _ = prepare_state(cfg)  # finds the DNA just adopted: founds nothing
    if new_text != old_text:
        join_mod.write_text(conf_file, new_text)
    data = {"node_id": identity.node_id.hex(), "state_dir": str(cfg.state_dir),
            "swarm": dna.fields["swarm"], "swarm_id": dna.swarm_id.hex(),
            "version": dna.version, "dna_hash": dna.hash.hex(), "founded": False,
            "membership": dna.membership, "invited": offered_version == 0,
            "adopted": adopted, "peers": wanted, "config_file": str(conf_file)}
    emit(as_json, data, lambda: click.echo(_joined_lines(data, offered_version)))


def _redeem(cfg: Config, invitation: Invitation) -> bool:
    """Join an invite swarm: spend the invitation at its inviter, keep the DNA
    chain and this spore's pass. Whether the DNA was written."""
    import time

    from cli import join as join_mod
    from p2pnode import joining
    from p2pnode.identity import load_or_create

    join_mod.check_swarm(cfg.state_dir, invitation)
    identity, _ = load_or_create(cfg.state_dir)
    answer = join_mod.ask_inviter(invitation, joining.join_request(identity, invitation.token))
    chain, own = join_mod.judge_answer(answer, invitation, identity, int(time.time() * 1000))
    return join_mod.settle(cfg.state_dir, chain, own)


def _joined_lines(data: dict[str, Any], offered_version: int) -> str:
    kept = ("" if data["adopted"] or data["invited"] else
            f"; kept this spore's v{data['version']} over the file's v{offered_version}")
    invited = ", invited: member.pass kept" if data["invited"] else ""
    lines = [f"joined swarm {data['swarm']} (id {data['swarm_id'][:16]}…, "
             f"dna v{data['version']} {data['dna_hash'][:16]}…{kept}{invited})"]
    if data["peers"]:
        lines.append(f"peers {', '.join(data['peers'])} (kept in {data['config_file']})")
    lines += [f"node {data['node_id']}", f"state {data['state_dir']}",
              "start it with: spore node run"]
    return "\n".join(lines)


@main.group()
def node() -> None:
    """Run the daemon."""


@node.command("run")
@click.option("--host", "api_host", help="API address (default 127.0.0.1; SPORE_HOST).")
@click.option("--port", "api_port", type=int, help="API port (default 7150; SPORE_PORT).")
@click.option("--state-dir", type=click.Path(path_type=Path), help="State directory.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--dht-port", type=int, help="DHT port, UDP (default 7151; SPORE_DHT_PORT).")
@click.option("--peer", "peers", multiple=True, metavar="HOST:PORT",
              help="A spore to join through (its DHT port); repeatable.")
@click.pass_context
def node_run(ctx: click.Context, /, **flags: Any) -> None:
    """Run a spore in the foreground (SIGTERM/Ctrl-C stops it cleanly)."""
    # One BLAS thread: on 2 cores a multi-threaded re-rank was 8x slower under
    # load, and the encoder and event loop need the other core. Must be set
    # before numpy is first imported (by the daemon, just below).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from p2pnode.daemon import run
    from p2pnode.service import setup_logging

    flags["peers"] = list(flags["peers"]) or None
    cfg = config(ctx, **flags)
    setup_logging(cfg.log_level, cfg.journald)
    run(cfg)


@main.group()
def dna() -> None:
    """The swarm DNA."""


@dna.command("show")
@json_option
@click.pass_context
def dna_show(ctx: click.Context, as_json: bool) -> None:
    """Print this spore's swarm DNA."""
    from p2pnode import dna as dna_mod

    found = dna_mod.load(config(ctx).state_dir)
    if found is None:
        raise SporeError("no swarm DNA yet: run `spore init` (or `spore node run`)")
    data = found.show()
    emit(as_json, data, lambda: click.echo(output.dna_lines(data)))


@dna.command("export")
@click.argument("path", required=False, metavar="[PATH]")
@click.pass_context
def dna_export(ctx: click.Context, path: str | None) -> None:
    """Write the signed DNA to PATH (standard output when PATH is - or absent),
    for `spore init --join PATH` on another device."""
    from p2pnode import dna as dna_mod

    found = dna_mod.load(config(ctx).state_dir)
    if found is None:
        raise SporeError("no swarm DNA yet: run `spore init` (or `spore node run`)")
    if path is None or path == "-":
        if sys.stdout.isatty():
            raise InputError("the DNA is binary: give a PATH, or redirect standard output "
                             "(spore dna export > dna.bin)")
        sys.stdout.buffer.write(found.wire)
        sys.stdout.buffer.flush()
        return
    try:
        Path(path).write_bytes(found.wire)
    except OSError as exc:
        raise SporeError(f"cannot write {path}: {exc.strerror or exc}") from exc
    click.echo(f"wrote the DNA of swarm {found.fields['swarm']} (v{found.version}, "
               f"{len(found.wire)} bytes) to {path}")


@dna.command("update")
@click.option("--set", "assignments", multiple=True, required=True, metavar="KEY=VALUE",
              help="A rule to change (division_threshold, mutation_sigma, "
                   "fitness_half_life_days, founders); VALUE is JSON, else a string; "
                   "repeatable.")
@json_option
@click.pass_context
def dna_update(ctx: click.Context, assignments: tuple[str, ...], as_json: bool) -> None:
    """Publish a new DNA version (founders only); the running daemon signs it
    and the swarm spreads it."""
    changes = _assignments(assignments)
    api = client(ctx)
    api.need_token()  # DNA changes need the token, on loopback too
    data = api.post("/v1/dna", {"set": changes})
    emit(as_json, data, lambda: click.echo(f"published DNA version {data.get('version')}; "
                                           f"gossip takes it to every spore\n"
                                           + output.dna_lines(data)))


def _assignments(items: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        if key in out:
            raise click.BadParameter(f"{key} is set twice", param_hint="--set")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


# -- membership --------------------------------------------------------------------------
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
MIN_TTL_S, MAX_TTL_S = 60, 30 * 86_400


def parse_duration(text: str) -> int:
    """Seconds in '90s', '30m', '24h', '7d', '2w' or a plain number of seconds."""
    raw = text.strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in _UNITS else (raw, "s")
    if not number.isdigit() or len(number) > 9:
        raise click.BadParameter(f"{text!r} is not a duration like 30m, 24h or 7d",
                                 param_hint="--ttl")
    seconds = int(number) * _UNITS[unit]
    if not MIN_TTL_S <= seconds <= MAX_TTL_S:
        raise click.BadParameter(f"{text!r} is out of range: an invitation lives 1 minute "
                                 "to 30 days", param_hint="--ttl")
    return seconds


@main.command()
@click.option("--may-invite", is_flag=True,
              help="Let the new member invite others in turn.")
@click.option("--ttl", default="24h", show_default=True, metavar="DURATION",
              help="How long the invitation stays valid: 30m, 24h, 7d (1 minute to 30 days).")
@click.option("--file", "path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the invitation to this file (owner-only) instead of printing it.")
@json_option
@click.pass_context
def invite(ctx: click.Context, may_invite: bool, ttl: str, path: Path | None,
           as_json: bool) -> None:
    """Make a one-time invitation into this invite swarm (founders, and members
    allowed to invite). Give it to the new device over a channel you trust."""
    from cli.join import invitation_text
    from p2pnode.files import write_atomic

    ttl_s = parse_duration(ttl)
    if path is not None and not path.parent.is_dir():
        raise InputError(f"cannot write {path}: no directory {path.parent}")
    api = client(ctx)
    api.need_token()  # who is in the swarm: the token, on loopback too
    data = api.post("/v1/invites", {"may_invite": may_invite, "ttl_s": ttl_s})
    if path is not None:
        write_atomic(path, invitation_text(data["code"]).encode(), private=True)
        data = {**{k: v for k, v in data.items() if k != "code"}, "file": str(path)}
    emit(as_json, data, lambda: click.echo(_invitation_lines(data)))
    _warn_if_alone(api)


def _warn_if_alone(api: Client) -> None:
    """An invitation names this spore's peer address: while it is alone, that
    is 127.0.0.1 (p2pnode.config.dht_listen), reachable from this device only."""
    listen = (api.get("/v1/status").get("dht") or {}).get("listen") or {}
    if listen.get("reason") == "alone":
        click.echo("note: this spore listens for peers on this device only (it is alone), so "
                   "the invitation works only here; to invite another device, set [dht] "
                   "host = \"0.0.0.0\" in config.toml (or SPORE_DHT_HOST=0.0.0.0), restart "
                   "the daemon and invite again", err=True)


def _invitation_lines(data: dict[str, Any]) -> str:
    what = data.get("file") or data["code"]
    head = (f"wrote an invitation to {data['file']} (keep it secret: it lets one device in)"
            if "file" in data else data["code"])
    rights = ", and may invite others" if data["may_invite"] else ""
    return (f"{head}\none use{rights}, valid until {_when(data['expires_ms'])}; "
            f"on the new device: spore init --join {what}")


@main.command()
@json_option
@click.pass_context
def members(ctx: click.Context, as_json: bool) -> None:
    """The swarm's members as this spore knows them: kind, since, trust, revoked."""
    data = client(ctx).get("/v1/members")
    emit(as_json, data, lambda: click.echo(_members_lines(data)))


def _members_lines(data: dict[str, Any]) -> str:
    rows = data.get("members", [])
    lines = [f"membership {data.get('membership', '?')}, {len(rows)} known",
             f"{'node id':16}  {'kind':8}  {'since':20}  {'trust':>6}  standing"]
    for m in rows:
        since = _when(m["since_ms"]) if m.get("since_ms") else "-"
        trust = f"{m['trust']:.2f}" if isinstance(m.get("trust"), int | float) else "-"
        standing = str(m.get("standing") or ("revoked" if m.get("revoked") else "member"))
        if m.get("revoked") and m.get("why"):
            standing += f" ({m['why']})"
        lines.append(f"{str(m['node_id'])[:16]:16}  {m.get('kind') or '-'!s:8}  "
                     f"{since:20}  {trust:>6}  {standing}")
    return "\n".join(lines)


@main.command()
@click.argument("node_id")
@click.option("--why", default="", help="Why, in one line (at most 200 characters); "
                                        "every spore shows it.")
@json_option
@click.pass_context
def revoke(ctx: click.Context, node_id: str, why: str, as_json: bool) -> None:
    """Throw a member out (founders): a signed revocation that gossip spreads.
    NODE_ID is a node id or public key from `spore members`, or a prefix naming one."""
    text = node_id.strip().lower()
    if not text or len(text) > 64 or any(c not in "0123456789abcdef" for c in text):
        raise InputError(f"{node_id!r} is not a node id or public key (hex digits)")
    api = client(ctx)
    api.need_token()
    target = _member_key(api.get("/v1/members").get("members", []), text)
    data = api.post("/v1/revocations", {"node_id": target, "why": why})
    emit(as_json, data, lambda: click.echo(
        f"revoked {data.get('revoked', target)[:16]}…"
        + (f" ({data['why']})" if data.get("why") else "")
        + "; gossip takes the revocation to every spore"))


def _member_key(rows: list[dict[str, Any]], text: str) -> str:
    """The public key of the one known member `text` names (by node id, key or
    a prefix of either); an unknown full 64-digit key is sent as it is."""
    given = text
    found = {str(m["key"]) for m in rows if any(
        str(m.get(name, "")).startswith(text) for name in ("node_id", "key"))}
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        raise InputError(f"{given!r} names {len(found)} members: give more digits "
                         "(spore members)")
    if len(text) == 64:
        return text
    raise InputError(f"{given!r} names no member this spore knows (spore members)")


@main.command()
@click.argument("text", required=False)
@click.option("--question", "-q", default="", help="The question this text answers.")
@json_option
@click.pass_context
def teach(ctx: click.Context, text: str | None, question: str, as_json: bool) -> None:
    """Teach one memory (TEXT, or standard input when TEXT is - or absent)."""
    if text is None or text == "-":
        text = sys.stdin.read()
    data = client(ctx).post("/v1/teach", {"text": text, "question": question})
    emit(as_json, data, lambda: click.echo(
        f"{'learned' if data['new'] else 'already known'}: {data['id']}"))


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--batch", default=32, show_default=True, type=click.IntRange(1, 256))
@json_option
@click.pass_context
def ingest(ctx: click.Context, paths: tuple[Path, ...], batch: int, as_json: bool) -> None:
    """Ingest .txt, .md and .html files, chat logs (.json, .jsonl), subtitles
    (.srt, .vtt) and directories, in chunks."""
    from cli.ingest import run_ingest

    data = run_ingest(client(ctx), paths, batch, progress=not as_json)
    emit(as_json, data, lambda: click.echo(
        f"ingested {data['chunks']} chunks ({data['new']} new) from {data['files']} files"
        + (f"; skipped {len(data['skipped'])}" if data["skipped"] else "")))
    if data["skipped"] and not data["files"]:
        ctx.exit(1)


@main.command()
@click.argument("question")
@click.option("--top", default=3, show_default=True, type=click.IntRange(1, 20),
              help="How many sources to show.")
@click.option("--no-generate", "no_generate", is_flag=True,
              help="Answer from memory only, never in words by a language model.")
@click.option("--ungrounded", is_flag=True,
              help="When nothing held is near, answer in words anyway (marked ungrounded).")
@json_option
@click.pass_context
def ask(ctx: click.Context, question: str, top: int, no_generate: bool, ungrounded: bool,
        as_json: bool) -> None:
    """Ask the swarm: from memory when it knows, else in words from what it
    holds (with numbered citations), streamed as they come. The question's
    text never leaves this device through the swarm (`spore status` says
    whether a language model elsewhere gets it)."""
    body: dict[str, Any] = {"question": question, "top": top}
    if no_generate:
        body["generate"] = False
    if ungrounded:
        body["ungrounded"] = True
    api = client(ctx)
    if as_json:
        emit(True, api.post("/v1/ask", body), lambda: None)
        return
    _print_stream(api.stream("/v1/ask", {**body, "stream": True}))


def _print_stream(events: Iterator[dict[str, Any]]) -> None:
    """An answer's events (POST /v1/ask, stream): from memory, as always; in
    words, each token as it comes, then the sources its [n] cite."""
    sources: dict[str, Any] = {}
    words = False
    for event in events:
        kind = event.get("event")
        if kind == "sources":
            sources = event
        elif kind == "token":
            words = True
            click.echo(str(event.get("text", "")), nl=False)
        elif kind == "done" and event.get("route") == "generated":
            click.echo()
            _print_cited(sources, event)
        elif kind == "done":
            _print_answer({**sources, "answer": event.get("answer")})
        elif kind == "error":
            if words:
                click.echo()
            click.echo(f"(no answer in words: {event.get('error')})", err=True)
            unknown = bool(sources.get("abstained")) or not sources.get("sources")
            first = None if unknown else sources["sources"][0].get("text")
            _print_answer({**sources, "answer": first, "abstained": unknown})


def _print_cited(asked: dict[str, Any], done: dict[str, Any]) -> None:
    """After an answer in words: who wrote it, how to rate it, and the sources,
    the cited ones marked ([n] is the n-th source)."""
    cited = {c.get("n") for c in done.get("citations") or []}
    answer_id = done.get("answer_id")
    grounded = "" if done.get("grounded", True) else ", UNGROUNDED (no memory was near)"
    click.echo()
    click.echo(f"in words by {done.get('model')} ({done.get('provider')}){grounded}   "
               f"answer id {answer_id}   (rate it: spore rate {answer_id} up|down; "
               "up keeps it as a memory)")
    for i, s in enumerate(asked.get("sources") or [], 1):
        mark = "cited" if i in cited else "     "
        click.echo(f"  [{i}] {mark}  {s['id'][:16]}  {s['origin']}  by {s['author'][:12]}  "
                   f"{_when(s['created_ms'])}"
                   + ("  (rated down for this question)" if s.get("rejected") else ""))
    if done.get("ignored_citations"):
        click.echo(f"  ({done['ignored_citations']} citation marker(s) named no source)")


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _print_answer(data: dict[str, Any]) -> None:
    if not data["sources"]:
        click.echo("I know nothing yet: teach me with `spore teach` or `spore ingest`.")
        return
    abstained = bool(data.get("abstained"))
    if abstained:
        click.echo("I don't know: nothing I hold is near this question.")
        click.echo()
        click.echo(f"maybe   answer id {data['answer_id']}   (if [1] answers it: "
                   f"spore rate {data['answer_id']} up)")
    else:
        click.echo(data["answer"])
        click.echo()
        click.echo(f"confidence {data['confidence']:.2f}   answer id {data['answer_id']}"
                   f"   (rate it: spore rate {data['answer_id']} up|down)")
    for i, s in enumerate(data["sources"], 1):
        click.echo(f"  [{i}] {s['score']:.3f}  {s['id'][:16]}  {s['origin']}  "
                   f"by {s['author'][:12]}  {_when(s['created_ms'])}"
                   + ("  (rated down for this question)" if s.get("rejected") else ""))
        if abstained:  # no answer text above: each maybe's own first words
            text = " ".join(str(s.get("text", "")).split())
            click.echo(f"      {text[:100]}{'…' if len(text) > 100 else ''}")


@main.command()
@click.argument("answer_id")
@click.argument("vote", type=click.Choice(["up", "down"]))
@json_option
@click.pass_context
def rate(ctx: click.Context, answer_id: str, vote: str, as_json: bool) -> None:
    """Rate an answer up or down; it changes what later answers rank first."""
    data = client(ctx).post("/v1/rate", {"answer_id": answer_id, "vote": vote})
    emit(as_json, data, lambda: click.echo(_rated_line(vote, data)))


def _rated_line(vote: str, data: dict[str, Any]) -> str:
    if data.get("generated") and not data.get("stored"):
        return "rated down: the answer in words is dropped (nothing was stored)"
    head = (f"rated {vote}: the answer in words is now memory {data['memory_id'][:16]}, shared "
            "with the swarm (its question stays here);" if data.get("generated")
            else f"rated {vote}: memory {data['memory_id'][:16]}")
    return f"{head} now +{data['up']} -{data['down']} (fitness {data['fitness']:+.2f})"


@main.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The daemon's status."""
    data = client(ctx).get("/v1/status")
    emit(as_json, data, lambda: click.echo(output.status_lines(data)))


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL. bash: add
    `eval "$(spore completion bash)"` to ~/.bashrc; zsh: the same with zsh in
    ~/.zshrc; fish: `spore completion fish > ~/.config/fish/completions/spore.fish`."""
    from click.shell_completion import get_completion_class

    kind = get_completion_class(shell)
    assert kind is not None  # click ships all three
    click.echo(kind(main, {}, "spore", "_SPORE_COMPLETE").source())


@main.command()
@json_option
@click.pass_context
def peers(ctx: click.Context, as_json: bool) -> None:
    """The spores in this one's DHT routing table, its gossip members, and the
    peers refused (with why)."""
    data = client(ctx).get("/v1/peers")

    def human() -> None:
        lines = [f"{p['node_id'][:16]}  {p['address']:21}  {_liveness(p)}"
                 for p in data["peers"]]
        click.echo("\n".join(lines) or "no DHT contacts (start with --peer HOST:PORT)")
        members = data.get("gossip", [])
        if members:
            click.echo("\ngossip:")
            for m in members:
                why = f"  ({m['reason']})" if m.get("reason") else ""
                click.echo(f"  {m['host']}:{m['port']:<6}  {m['state']}{why}")
        for addr, r in data.get("refused", {}).items():
            click.echo(f"refused {addr}: {r['reason']} ({r['detail']})")
        for addr, why in data.get("dht_refused", {}).items():
            click.echo(f"refused by the DHT handshake {addr}: {why}")

    emit(as_json, data, human)


def _liveness(peer: dict[str, Any]) -> str:
    if not peer["alive"]:
        return "not heard from"
    return f"seen {peer['last_seen_s']:.0f}s ago"


@main.command()
@json_option
@click.pass_context
def agents(ctx: click.Context, as_json: bool) -> None:
    """The swarm's agents: id, generation, fitness, interactions, host, parent."""
    data = client(ctx).get("/v1/agents")

    def human() -> None:
        click.echo(f"{'agent':14} {'gen':>3} {'fitness':>8} {'inter.':>6} {'host':14} "
                   f"{'parent':14} state")
        for a in sorted(data["registry"], key=lambda a: (-a["alive"], -a["fitness"])):
            click.echo(f"{a['id'][:12]:14} {a['generation']:>3} {a['fitness']:>8.3f} "
                       f"{a['interactions']:>6} {a['host'][:12]:14} {a['parent'][:12] or '-':14} "
                       f"{'here' if a['here'] else ''}{'' if a['alive'] else ' dead'}")
        for e in list(data["events"])[-5:]:
            click.echo(f"event: {e['event']} {e['agent'][:12]} (generation {e['generation']})")

    emit(as_json, data, human)


@main.group("dht")
def dht_group() -> None:
    """The swarm index."""


@dht_group.command("locate")
@click.argument("memory_id")
@json_option
@click.pass_context
def dht_locate(ctx: click.Context, memory_id: str, as_json: bool) -> None:
    """Which spores hold MEMORY_ID."""
    data = client(ctx).get(f"/v1/dht/locate/{memory_id}")
    emit(as_json, data, lambda: click.echo("\n".join(
        f"{h['node_id'][:16]}  {h['address']}" for h in data["holders"]) or "held by nobody"))


@main.command()
@click.argument("memory_id", required=False)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0))
@json_option
@click.pass_context
def memories(ctx: click.Context, memory_id: str | None, limit: int, offset: int,
             as_json: bool) -> None:
    """List memories, newest first (or show one by id)."""
    api = client(ctx)
    if memory_id:
        one = api.get(f"/v1/memories/{memory_id}")
        emit(as_json, one, lambda: click.echo(output.memory_lines(one)))
        return
    data = api.get(f"/v1/memories?limit={limit}&offset={offset}")
    emit(as_json, data, lambda: click.echo("\n".join(
        f"{m['id'][:16]}  {_when(m['created_ms'])}  {m['origin'][-40:]:40}  "
        f"{m['text'][:60].replace(chr(10), ' ')}" for m in data["memories"])))


main.add_command(mcp_command)
main.add_command(doctor_command)
for _command in MEMORY_COMMANDS:  # forget, export, import
    main.add_command(_command)
