"""A real daemon fuzzed against its own OpenAPI document by schemathesis, every
check on (server errors, status codes, content types, schema conformance,
schema-invalid data refused and schema-valid data served, 405 with Allow):
the document is the contract, and the API keeps it.

Deterministic for CI: a fixed seed and example count. POST /v1/gossip/block is
left out (an operator's partition: valid data would cut the spore off);
POST /v1/dna is fuzzed without the token, so it must refuse everything (401).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Daemon

pytest.importorskip("schemathesis")

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
EXAMPLES = 20  # per operation; ~650 test cases in ~25 s
SEED = 20261130


def test_the_api_keeps_its_openapi_document(daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    report = tmp_path / "schemathesis.json"
    res = subprocess.run(
        [SCHEMATHESIS, "run", f"{daemon.url}/v1/openapi.json", "--checks", "all",
         "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--workers", "1",
         "--exclude-name", "POST /v1/gossip/block", "--request-timeout", "30",
         "--report", "json", "--report-json-path", str(report), "--output-truncate", "true"],
        env={**daemon.env, "NO_COLOR": "1"}, capture_output=True, text=True, timeout=240,
        cwd=tmp_path)
    out = json.loads(report.read_text())
    cases = out["test_cases"]
    assert res.returncode == 0 and not out["failures"] and not out["errors"], res.stdout[-6000:]
    ops = out["operations"]
    assert ops["tested"] == ops["total"] - 1 >= 15 and cases["generated"] >= 400, (ops, cases)
    assert daemon.stop() == 0
    log = daemon.log.read_text(errors="replace")
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
