"""The pure modules import no I/O frameworks (DESIGN.md section 1)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PURE = ["crdt.votes", "crdt.orset", "crdt.lww", "crdt.sync", "crdt.wire", "dht.keys",
        "dht.compact", "dht.index", "dht.codec", "dht.guard", "agents.consensus", "agents.trust",
        "agents.evolution", "agents.learner", "agents.architecture", "p2pnode.ranking",
        "p2pnode.answering", "cli.transcripts"]
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


ROOT = pathlib.Path(__file__).resolve().parents[1]
ROOMS = ("crdt", "dht", "agents", "p2pnode", "cli")


def _import_graph() -> dict[str, set[str]]:
    """Module -> the first-party modules it imports anywhere in its text
    (inside functions too: a deferred import is still a cycle)."""
    names = {f"{p.parent.name}.{p.stem}" if p.stem != "__init__" else p.parent.name: p
             for room in ROOMS for p in (ROOT / room).glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.update({node.module} & names.keys())
                deps.update(f"{node.module}.{a.name}" for a in node.names
                            if f"{node.module}.{a.name}" in names)
        graph[name] = deps - {name}
    return graph


def test_no_module_imports_itself_through_others() -> None:
    graph = _import_graph()
    assert {"agents.guard", "agents.genome"} <= graph.keys()
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            mod = todo.pop()
            assert mod != start, f"{start} imports itself through {sorted(seen)}"
            if mod not in seen:
                seen.add(mod)
                todo.extend(graph[mod])


@pytest.mark.parametrize(("module", "absent"), [
    ("agents.guard", "agents.genome"),  # the guard builds on the architecture, not the genome
    ("agents.genome", None),
    ("agents.architecture", "onnx"),
])
def test_agent_modules_import_alone(module: str, absent: str | None) -> None:
    code = f"import sys, {module}\nprint({absent!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "False"
