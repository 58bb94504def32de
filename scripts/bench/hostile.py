"""A spore under a member's floods: do honest asks still get their answers?

One victim spore (a real process) is taught the Debian FAQ; an attacker
process (scripts/bench/_attack.py) holds its DNA and signs well-formed requests
with the project's own modules. Three phases of the same steady asks (the FAQ
questions, in one order): quiet, attack (votes, peer cards, adoptions, score
requests, DHT STOREs and slow bodies, all at once, each at its own rate, for
--seconds), after. Throughout, GET /healthz every 10 ms (its latency bounds
the event loop's stalls), the victim's RSS and its state directory's bytes.
Then: what the victim counted (GET /v1/status), whether it still gives the
answers it gave before, and whether it restarts cleanly.

Goals (issue 10): ask p50 under attack <= 2x without; RSS <= 250 MB; no loop
stall over 100 ms; every attack counted in `spore status`.

    .venv/bin/python scripts/bench/hostile.py [--seconds 30] [--quick] [--json]
        [--rates votes=400,cards=40,adopt=2,score=40,dht=200,slow=48]
        [--batch votes=16,cards=8,dht=4] [--ask-rate 4] [--sources 4] [--keep]

Rates are records a second (votes, cards, bucket entries) or requests a second
(adopt, score); slow is the number of slow connections held at once.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _attack import AttackerProc, write_plan
from _spore import SPORE, Spore, faq_pairs, percentile

from cli.documents import chunk_text
from p2pnode import dna as dna_mod

RATES = {"votes": 400.0, "cards": 40.0, "adopt": 2.0, "score": 40.0, "dht": 200.0, "slow": 48.0}
BATCH = {"votes": 16, "cards": 8, "dht": 4}
GOAL_RATIO, GOAL_RSS_MB, GOAL_STALL_MS = 2.0, 250.0, 100.0
PROBE_EVERY_S, SAMPLE_EVERY_S = 0.010, 0.25
# What peerauth and the peer service refuse by (the rest of gossip's refused_* are items).
REQUEST_REASONS = {"unsigned", "malformed", "another_swarm", "stale", "replay", "bad_signature",
                   "busy", "busy_key", "busy_source", "busy_reading", "busy_compute", "too_large",
                   "slow_body", "blocked", "rate_limited"}


# --- the victim -----------------------------------------------------------------------

class Victim(Spore):
    """A spore whose log goes to a file (the attack makes it talkative)."""

    def __init__(self, state: Path, log: Path) -> None:
        super().__init__(state, env={"SPORE_LOG_LEVEL": "warning"})
        self.log = log

    def __enter__(self) -> Victim:
        if not (self.state / "dna.bin").exists():
            # Issue 10's attacker is a member holding the DNA file, with keys
            # that cost nothing: an open swarm without a puzzle. (An invite
            # swarm refuses it outright: tests/test_members.py.)
            subprocess.run([SPORE, "init", "--swarm", "hostile", "--open", "--puzzle-bits", "0"],
                           env=self.env, check=True, capture_output=True)
        start = time.perf_counter()
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen([SPORE, "node", "run"], env=self.env, stderr=err)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
                self.call("GET", "/healthz")
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"the spore did not start: see {self.log}") from None
                time.sleep(0.05)
        self.startup_s = time.perf_counter() - start
        return self

    def stop(self) -> tuple[int | None, float]:
        """SIGTERM; (exit code, seconds it took)."""
        assert self.proc is not None
        t = time.perf_counter()
        self.proc.terminate()
        try:
            rc: int | None = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            rc = None
        return rc, time.perf_counter() - t


def request(port: int, method: str, path: str, body: Any = None, timeout: float = 60.0
            ) -> tuple[int, Any]:
    """(status, JSON) of one call on a fresh connection; status 0 when it failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        try:
            return resp.status, json.loads(data)
        except ValueError:
            return resp.status, {}
    except (OSError, http.client.HTTPException) as exc:
        return 0, {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        conn.close()


def rss_parts(pid: int) -> tuple[float, float, float]:
    """(RSS, its anonymous part, its file-backed part) in MB: the file part is
    shared libraries (onnxruntime, numpy, cryptography…) and is the same in
    every phase; what an attack adds shows in the anonymous part."""
    got = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            got[key] = int(value.split()[0]) / 1024
    return got.get("VmRSS", 0.0), got.get("RssAnon", 0.0), got.get("RssFile", 0.0)


def disk_bytes(state: Path) -> int:
    total = 0
    for root, _, files in os.walk(state):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).stat().st_size
    return total


