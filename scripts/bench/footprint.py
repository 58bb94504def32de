"""What a spore costs an edge device: disk written per ask and per rating, RSS.

A real spore process (an open swarm without a puzzle, as learning.py founds
it) is taught the Debian FAQ, then serves a rated stream (Zipf over the FAQ's
questions, up when the top-1 source is from the question's section, down
otherwise). The daemon's ``/proc/<pid>/io`` ``write_bytes`` (bytes it sent
to the storage layer, all threads) is read just before and just after every
ask and every rating: the bytes written while an ask was in flight are the
ask's, while a rating was, the rating's; what was written between calls
(background flushes, gossip, checkpoints) is reported on its own and in the
all-in figure. RSS (/proc/<pid>/status VmRSS): just after start, after
teaching and a quiet spell (idle; also split into anonymous memory and pages
of mapped files, RssAnon and RssFile), and after the stream. Selection over
the stream, read from ``/v1/agents`` every few asks: divisions per 1,000
ratings, population, max generation, and each parent's fitness against the
population's at the time (its z-score and rank).

``--base DIR`` runs the same bench first against another source tree (e.g.
``mkdir /tmp/fpbase && git archive HEAD | tar -x -C /tmp/fpbase``; its code
is put first on the spore's PYTHONPATH), so before and after come from one
run on one machine. The tree measured second is the one this script is in:
to weigh one change alone, copy a tree, change it, and run the copy's
footprint.py with ``--base`` the tree without the change.

    .venv/bin/python scripts/bench/footprint.py [--asks 2000] [--base /work/fp-base]
        [--seed 1] [--json] [--default-config]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _spore import ROOT, Spore, faq_pairs
from learning import LOOPBACK, zipf_stream

from cli.documents import chunk_text

GOALS = {"ask_kib": 4.0, "rating_kib": 16.0, "idle_rss_mb": 150.0}
POLL_EVERY = 20  # asks between two reads of /v1/agents
QUIET_S = 3.0  # idle: no byte written for this long


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/<pid>/io")


def rss_parts(pid: int) -> dict[str, float]:
    """RssAnon and RssFile of /proc/<pid>/status, in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def settle(pid: int, quiet_s: float = QUIET_S, limit_s: float = 60.0) -> None:
    """Wait until the daemon has written nothing for quiet_s (or limit_s passed)."""
    last, since, deadline = write_bytes(pid), time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.25)
        now = write_bytes(pid)
        if now != last:
            last, since = now, time.monotonic()


