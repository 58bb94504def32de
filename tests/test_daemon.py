"""Daemon lifecycle with real processes: kill -9 durability, SIGTERM, sd_notify."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path

from tests.conftest import Daemon, wait_for


def _teach_loop(d: Daemon, acked: list[str], stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        try:
            code, body = d.http("POST", "/v1/teach", {"text": f"memory number {i} of the loop"})
        except OSError:
            return  # the daemon died mid-request: that one was never acknowledged
        if code == 201:
            acked.append(body["id"])
        i += 1


def test_acknowledged_memories_survive_kill_9(daemon: Daemon) -> None:
    daemon.start()
    acked: list[str] = []
    stop = threading.Event()
    writers = [threading.Thread(target=_teach_loop, args=(daemon, acked, stop))
               for _ in range(2)]
    for w in writers:
        w.start()
    wait_for(lambda: len(acked) >= 40, 120, "40 acknowledged teaches")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)  # while both writers are mid-flight
    daemon.proc.wait()
    stop.set()
    for w in writers:
        w.join()
    daemon.start()
    for mid in acked:
        code, _ = daemon.http("GET", f"/v1/memories/{mid}")
        assert code == 200, f"acknowledged memory {mid} lost"
    status = daemon.cli_json("status")
    assert status["memories"] >= len(acked) and status["indexed"] == status["memories"]
    # and they are searchable again after the restart
    answer = daemon.cli_json("ask", "memory number 3 of the loop")
    assert answer["sources"]
    daemon.stop()


def test_sigterm_drains_and_notifies_systemd(daemon: Daemon, tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(60)
    daemon.env["NOTIFY_SOCKET"] = str(sock_path)
    daemon.env["JOURNAL_STREAM"] = "8:1234"
    daemon.start()
    first = sock.recv(4096).decode()
    assert "READY=1" in first and "STATUS=serving 0 memories" in first
    assert daemon.stop(signal.SIGTERM) == 0
    assert "STOPPING=1" in sock.recv(4096).decode()
    sock.close()
    log = daemon.log.read_text()
    assert "<6>spore: stopping" in log  # journald format: priority prefix, no timestamps
    assert "Traceback" not in log
