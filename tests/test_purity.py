"""The pure modules import no I/O frameworks (DESIGN.md section 1)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = ["crdt.votes", "crdt.orset", "crdt.lww", "crdt.sync", "dht.keys", "dht.compact",
        "dht.index", "dht.codec", "dht.guard", "agents.consensus", "agents.trust",
        "agents.evolution"]
FORBIDDEN = ("asyncio", "aiohttp", "kademlia", "onnxruntime")
# What dht/ and agents/ may use of p2pnode: its records, identity and errors.
LOWER_P2PNODE = {"p2pnode.records", "p2pnode.identity", "p2pnode.errors"}


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_framework(module: str) -> None:
    code = (f"import sys, {module}\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"{module} pulls in {out}"


def test_rooms_import_downward_only() -> None:
    """crdt imports nothing of ours; dht/agents never import cli; nothing imports cli."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    allowed = {"crdt": {"crdt"}, "dht": {"dht", "crdt", "p2pnode"},
               "agents": {"agents", "crdt", "p2pnode"},
               "p2pnode": {"p2pnode", "dht", "agents", "crdt"},
               "cli": {"cli", "p2pnode"}}
    for room, ok in allowed.items():
        for path in (root / room).glob("*.py"):
            for line in path.read_text().splitlines():
                words = line.split()
                if len(words) >= 2 and words[0] in ("import", "from"):
                    top = words[1].split(".")[0]
                    if top in allowed:
                        assert top in ok, f"{path.name} ({room}) imports {top}"
                    if top == "p2pnode" and room in ("dht", "agents"):
                        assert words[1] in LOWER_P2PNODE, f"{path.name} imports {words[1]}"