# --- what a phase measures ------------------------------------------------------------

@dataclass
class AskResult:
    question: int
    ms: float
    status: int
    top1: str  # memory id of the first source ("" if none or failed)


@dataclass
class Phase:
    name: str
    asks: list[AskResult] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)  # /healthz latencies, ms
    probe_failures: int = 0
    rss: list[float] = field(default_factory=list)
    rss_split: list[tuple[float, float]] = field(default_factory=list)  # (anon, file)
    disk: list[int] = field(default_factory=list)
    cpu_s: float = 0.0  # the victim's CPU time in the phase
    wall_s: float = 0.0

    def summary(self, reference: dict[int, str] | None) -> dict[str, Any]:
        ok = [a.ms for a in self.asks if a.status == 200]
        out: dict[str, Any] = {
            "asks": len(self.asks), "ok": len(ok),
            "errors": dict(Counter(a.status for a in self.asks if a.status != 200)),
            "p50_ms": round(percentile(ok, 50), 1) if ok else None,
            "p99_ms": round(percentile(ok, 99), 1) if ok else None,
            "stall_max_ms": round(max(self.probes), 1) if self.probes else None,
            "probe_p99_ms": round(percentile(self.probes, 99), 1) if self.probes else None,
            "probes": len(self.probes), "probe_failures": self.probe_failures,
            "victim_cpu": round(self.cpu_s / self.wall_s, 2) if self.wall_s else None,
            "rss_max_mb": round(max(self.rss), 1) if self.rss else None,
            "rss_end_mb": round(self.rss[-1], 1) if self.rss else None,
            # anonymous and file-backed MB at the largest RSS
            "rss_max_split_mb": [round(x, 1) for x in
                                 self.rss_split[int(np.argmax(self.rss))]] if self.rss else None,
            "disk_start_mb": round(self.disk[0] / 2**20, 2) if self.disk else None,
            "disk_end_mb": round(self.disk[-1] / 2**20, 2) if self.disk else None}
        if reference is not None:
            same = [reference.get(a.question) == a.top1 for a in self.asks
                    if a.status == 200 and a.question in reference]
            out["top1_same"] = f"{sum(same)}/{len(same)}"
        return out


class Watch:
    """/healthz every 10 ms and RSS/disk every 0.25 s, in two threads."""

    def __init__(self, victim: Victim, phase: Phase) -> None:
        self.victim, self.phase = victim, phase
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._probe, daemon=True),
                         threading.Thread(target=self._sample, daemon=True)]

    def __enter__(self) -> Watch:
        self._cpu, self._wall = self._cpu_s(), time.perf_counter()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        self.phase.cpu_s = self._cpu_s() - self._cpu
        self.phase.wall_s = time.perf_counter() - self._wall

    def _cpu_s(self) -> float:
        """User + system CPU seconds of the victim so far (/proc/<pid>/stat)."""
        assert self.victim.proc is not None
        try:
            stat = Path(f"/proc/{self.victim.proc.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _probe(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.victim.port, timeout=10)
        at = time.perf_counter()
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                self.phase.probes.append((time.perf_counter() - t) * 1000)
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, TimeoutError):  # a stall longer than the timeout
                    self.phase.probes.append((time.perf_counter() - t) * 1000)
                self.phase.probe_failures += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.victim.port, timeout=10)
            at = max(at + PROBE_EVERY_S, time.perf_counter() - 1.0)
            time.sleep(max(0.0, at - time.perf_counter()))
        conn.close()

    def _sample(self) -> None:
        while not self._stop.is_set():
            assert self.victim.proc is not None
            with contextlib.suppress(OSError, ValueError):
                rss, anon, file = rss_parts(self.victim.proc.pid)
                self.phase.rss.append(rss)
                self.phase.rss_split.append((anon, file))
            self.phase.disk.append(disk_bytes(self.victim.state))
            self._stop.wait(SAMPLE_EVERY_S)


