"""Does an open swarm keep answering well while a Sybil attacker votes against it?

8 honest spores on the Debian FAQ satisfaction stream (learning.py's corpus,
stream, asks and ratings), in an OPEN swarm whose identities pay a puzzle
(--bits, default 16), plus one attacker process (scripts/bench/_sybil.py)
with K identities (10, 100, 1,000) that pulls the spores' gossip every 0.5 s
and answers each honest vote with K votes against it (down what users rated
up, up what they rated down), pushed in signed deltas from 127.0.0.2 at most
60 items a second to each spore. The same stream (same seed) runs once
without the attacker in the same run: the baseline. Reported: satisfaction
in the last 500 asks (goal >= 90% at K = 1,000), the share of asks whose
top-1 differs from the unattacked run's (ask by ask), the attacker's cost
(CPU seconds to mint its identities) and what it got accepted, the victims'
RSS and disk. Then an INVITE swarm: the same attacker, holding the DNA file,
gets 0 items accepted (the refusal counters).

    .venv/bin/python scripts/bench/sybil.py [--asks 2000] [--k 10,100,1000]
        [--bits 16] [--seed 1] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _spore import SPORE, Spore
from learning import (
    LOOPBACK,
    Ask,
    Corpus,
    load_corpus,
    refusals,
    run_stream,
    share,
    swarm,
    teach,
    zipf_stream,
)

ATTACKER = Path(__file__).resolve().parent / "_sybil.py"
GOAL = 0.90


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


@contextlib.contextmanager
def invite_swarm(tmp: Path, n: int) -> Iterator[list[Spore]]:
    """n spores of an invite swarm: the founder, the others invited by it."""
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(Spore(tmp / "s0", env=LOOPBACK).found(
            "sybil-family", open_swarm=False, puzzle_bits=None))
        spores = [first]
        for i in range(1, n):
            s = Spore(tmp / f"s{i}", env={**LOOPBACK,
                                          "SPORE_PEERS": f"127.0.0.1:{first.dht_port}"})
            s.state.mkdir(parents=True)
            code = first.call("POST", "/v1/invites", {"may_invite": False})["code"]
            subprocess.run([SPORE, "init", "--join", code, "--json"], env=s.env, check=True,
                           stdout=subprocess.DEVNULL)
            spores.append(stack.enter_context(s))
        yield spores


class Attacker:
    """The attacker process: started (its identities minted) on enter, its
    report read on exit."""

    def __init__(self, tmp: Path, spores: list[Spore], k: int, bits: int,
                 targets: list[dict[str, Any]] | None = None) -> None:
        self.tmp, self.out = tmp, tmp / f"attacker-{k}.json"
        cfg = {"dna": str(spores[0].state / "dna.bin"), "k": k, "bits": bits,
               "victims": [["127.0.0.1", s.dht_port] for s in spores], "out": str(self.out),
               "pull_s": 0.5, "items_per_s": 60, "targets": targets or []}
        self.cfg_path = tmp / f"attacker-{k}.config.json"
        self.cfg_path.write_text(json.dumps(cfg))
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}
        self.report: dict[str, Any] = {}

    def __enter__(self) -> Attacker:
        self.proc = subprocess.Popen([sys.executable, str(ATTACKER), str(self.cfg_path)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the attacker did not start")
        self.ready = json.loads(line)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(120)
        if self.out.exists():
            self.report = json.loads(self.out.read_text())


def victims(spores: list[Spore]) -> dict[str, Any]:
    stats = [s.call("GET", "/v1/status") for s in spores]
    gossip = [st.get("gossip") or {} for st in stats]
    return {"rss_mb": [round(float(st["rss_mb"]), 1) for st in stats],
            "disk_mb": [round(_dir_mb(s.state), 1) for s in spores],
            "gossip_items": [int(g.get("items", 0)) for g in gossip],
            "members": [len(s.call("GET", "/v1/members")["members"]) for s in spores]}


def stream_run(tmp: Path, corpus: Corpus, stream: list[tuple[int, int]], k: int,
               args: argparse.Namespace) -> dict[str, Any]:
    with swarm(tmp, args.spores, puzzle_bits=args.bits) as spores:
        publish_s = teach(spores, corpus.chunks)
        t = time.perf_counter()
        if k:
            with Attacker(tmp, spores, k, args.bits) as attacker:
                asks, _ = run_stream(spores, corpus, stream, poll_every=len(stream))
            report = attacker.report
        else:
            asks, _ = run_stream(spores, corpus, stream, poll_every=len(stream))
            report = {}
        stream_s = time.perf_counter() - t
        seen = victims(spores)
        refused = refusals(spores)
        founder = spores[0].call("GET", "/v1/members")["members"]
        honest = {s.call("GET", "/v1/status")["public_key"] for s in spores}
    trusts = {m["key"]: float(m["trust"]) for m in founder if m["kind"] == "ticket"
              and m["trust"] is not None}
    mine = [t for key, t in trusts.items() if key in honest]
    theirs = [t for key, t in trusts.items() if key not in honest]
    return {"k": k, "asks": asks, "publish_s": publish_s, "stream_s": stream_s,
            "attacker": report, "victims": seen, "refusals": refused,
            "honest_trust_min": min(mine, default=0.0),
            "honest_trust_median": float(np.median(mine)) if mine else 0.0,
            "attacker_trust_max": max(theirs, default=0.0)}


def invite_run(tmp: Path, corpus: Corpus, k: int, args: argparse.Namespace) -> dict[str, Any]:
    """The same attacker against an invite swarm: it cannot pull, so it is
    handed targets (taught memories, FAQ questions) to vote on."""
    with invite_swarm(tmp, 2) as spores:
        spores[0].call("POST", "/v1/ingest", {"chunks": [
            {"text": text, "origin": f"{sec}@{i}"} for i, (sec, text) in
            enumerate(corpus.chunks[:40])]})
        mems = spores[0].call("GET", "/v1/memories?limit=20")["memories"]
        targets = [{"memory": m["id"], "vec": corpus.qv[i % len(corpus.qv)].tolist(),
                    "up": bool(i % 2)} for i, m in enumerate(mems)]
        before = [dict((s.call("GET", "/v1/status").get("gossip") or {}).get("counters", {}))
                  for s in spores]
        with Attacker(tmp, spores, k, args.bits, targets) as attacker:
            deadline = time.monotonic() + args.invite_s
            while time.monotonic() < deadline:
                time.sleep(0.5)
        after = [dict((s.call("GET", "/v1/status").get("gossip") or {}).get("counters", {}))
                 for s in spores]
        seen = victims(spores)
    diff = [{key: int(a.get(key, 0)) - int(b.get(key, 0)) for key in a
             if key.startswith("refused_") and int(a.get(key, 0)) != int(b.get(key, 0))}
            for a, b in zip(after, before, strict=True)]
    return {"k": k, "attacker": attacker.report, "refusals_per_spore": diff,
            "members_per_spore": seen["members"], "seconds": args.invite_s}


def compare(base: list[Ask], run: list[Ask], w: int) -> dict[str, Any]:
    pairs = list(zip(base, run, strict=True))
    changed = [a.top1 != b.top1 for a, b in pairs]
    return {"last": share([a.satisfied for a in run[-w:]]),
            "first": share([a.satisfied for a in run[:w]]),
            "changed_top1": share(changed), "changed_top1_last": share(changed[-w:]),
            "right_to_wrong": sum(a.satisfied and not b.satisfied for a, b in pairs),
            "wrong_to_right": sum(b.satisfied and not a.satisfied for a, b in pairs)}


def show(r: dict[str, Any]) -> None:
    w = r["window"]
    print(f"{r['spores']} honest spores, Debian FAQ, {r['asks']} rated asks (Zipf {r['zipf']}, "
          f"seed {r['seed']}); open swarm, puzzle {r['bits']} bits; attacker from 127.0.0.2, "
          f"<= 60 items/s to each spore, pulls every 0.5 s")
    print(f"{'K':>6} {'last ' + str(w):>9} {'first ' + str(w):>9} {'top-1 chg':>9} "
          f"{'r->w':>5} {'w->r':>5} {'mint CPU s':>10} {'targets':>7} {'votes made':>10} "
          f"{'sent':>7} {'sent/s':>7} {'backlog':>8} {'honest trust min/med':>20} "
          f"{'Sybil trust max':>15} {'RSS MB max':>10} "
          f"{'disk MB max':>11}")
    for row in r["runs"]:
        a = row["attacker"]
        c = row["vs_baseline"]
        print(f"{row['k'] or 'none':>6} {c['last']:>9.1%} {c['first']:>9.1%} "
              f"{c['changed_top1']:>9.1%} {c['right_to_wrong']:>5} {c['wrong_to_right']:>5} "
              f"{a.get('mint_cpu_s', 0.0):>10.2f} {a.get('targets', 0):>7} "
              f"{a.get('votes_made', 0):>10} {a.get('items_sent', 0):>7} "
              f"{a.get('items_per_s', 0.0):>7.1f} {a.get('backlog', 0):>8} "
              f"{row['honest_trust_min']:>10.3f}/{row['honest_trust_median']:<9.3f} "
              f"{row['attacker_trust_max']:>15.3f} {max(row['victims']['rss_mb']):>10.1f} "
              f"{max(row['victims']['disk_mb']):>11.1f}")
    for row in r["runs"]:
        a = row["attacker"]
        print(f"  K={row['k'] or 'none'}: attacker requests {a.get('requests', {})}; honest "
              f"refusals {row['refusals'] or {}}; gossip items per spore "
              f"{row['victims']['gossip_items']}; members per spore "
              f"{row['victims']['members']}; stream {row['stream_s']:.0f} s")
    goal = [row for row in r["runs"] if row["k"] == max(r["ks"])]
    if goal:
        print(f"goal at K={max(r['ks'])}: last {w} >= {GOAL:.0%}: "
              f"{'MET' if goal[0]['vs_baseline']['last'] >= GOAL else 'MISSED'} "
              f"(unattacked {r['runs'][0]['vs_baseline']['last']:.1%})")
    inv = r["invite"]
    if inv is not None:
        a = inv["attacker"]
        print(f"invite swarm ({len(inv['members_per_spore'])} spores), the same attacker "
              f"(K={inv['k']}, DNA file, {a.get('bits')}-bit tickets) for {inv['seconds']:.0f} "
              f"s: items accepted {a.get('items_ok', 0)} of {a.get('items_sent', 0)} sent; "
              f"its requests {a.get('requests', {})}, pulls {a.get('pulls', {})}; refusals "
              f"per spore {inv['refusals_per_spore']}; members per spore "
              f"{inv['members_per_spore']}")
    print(f"wall {r['wall_s']:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spores", type=int, default=8)
    ap.add_argument("--asks", type=int, default=2000)
    ap.add_argument("--k", default="10,100,1000")
    ap.add_argument("--bits", type=int, default=16)
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--invite-s", type=float, default=10.0)
    ap.add_argument("--skip-invite", action="store_true")
    ap.add_argument("--quick", action="store_true", help="600 asks, K = 10,100")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.asks, args.k = 600, "10,100"
    ks = [int(x) for x in args.k.split(",") if x.strip()]
    w = min(args.window, args.asks // 2)
    wall = time.perf_counter()
    corpus = load_corpus()
    stream = zipf_stream(np.random.default_rng(args.seed), list(range(len(corpus.questions))),
                         args.asks, args.zipf, args.spores)
    tmp = Path(tempfile.mkdtemp())
    runs: list[dict[str, Any]] = []
    try:
        base: list[Ask] | None = None
        for k in [0, *ks]:
            run = stream_run(tmp / f"k{k}", corpus, stream, k, args)
            base = base or run["asks"]
            run["vs_baseline"] = compare(base, run["asks"], w)
            runs.append(run)
            a = run["attacker"]
            print(f"[K={k or 'none'}: last {w} {run['vs_baseline']['last']:.1%}, top-1 changed "
                  f"{run['vs_baseline']['changed_top1']:.1%}, mint CPU "
                  f"{a.get('mint_cpu_s', 0.0):.1f} s, items sent {a.get('items_sent', 0)}, "
                  f"requests {a.get('requests', {})}, refusals {run['refusals']}, "
                  f"RSS max {max(run['victims']['rss_mb'])} MB, disk max "
                  f"{max(run['victims']['disk_mb'])} MB, stream {run['stream_s']:.0f} s]",
                  file=sys.stderr, flush=True)
        invite = None
        if not args.skip_invite:
            try:
                invite = invite_run(tmp / "invite", corpus, min(ks), args)
            except (OSError, RuntimeError, subprocess.SubprocessError, SystemExit) as exc:
                print(f"[invite run failed: {exc!r}]", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"spores": args.spores, "asks": args.asks, "zipf": args.zipf, "seed": args.seed,
              "bits": args.bits, "ks": ks, "window": w, "invite": invite,
              "runs": [{k: v for k, v in r.items() if k != "asks"} for r in runs],
              "wall_s": time.perf_counter() - wall}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)


if __name__ == "__main__":
    main()