class Selection:
    """Divisions seen in /v1/agents' events, each parent against the population."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int, str]] = set()
        self.parents: list[dict[str, float]] = []
        self.population: list[int] = []
        self.max_generation = 0
        self.counters: dict[str, int] = {}

    def poll(self, spore: Spore) -> None:
        got = spore.call("GET", "/v1/agents")
        here = {a["id"]: a for a in got["here"]}
        fit = np.asarray([a["fitness"] for a in here.values()], dtype=float)
        self.population.append(len(here))
        self.max_generation = max([self.max_generation,
                                   *(a["generation"] for a in got["registry"])])
        self.counters = dict(got["counters"])
        for e in got["events"]:
            key = (e["agent"], e["at_ms"], str(e.get("child", "")))
            if e["event"] != "divided" or key in self.seen:
                continue
            self.seen.add(key)
            parent = here.get(e["agent"])
            if parent is None or len(fit) < 2:
                continue
            f = float(parent["fitness"])
            self.parents.append({"fitness": f, "z": float((f - fit.mean()) / (fit.std() + 1e-9)),
                                 "rank": float((fit > f).sum()) / len(fit),
                                 "population_mean": float(fit.mean()),
                                 "population_std": float(fit.std())})

    def summary(self, ratings: int) -> dict[str, Any]:
        p = self.parents

        def mean(key: str) -> float | None:
            return float(np.mean([x[key] for x in p])) if p else None

        divided = int(self.counters.get("divided", 0))
        return {"divided": divided, "per_1000_ratings": 1000 * divided / max(ratings, 1),
                "died": int(self.counters.get("died", 0)),
                "population": {"min": min(self.population), "max": max(self.population),
                               "last": self.population[-1]},
                "max_generation": self.max_generation, "parents_measured": len(p),
                "parent_fitness": mean("fitness"), "population_fitness": mean("population_mean"),
                "population_std": mean("population_std"), "parent_z": mean("z"),
                "parent_rank": mean("rank")}


def run_tree(tree: Path, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    pairs = faq_pairs()
    chunks = [(sec, c) for sec, _, a in pairs for c in chunk_text(a)]
    stream = zipf_stream(np.random.default_rng(args.seed), list(range(len(pairs))), args.asks,
                         args.zipf, 1)
    env = {**LOOPBACK, "PYTHONPATH": str(tree)}
    if args.default_config:  # SPORE_GENERATE unset: the default [generate]
        env["SPORE_GENERATE"] = ""
    with Spore(tmp / "spore", env=env).found() as spore:
        assert spore.proc is not None
        pid = spore.proc.pid
        settle(pid)
        start_rss = spore.rss_mb
        for at in range(0, len(chunks), 256):  # alone: nothing to wait for but the ingest
            spore.call("POST", "/v1/ingest", {"chunks": [
                {"text": text, "origin": f"{sec}@{i}"}
                for i, (sec, text) in enumerate(chunks[at:at + 256], at)]})
        settle(pid)
        idle_rss, idle_parts = spore.rss_mb, rss_parts(pid)
        written = {"ask": 0, "rating": 0, "between": 0}
        calls = {"ask": 0, "rating": 0}
        right, selection = 0, Selection()
        selection.poll(spore)
        start, t0 = write_bytes(pid), time.perf_counter()
        last = start
        for k, (qi, _) in enumerate(stream, 1):
            sec, question, _ = pairs[qi]
            before = write_bytes(pid)
            written["between"] += before - last
            got = spore.call("POST", "/v1/ask", {"question": question, "top": 5})
            last = write_bytes(pid)
            written["ask"] += last - before
            calls["ask"] += 1
            sources = got["sources"]
            ok = bool(sources) and sources[0]["origin"].split("@")[0] == sec
            right += ok
            if got["answer_id"]:
                before = write_bytes(pid)
                written["between"] += before - last
                spore.call("POST", "/v1/rate", {"answer_id": got["answer_id"],
                                                "vote": "up" if ok else "down"})
                last = write_bytes(pid)
                written["rating"] += last - before
                calls["rating"] += 1
            if k % POLL_EVERY == 0 or k == len(stream):
                selection.poll(spore)
        stream_s = time.perf_counter() - t0
        settle(pid)
        written["between"] += write_bytes(pid) - last
        total = write_bytes(pid) - start
        after_rss = spore.rss_mb
        agents_db = tmp / "spore" / "agents.sqlite3"
        db_mb = sum(p.stat().st_size for p in agents_db.parent.glob("agents.sqlite3*")) / 2**20
    return {
        "tree": str(tree), "asks": calls["ask"], "ratings": calls["rating"],
        "satisfied": right / max(len(stream), 1), "stream_s": stream_s,
        "ask_kib": written["ask"] / 1024 / max(calls["ask"], 1),
        "rating_kib": written["rating"] / 1024 / max(calls["rating"], 1),
        "between_kib_per_ask": written["between"] / 1024 / max(calls["ask"], 1),
        "all_in_kib_per_rated_ask": total / 1024 / max(calls["ask"], 1),
        "total_mib": total / 2**20, "start_rss_mb": start_rss, "idle_rss_mb": idle_rss,
        "idle_anon_mb": idle_parts["RssAnon"], "idle_file_mb": idle_parts["RssFile"],
        "after_rss_mb": after_rss,
        "agents_db_mb": db_mb, "selection": selection.summary(calls["rating"]),
    }


def show(results: list[dict[str, Any]], seed: int, config: str) -> None:
    names = ["before", "after"] if len(results) == 2 else ["this tree"]
    rows: list[tuple[str, Any]] = [
        ("disk per ask, KiB (goal <= 4)", "ask_kib"),
        ("disk per rating, KiB (goal <= 16)", "rating_kib"),
        ("written between calls, KiB per ask", "between_kib_per_ask"),
        ("all-in disk per rated ask, KiB", "all_in_kib_per_rated_ask"),
        ("written over the stream, MiB", "total_mib"),
        ("agents store at the end, MiB", "agents_db_mb"),
        ("RSS just after start, MB", "start_rss_mb"),
        ("idle RSS, MB (goal <= 150)", "idle_rss_mb"),
        ("  of it anonymous, MB", "idle_anon_mb"),
        ("  of it mapped files, MB", "idle_file_mb"),
        ("RSS after the stream, MB", "after_rss_mb"),
        ("satisfied (top-1 right)", "satisfied"),
        ("stream wall time, s", "stream_s")]
    sel: list[tuple[str, str]] = [
        ("divisions per 1,000 ratings", "per_1000_ratings"), ("divisions", "divided"),
        ("deaths", "died"), ("max generation", "max_generation"),
        ("parents' fitness (mean)", "parent_fitness"),
        ("population's fitness at their division", "population_fitness"),
        ("population's fitness std", "population_std"),
        ("parents' z-score in the population", "parent_z"),
        ("parents' rank (0 = fittest, 1 = last)", "parent_rank")]
    r0 = results[0]
    print(f"one spore, Debian FAQ, {r0['asks']} asks ({r0['ratings']} rated), seed "
          f"{seed}, {config}; /proc/<pid>/io write_bytes of the daemon")
    print(f"  {'':44}" + "".join(f"{n:>14}" for n in names))
    for label, key in rows:
        print(f"  {label:44}" + "".join(f"{r[key]:>14.2f}" for r in results))
    for label, key in sel:
        vals = [r["selection"][key] for r in results]
        print(f"  {label:44}" + "".join(f"{'-' if v is None else f'{v:.2f}':>14}" for v in vals))
    print(f"  {'population (min / max / last)':44}" + "".join(
        "{min:>6} / {max} / {last}".format(**r["selection"]["population"]).rjust(14)
        for r in results))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--asks", type=int, default=2000)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--base", type=Path, help="another source tree, measured first")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--default-config", action="store_true",
                    help="the spore's default [generate] (the embedded generator when "
                         "installed; it starts at the first ask, in a child process whose "
                         "RSS is not the daemon's) instead of SPORE_GENERATE=off")
    args = ap.parse_args()
    trees = ([args.base.resolve()] if args.base else []) + [ROOT]
    results = []
    for tree in trees:
        tmp = Path(tempfile.mkdtemp(prefix="footprint-"))
        try:
            results.append(run_tree(tree, tmp, args))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        show(results, args.seed, "default config" if args.default_config
             else "SPORE_GENERATE=off")


if __name__ == "__main__":
    main()