def run_asks(victim: Victim, questions: list[str], order: list[int], seconds: float,
             rate: float, phase: Phase) -> None:
    """Asks at a steady rate (the next starts late if one took longer)."""
    conn = http.client.HTTPConnection("127.0.0.1", victim.port, timeout=60)
    start = at = time.perf_counter()
    k = 0
    while time.perf_counter() - start < seconds:
        qi = order[k % len(order)]
        k += 1
        t = time.perf_counter()
        status, top1 = 0, ""
        try:
            conn.request("POST", "/v1/ask", body=json.dumps({"question": questions[qi], "top": 3}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            got = json.loads(resp.read() or b"{}")
            status = resp.status
            sources = got.get("sources") or []
            top1 = str(sources[0].get("id", "")) if sources else ""
        except (OSError, ValueError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", victim.port, timeout=60)
        phase.asks.append(AskResult(qi, (time.perf_counter() - t) * 1000, status, top1))
        at = max(at + 1.0 / rate, time.perf_counter() - 1.0)
        time.sleep(max(0.0, at - time.perf_counter()))
    conn.close()


# --- setting up -----------------------------------------------------------------------

@dataclass(frozen=True)
class Faq:
    chunks: list[tuple[str, str]]  # (section, text)
    questions: list[str]


def load_faq(sections: int | None) -> Faq:
    pairs = faq_pairs()[:sections] if sections else faq_pairs()
    return Faq([(sec, c) for sec, _, a in pairs for c in chunk_text(a)], [q for _, q, _ in pairs])


def teach(victim: Victim, faq: Faq) -> list[bytes]:
    """Ingest every chunk (256 a call); returns the memory ids in chunk order."""
    ids: list[bytes] = []
    items = [{"text": t, "origin": f"{sec}@{i}"} for i, (sec, t) in enumerate(faq.chunks)]
    for i in range(0, len(items), 256):
        got = victim.call("POST", "/v1/ingest", {"chunks": items[i:i + 256]})
        ids += [bytes.fromhex(h) for h in got["ids"]]
    return ids


def wait_published(victim: Victim, limit_s: float = 90.0) -> dict[str, Any]:
    """Once the attacker's DHT nodes joined, the victim publishes its index to
    them: let that settle before measuring, so the phases differ by the attack."""
    t, last, still = time.monotonic(), -1, 0
    dht: dict[str, Any] = {}
    while time.monotonic() - t < limit_s and still < 6:
        _, status = request(victim.port, "GET", "/v1/status")
        dht = status.get("dht") or {}
        published = int((dht.get("counters") or {}).get("published", 0))
        still = still + 1 if published == last and dht.get("contacts") else 0
        last = published
        time.sleep(0.5)
    return {"published": last, "contacts": dht.get("contacts"),
            "seconds": round(time.monotonic() - t, 1)}


# --- the report -----------------------------------------------------------------------

def flat_counters(status: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for section in ("gossip", "agents", "dht"):
        for k, v in ((status.get(section) or {}).get("counters") or {}).items():
            if isinstance(v, int | float):
                out[f"{section}.{k}"] = v
    for k, v in (status.get("counters") or {}).items():
        if isinstance(v, int | float):
            out[f"node.{k}"] = v
    return out


def diff(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))
            if after.get(k, 0) != before.get(k, 0)}


def accounting(attacks: dict[str, Any], moved: dict[str, float]) -> dict[str, Any]:
    """Per attack: did the victim's counters rise by at least what the attacker
    saw it answer? (Counters are shared between attacks: compared in total.)"""
    seen: Counter[str] = Counter()
    for name, t in attacks.items():
        if name == "dht":
            continue
        for outcome, n in t["outcomes"].items():
            if outcome.startswith("refused:"):
                seen[outcome[8:]] += n

    def counted(reason: str) -> float:
        return moved.get(f"gossip.refused_{reason}", 0) + (
            moved.get("gossip.busy", 0) if reason == "busy" else 0)

    items = sum(v for k, v in moved.items() if k.startswith("gossip.refused_")
                and k[15:] not in REQUEST_REASONS | set(seen))
    checks: dict[str, list[tuple[str, float, float]]] = {a: [] for a in attacks}
    for name, t in attacks.items():
        out = t["outcomes"]
        if name != "dht":
            checks[name] += [(f"refused:{r}", seen[r], counted(r)) for r in sorted(seen)
                             if f"refused:{r}" in out]
        if name in ("votes", "cards") and out.get("ok"):
            delivered = attacks["votes"]["delivered"] + attacks["cards"]["delivered"]
            checks[name].append(("items (votes+cards)", delivered,
                                 moved.get("gossip.accepted", 0) + items))
        if name == "adopt" and out.get("ok"):
            checks[name].append(("adopted", out["ok"], moved.get("agents.guests_adopted", 0)))
        if name == "score" and out.get("ok"):
            checks[name].append(("scored", out["ok"], moved.get("agents.scored_for_peers", 0)))
        if name == "dht":
            rejected = sum(v for k, v in moved.items() if k.startswith("dht.rejected_")
                           and k != "dht.rejected_unadmitted")
            checks[name] += [(what, out.get(what, 0), got) for what, got in (
                ("stored", moved.get("dht.stored", 0)), ("rejected", rejected),
                ("unadmitted", moved.get("dht.rejected_unadmitted", 0))) if out.get(what)]
    return {a: {"checks": [{"what": w, "seen": s, "victim_counted": c} for w, s, c in cs],
                "counted": all(c >= s for _, s, c in cs) and bool(cs)}
            for a, cs in checks.items() if attacks[a]["sent"]}


def goals(summ: dict[str, dict[str, Any]], counted: dict[str, Any]) -> dict[str, Any]:
    quiet, attack = summ["quiet"]["p50_ms"], summ["attack"]["p50_ms"]
    ratio = attack / quiet if quiet and attack else None
    rss = max((s["rss_max_mb"] or 0) for s in summ.values())
    stall = max((s["stall_max_ms"] or 0) for s in summ.values())
    return {"p50_ratio": None if ratio is None else round(ratio, 2),
            "p50_attack_le_2x_quiet": None if ratio is None else ratio <= GOAL_RATIO,
            "rss_max_mb": rss, "rss_le_250mb": rss <= GOAL_RSS_MB,
            "stall_max_ms": stall, "no_stall_over_100ms": stall <= GOAL_STALL_MS,
            "every_attack_counted": all(c["counted"] for c in counted.values())
            if counted else None}


def log_errors(log: Path) -> dict[str, Any]:
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = text.splitlines()
    errors = [ln for ln in lines if " ERROR " in ln or ln.startswith("<3>")]
    return {"tracebacks": text.count("Traceback"), "error_lines": len(errors),
            "warning_lines": sum(" WARNING " in ln for ln in lines),
            "last_errors": list(dict.fromkeys(e[:200] for e in errors))[-3:]}


def show(report: dict[str, Any]) -> None:
    s = report["setup"]
    print(f"hostile: 1 victim, {s['memories']} memories, {s['questions']} questions; "
          f"phases of {s['phase_s']:g} s, attack {s['attack_s']:g} s; load {s['load_before']} "
          f"-> {s['load_after']} on {os.cpu_count()} cores")
    a, pub = s["attacker"], s["published"]
    print(f"attacker: {a.get('dht_nodes')} DHT nodes, {a.get('dht_admitted')} admitted by the "
          f"victim ({pub['contacts']} contacts; it published {pub['published']} values, "
          f"settled in {pub['seconds']} s); sources {', '.join(s['sources'])}")
    print(f"{'phase':8}{'asks':>6}{'ok':>5}{'p50 ms':>9}{'p99 ms':>9}{'stall ms':>10}"
          f"{'probe p99':>10}{'rss MB':>8}{'disk MB':>14}{'cpu':>6}{'top-1 same':>12}")
    for name, p in report["phases"].items():
        disk = f"{p['disk_start_mb']}->{p['disk_end_mb']}"
        print(f"{name:8}{p['asks']:>6}{p['ok']:>5}{p['p50_ms']!s:>9}{p['p99_ms']!s:>9}"
              f"{p['stall_max_ms']!s:>10}{p['probe_p99_ms']!s:>10}{p['rss_max_mb']!s:>8}"
              f"{disk:>14}{p['victim_cpu']!s:>6}{p.get('top1_same', '-'):>12}")
    print("rss at its max, anonymous + file-backed MB: " + ", ".join(
        f"{name} {p['rss_max_split_mb'][0]:g} + {p['rss_max_split_mb'][1]:g}"
        for name, p in report["phases"].items() if p["rss_max_split_mb"]))
    print("\nattack   sent  items  answered")
    for name, t in report["attacks"].items():
        outs = ", ".join(f"{k} {v}" for k, v in t["outcomes"].items())
        print(f"{name:7}{t['sent']:>6}{t['items']:>7}  {outs}")
    print("\ncounted by the victim (seen by the attacker <= counted by the victim)")
    for name, c in report["counted"].items():
        checks = "; ".join(f"{x['what']} {x['seen']:g} <= {x['victim_counted']:g}"
                           for x in c["checks"])
        print(f"{name:7}{'yes' if c['counted'] else 'NO':>4}  {checks}")
    print(f"\ntarpit connections from the victim: {report['tarpit_hits']}; attacker CPU "
          f"{report['attacker_cpu_s']} s in {report['attack_s']} s")
    print("goals: " + ", ".join(f"{k} {v}" for k, v in report["goals"].items()))
    print("restart: " + json.dumps(report["restart"]))
    print("victim log: " + json.dumps(report["log"]))
    print("victim counters moved (attack and after): " + json.dumps(report["counters_moved"]))


# --- the run --------------------------------------------------------------------------

def parse_pairs(text: str | None, defaults: dict[str, float]) -> dict[str, float]:
    out = dict(defaults)
    for part in (text or "").split(","):
        if part.strip():
            k, _, v = part.partition("=")
            if k.strip() not in defaults:
                raise SystemExit(f"unknown name {k!r}: one of {', '.join(defaults)}")
            out[k.strip()] = float(v)
    return out


def phase(name: str, victim: Victim, faq: Faq, order: list[int], seconds: float,
          rate: float) -> Phase:
    p = Phase(name)
    with Watch(victim, p):
        run_asks(victim, faq.questions, order, seconds, rate, p)
    return p


def reference_answers(p: Phase) -> dict[int, str]:
    votes: dict[int, Counter[str]] = {}
    for a in p.asks:
        if a.status == 200 and a.top1:
            votes.setdefault(a.question, Counter())[a.top1] += 1
    return {q: c.most_common(1)[0][0] for q, c in votes.items()}


def restart(victim: Victim, faq: Faq, ref: dict[int, str], memories: int) -> dict[str, Any]:
    rc, stop_s = victim.stop()
    try:
        victim.__enter__()
    except SystemExit as exc:
        return {"exit_code": rc, "stop_s": round(stop_s, 2), "error": str(exc)}
    _, status = request(victim.port, "GET", "/v1/status")
    same = 0
    sample = sorted(ref)[:30]
    for qi in sample:
        code, got = request(victim.port, "POST", "/v1/ask",
                            {"question": faq.questions[qi], "top": 3})
        sources = (got.get("sources") or []) if code == 200 else []
        same += bool(sources) and str(sources[0].get("id")) == ref[qi]
    return {"exit_code": rc, "stop_s": round(stop_s, 2), "start_s": round(victim.startup_s, 2),
            "healthz": request(victim.port, "GET", "/healthz")[0] == 200,
            "memories_before": memories, "memories_after": status.get("memories"),
            "disk_after_restart_mb": round(disk_bytes(victim.state) / 2**20, 2),
            "top1_same": f"{same}/{len(sample)}"}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    faq = load_faq(args.sections)
    log = tmp / "victim.log"
    with contextlib.ExitStack() as stack:
        victim = stack.enter_context(Victim(tmp / "victim", log))
        memories = teach(victim, faq)
        dna = dna_mod.load(victim.state)
        assert dna is not None
        write_plan(tmp / "plan.npz", dna, faq.questions, memories)
        sources = [f"127.0.0.{2 + i}" for i in range(args.sources)]
        config = {"host": "127.0.0.1", "peer_port": victim.dht_port, "dht_port": victim.dht_port,
                  "dna": str(victim.state / "dna.bin"), "plan": str(tmp / "plan.npz"),
                  "sources": sources, "rates": args.rates, "batch": args.batch,
                  "tmp": str(tmp), "dht_nodes": min(4, len(sources))}
        (tmp / "attack.json").write_text(json.dumps(config))
        attacker = AttackerProc(tmp / "attack.json", tmp / "attacker.log")
        stack.callback(attacker.close)
        ready = attacker.receive(120)
        settled = wait_published(victim, 90.0 if ready.get("dht_admitted") else 10.0)
        order = [int(i) for i in np.random.default_rng(3).permutation(len(faq.questions))]
        run_asks(victim, faq.questions, order, args.warmup, args.ask_rate, Phase("warm-up"))
        load_before = os.getloadavg()
        quiet = phase("quiet", victim, faq, order, args.phase_seconds, args.ask_rate)
        ref = reference_answers(quiet)
        before = flat_counters(request(victim.port, "GET", "/v1/status")[1])
        attacker.send({"go": args.seconds, "targets": [[q, m] for q, m in ref.items()]})
        attack = phase("attack", victim, faq, order, args.seconds, args.ask_rate)
        result = attacker.receive(args.seconds + 60)
        after = phase("after", victim, faq, order, args.phase_seconds, args.ask_rate)
        status = request(victim.port, "GET", "/v1/status")[1]
        load_after = os.getloadavg()
        attacker.close()
        moved = diff(before, flat_counters(status))
        phases = {p.name: p.summary(None if p is quiet else ref) for p in (quiet, attack, after)}
        attacks = result.get("attacks", {})
        counted = accounting(attacks, moved)
        return {
            "setup": {"memories": len(memories), "questions": len(faq.questions),
                      "phase_s": args.phase_seconds, "attack_s": args.seconds,
                      "ask_rate": args.ask_rate, "warmup_s": args.warmup, "rates": args.rates,
                      "batch": args.batch,
                      "sources": sources, "attacker": ready, "published": settled,
                      "load_before": [round(x, 2) for x in load_before],
                      "load_after": [round(x, 2) for x in load_after]},
            "phases": phases, "attacks": attacks, "counted": counted,
            "tarpit_hits": result.get("tarpit_hits"), "attacker_error": result.get("error"),
            "attacker_cpu_s": result.get("cpu_s"), "attack_s": result.get("seconds"),
            "goals": goals(phases, counted),
            "restart": restart(victim, faq, ref, int(status.get("memories", -1))),
            "log": log_errors(log), "counters_moved": moved,
            "counters_after": flat_counters(status)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the attack")
    ap.add_argument("--phase-seconds", type=float,
                    help="length of the quiet and after phases (default: --seconds)")
    ap.add_argument("--ask-rate", type=float, default=4.0, help="asks a second")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of asks not measured")
    ap.add_argument("--rates", help="name=rate,… (default "
                    + ",".join(f"{k}={v:g}" for k, v in RATES.items()) + ")")
    ap.add_argument("--batch", help="records a request (default "
                    + ",".join(f"{k}={v}" for k, v in BATCH.items()) + ")")
    ap.add_argument("--sources", type=int, default=4, help="attacker addresses 127.0.0.2…")
    ap.add_argument("--sections", type=int, help="teach only the first N FAQ sections")
    ap.add_argument("--quick", action="store_true", help="a smoke run: small and short")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.seconds = min(args.seconds, 8.0)
        args.sections = args.sections or 30
        defaults = {k: v / 4 for k, v in RATES.items()}
    else:
        defaults = dict(RATES)
    args.phase_seconds = args.phase_seconds or args.seconds
    args.rates = parse_pairs(args.rates, defaults)
    args.batch = {k: int(v) for k, v in parse_pairs(args.batch, dict(BATCH)).items()}
    tmp = Path(tempfile.mkdtemp(prefix="hostile-"))
    try:
        report = run(args, tmp)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        show(report)


if __name__ == "__main__":
    main()
