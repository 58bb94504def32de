"""Service plumbing: systemd notify, logging for a terminal or journald."""

from __future__ import annotations

import logging
import socket
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


# C0 and C1 controls, DEL and the Unicode line breaks: what lets a string
# from a peer (a card's host, a reason) end a log line and forge the next.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
                 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_controls(text: str) -> str:
    return text.translate(_ESCAPES)


class _OneLineFormatter(logging.Formatter):
    """One record, one line: control characters in the message (arguments
    included) are escaped, whichever module logged it. A traceback keeps its
    lines, each indented and escaped, so none can pass for a record."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = escape_controls(self.formatMessage(record))
        if record.exc_info:
            line += _indented(self.formatException(record.exc_info))
        elif record.exc_text:
            line += _indented(record.exc_text)
        if record.stack_info:
            line += _indented(self.formatStack(record.stack_info))
        return line


def _indented(text: str) -> str:
    return "".join(f"\n  {escape_controls(line)}" for line in text.split("\n"))


class _JournalFormatter(_OneLineFormatter):
    """`<N>` priority prefixes, no timestamps: journald adds its own."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{escape_controls(record.name)}: {super().format(record)}"


def setup_logging(level: str, journald: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if journald:
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                               "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class Notifier:
    """sd_notify(3) over the datagram socket systemd gives in NOTIFY_SOCKET."""

    def __init__(self, address: str | None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract socket namespace
        self.address = address

    def send(self, **fields: str) -> None:
        if not self.address:
            return
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect(self.address)
                sock.sendall(msg)
            except OSError as exc:
                logging.getLogger("spore").warning("cannot notify systemd: %s", exc)
