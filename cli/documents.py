"""Documents → chunks of text for `spore ingest` (pure functions and file reading).

It lives beside its only user, cli.ingest: files are judged, read and chunked
on the device that names them, and the daemon only ever receives the chunks.

The pipeline is  expand_paths → read_document → chunk_text, with chunk_file
joining the last two. The walk lists only what the named folders openly hold,
and reading checks again that the file opened is the one listed. HTML is
flattened to text in which headings become Markdown ATX headings ("## 2.1.
What is Debian?"), so chunk_text treats HTML and Markdown alike: every chunk
starts with the heading of its section. That heading is what a question looks
like, which is why retrieval finds the answer paragraphs under it. Chat
logs and subtitles are read the same way and cut by cli.transcripts instead.

Nothing here is asynchronous; the CLI calls it before talking to the daemon.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from cli.transcripts import TRANSCRIPT_SUFFIXES, TranscriptError, parse_transcript
from p2pnode.errors import SporeError
from p2pnode.openapi import MAX_ORIGIN, ORIGIN_CONTROL

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SUPPORTED_SUFFIXES",
    "Chunk",
    "FileChunks",
    "IngestError",
    "Listed",
    "Listing",
    "chunk_file",
    "chunk_text",
    "expand_paths",
    "faq_sections",
    "file_chunks",
    "html_to_text",
    "read_document",
]

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", *TRANSCRIPT_SUFFIXES)
DEFAULT_MAX_BYTES = 8 * 1024 * 1024

_HTML_SUFFIXES = (".html", ".htm")
_ONLY = "only UTF-8 text, Markdown, HTML, chat logs and subtitles are ingested"


class IngestError(SporeError):
    """A file that cannot be ingested; the message names the file and the reason."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Chunk:
    """One piece of a document; `origin` is "<absolute path>#<index>" (a chat
    log's "#<conversation>:<exchange>", a subtitle's "@<from>-<to>"), and
    `question` what the text answers (a chat log's user turn; else empty)."""

    text: str
    origin: str
    question: str = ""


@dataclass(frozen=True)
class FileChunks:
    """The chunks of one file, and what it held but was left out: {reason: count}."""

    chunks: list[Chunk]
    left_out: dict[str, int]


# --------------------------------------------------------------------- paths

# What is taught spreads to the whole swarm, so a walk reads only what the
# named folders openly hold: a symlink out of them, a hidden folder like
# ~/.ssh or a file only its owner may read is taken only when named (issue 10).
_SHARED_READ = stat.S_IRGRP | stat.S_IROTH
_FileId = tuple[int, int]  # (st_dev, st_ino): the real file, whatever its name


@dataclass(frozen=True)
class Listed:
    """A file chosen to be read: its path, the real file it was when listed,
    and whether it was named on the command line. Reading it checks again
    that the file opened is that one (see chunk_file)."""

    path: Path
    device: int
    inode: int
    named: bool


@dataclass(frozen=True)
class Listing:
    """What expand_paths chose: the files, the (path, reason) pairs skipped, and
    the hidden files and folders walks left out (apart: a home holds dozens)."""

    files: list[Listed]
    skipped: list[tuple[Path, str]]
    hidden: list[Path]


def expand_paths(paths: Sequence[Path]) -> Listing:
    """The files named, or found by walking the folders named, and the rest.

    A named file is taken whatever its mode or name if its type is supported.
    Folders are walked in sorted order, keeping supported suffixes; a walk
    leaves out hidden files and folders (".git", ".ssh"), files that grant no
    read permission to group or others (the file's own mode decides, not its
    folder's), and symlinks whose real target is outside every named folder.
    Symlinks that stay inside are followed after the real tree, so a file
    keeps its real name when it has one. Every real folder is walked once and
    every real file listed once, so symlink loops end.
    """
    walk = _Walk(paths)
    for path in paths:
        if path.is_dir():
            walk.scan(path)
        else:
            walk.take_named(path)
    walk.follow_links()
    return Listing(walk.files, list(dict.fromkeys(walk.skipped)), walk.hidden)


class _Walk:
    """One expand_paths: the named folders, what was seen, what was chosen."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.roots = [Path(os.path.realpath(path)) for path in paths if path.is_dir()]
        self.named = {_file_id(found) for found in map(_stat, paths) if found}
        self.files: list[Listed] = []
        self.skipped: list[tuple[Path, str]] = []
        self.hidden: list[Path] = []
        self._taken: set[_FileId] = set()
        self._folders: set[_FileId] = set()
        self._links: deque[Path] = deque()

    def take_named(self, path: Path) -> None:
        reason = _explicit_file_problem(path)
        found = _stat(path)
        if reason is None and found:
            self._add(path, found, named=True)
        else:
            self.skipped.append((path, reason or "no such file or directory"))

    def scan(self, folder: Path) -> None:
        """Walks a folder depth-first in sorted order; symlinks wait for follow_links."""
        stack = [("dir", folder)]
        while stack:
            kind, path = stack.pop()
            if kind == "link":
                self._links.append(path)
            elif kind == "file":
                self._take_found(path)
            elif self._enter(path):
                stack.extend(reversed(self._children(path)))

    def follow_links(self) -> None:
        while self._links:
            link = self._links.popleft()
            if link.is_dir():
                self.scan(link)
            else:
                self._take_found(link)  # or says it is broken, or a loop

    def _enter(self, folder: Path) -> bool:
        """Whether to list a folder: it lies inside a named one and is new."""
        try:
            real, folder_id = os.path.realpath(folder), _file_id(folder.stat())
        except OSError as exc:
            self.skipped.append((folder, _os_reason(exc, folder)))
            return False
        if not self._inside(real):
            self.skipped.append((folder, _leaves(real)))
            return False
        new = folder_id not in self._folders
        self._folders.add(folder_id)
        return new

    def _children(self, folder: Path) -> list[tuple[str, Path]]:
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:
            self.skipped.append((folder, _os_reason(exc, folder)))
            return []
        children: list[tuple[str, Path]] = []
        for entry in entries:
            kind = _kind(entry)
            if kind is None:
                continue
            path = Path(folder, entry.name)
            if entry.name.startswith("."):
                self.hidden.append(path)
            else:
                children.append((kind, path))
        return children

    def _take_found(self, path: Path) -> None:
        """Lists a file found by walking, or says why not."""
        try:
            found, real = path.stat(), os.path.realpath(path)
            moved = _file_id(os.stat(real)) != _file_id(found)
        except OSError as exc:
            self.skipped.append((path, _os_reason(exc, path)))
            return
        if _file_id(found) in self.named:
            return  # taken as named, whatever its mode or place
        if not stat.S_ISREG(found.st_mode):
            reason = "not a regular file or directory"
        elif not self._inside(real):
            reason = _leaves(real)
        elif moved:
            reason = "changed while being listed"
        elif not found.st_mode & _SHARED_READ:
            reason = _owner_only(found.st_mode)
        else:
            self._add(path, found, named=False)
            return
        self.skipped.append((path, reason))

    def _add(self, path: Path, found: os.stat_result, named: bool) -> None:
        file_id = _file_id(found)
        if file_id not in self._taken:
            self._taken.add(file_id)
            self.files.append(Listed(path, *file_id, named=named))

    def _inside(self, real: str) -> bool:
        return any(Path(real).is_relative_to(root) for root in self.roots)


def _kind(entry: os.DirEntry[str]) -> str | None:
    """The kind of entry a walk may read ("link", "dir", "file"); None for the rest."""
    try:
        link, folder = entry.is_symlink(), entry.is_dir()  # is_dir follows links
    except OSError:  # gone or unreadable: reading it will say why
        link, folder = False, False
    if not folder and not _is_supported(entry.name):
        return None
    return "link" if link else "dir" if folder else "file"


def _stat(path: Path) -> os.stat_result | None:
    """A regular file's status, or None."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found if stat.S_ISREG(found.st_mode) else None


def _file_id(found: os.stat_result) -> _FileId:
    return found.st_dev, found.st_ino


def _leaves(real: str) -> str:
    return f"symlink leaves the named folders → {real}"


def _owner_only(mode: int) -> str:
    shown = f"{stat.S_IMODE(mode):04o}"
    return f"readable only by its owner (mode {shown}); name it explicitly to ingest it"


def _explicit_file_problem(path: Path) -> str | None:
    if not path.exists():
        return "broken symbolic link" if path.is_symlink() else "no such file or directory"
    if not path.is_file():
        return "not a regular file or directory"
    if not _is_supported(path.name):
        shown = path.suffix or "no suffix"
        names = ", ".join(SUPPORTED_SUFFIXES)
        return f"unsupported file type ({shown}); only {names} files are ingested"
    return None


def _is_supported(name: str) -> bool:
    return name.lower().endswith(SUPPORTED_SUFFIXES)


# ------------------------------------------------------------------- reading

# Non-blocking, so that a FIFO swapped in after the type check cannot hang us.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)


def read_document(source: Path | Listed, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The text of a UTF-8 text, Markdown or HTML file; raises IngestError.

    A plain path is read as if named; a Listed file must still be the file
    that was listed, and one found by walking must still be shared-readable.
    """
    path = source.path if isinstance(source, Listed) else source
    data = _read_bytes(source, max_bytes)
    text = _decode(path, data)
    if path.suffix.lower() in _HTML_SUFFIXES:
        return html_to_text(text)
    return text


def _read_bytes(source: Path | Listed, max_bytes: int) -> bytes:
    path = source.path if isinstance(source, Listed) else source
    try:
        _check_type(path, path.stat().st_mode)  # a FIFO or device is never opened
        fd = os.open(path, _OPEN_FLAGS)
        try:
            opened = os.fstat(fd)
            _check_type(path, opened.st_mode)
            if isinstance(source, Listed):
                _check_listed(source, opened)
            with open(fd, "rb", closefd=False) as file:
                data = file.read(max_bytes + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise IngestError(path, _os_reason(exc, path)) from exc
    if len(data) > max_bytes:
        raise IngestError(path, f"larger than {_size(max_bytes)}")
    return data


def _check_type(path: Path, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise IngestError(path, "is a directory")
    if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
        raise IngestError(path, "not a regular file")


def _check_listed(listed: Listed, opened: os.stat_result) -> None:
    """The listing judged one real file: refuse whatever took its place since."""
    if _file_id(opened) != (listed.device, listed.inode):
        raise IngestError(listed.path, "changed since it was listed; not read")
    if not listed.named and not opened.st_mode & _SHARED_READ:
        raise IngestError(listed.path, _owner_only(opened.st_mode))


def _os_reason(exc: OSError, path: Path | None = None) -> str:
    if isinstance(exc, FileNotFoundError):
        broken = path is not None and path.is_symlink()
        return "broken symbolic link" if broken else "no such file or directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    return exc.strerror or str(exc)


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale and count % scale == 0:
            return f"{count // scale} {unit}"
    return f"{count} bytes"


def _decode(path: Path, data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise IngestError(path, f"UTF-16 text, not UTF-8; {_ONLY}")
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start
        detail = f"byte 0x{data[offset]:02x} at offset {offset}"
        raise IngestError(path, f"not UTF-8 text ({detail}); {_ONLY}") from exc
    nul = text.find("\0")
    if nul >= 0:
        raise IngestError(path, f"binary data (NUL character at offset {bom + nul}); {_ONLY}")
    return text


# ---------------------------------------------------------------------- HTML

# Not <head>: its end tag may be left out, and then the whole page would go.
_SKIPPED_TAGS = frozenset({"title", "script", "style", "template", "noscript", "nav", "svg"})
# fmt: off
_VOID_TAGS = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
    "track", "wbr",
})
# fmt: on
# DocBook (the Debian FAQ) wraps its navigation bars and tables of contents
# in these classes; their text is link labels, which would only add noise.
_SKIPPED_CLASSES = frozenset({"navheader", "navfooter", "toc"})
# fmt: off
_BLOCK_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "div",
    "dl", "dt", "figcaption", "figure", "footer", "form", "header", "hr", "html", "li", "main",
    "ol", "p", "pre", "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead",
    "tr", "ul",
})
# fmt: on
_HEADINGS = {f"h{level}": level for level in range(1, 7)}


class _BlockParser(HTMLParser):
    """Splits HTML into (heading level or 0, text) blocks; entities unescaped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[int, str]] = []
        self._parts: list[str] = []
        self._level = 0
        self._skip_tag = ""
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_depth:
            self._skip_depth += tag == self._skip_tag
        elif tag in _SKIPPED_TAGS or (tag not in _VOID_TAGS and _has_skipped_class(attrs)):
            self._flush()
            self._skip_tag, self._skip_depth = tag, 1
        elif tag in _HEADINGS:
            self._flush()
            self._level = _HEADINGS[tag]
        elif tag == "br":
            self._parts.append("\n")
        elif tag in _BLOCK_TAGS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if self._skip_depth:
            self._skip_depth -= tag == self._skip_tag
        elif tag in _HEADINGS or tag in _BLOCK_TAGS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self._parts.append(data)

    def close(self) -> None:
        super().close()
        self._flush()

    def _flush(self) -> None:
        text = " ".join("".join(self._parts).split())
        if text:
            self.blocks.append((self._level, text))
        self._parts.clear()
        self._level = 0


def _has_skipped_class(attrs: list[tuple[str, str | None]]) -> bool:
    classes = " ".join(value or "" for name, value in attrs if name == "class").split()
    return not _SKIPPED_CLASSES.isdisjoint(classes)


def _html_blocks(html: str) -> list[tuple[int, str]]:
    parser = _BlockParser()
    parser.feed(html)
    parser.close()
    return parser.blocks


def html_to_text(html: str) -> str:
    """Readable text: one paragraph per block, headings as "## Title" lines."""
    return "\n\n".join(
        f"{'#' * level} {text}" if level else text for level, text in _html_blocks(html)
    )


_SECTION_NUMBER = re.compile(r"^(?:\d+\.)*\d+\.?\s+")


def faq_sections(html: str) -> list[tuple[str, str]]:
    """(question, answer) pairs of a Debian FAQ page, numbers cut off questions.

    Every <h2>…<h6> opens a section that runs to the next heading; the <h1>
    chapter title opens none. Sections without text of their own (a heading
    followed at once by its sub-headings) are left out. Not every heading is
    a question ("8.1.1. dpkg"); callers that need questions filter on "?".
    """
    sections: list[tuple[str, str]] = []
    question: str | None = None
    answer: list[str] = []
    for level, text in [*_html_blocks(html), (1, "")]:
        if level:
            if question and answer:
                sections.append((question, "\n\n".join(answer)))
            question = _SECTION_NUMBER.sub("", text) if level > 1 else None
            answer = []
        else:
            answer.append(text)
    return sections


# ------------------------------------------------------------------ chunking

_ATX_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT_RULE = re.compile(r"^ {0,3}(?:=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(?:```|~~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class _Section:
    heading: str
    paragraphs: list[str]


def chunk_text(
    text: str, target_chars: int = 800, max_chars: int = 1500, overlap: int = 0
) -> list[str]:
    """Deterministic chunks of at most `max_chars` characters.

    Paragraphs (blank-line separated, whitespace collapsed) are packed up to
    `target_chars`; a paragraph longer than fits is split at sentence ends,
    and a sentence still too long at the last space (or anywhere) before the
    limit. A chunk of a section opened by a Markdown heading starts with that
    heading on its own line. With `overlap` > 0, a chunk after the first of a
    section repeats up to that many characters of its predecessor's end.
    """
    if not 0 < target_chars <= max_chars or not 0 <= overlap < target_chars:
        raise ValueError("need 0 < target_chars <= max_chars and 0 <= overlap < target_chars")
    chunks: list[str] = []
    for section in _sections(text):
        chunks.extend(_chunk_section(section, target_chars, max_chars, overlap))
    return chunks


def _sections(text: str) -> Iterator[_Section]:
    """Sections of a text; a heading with no text of its own joins the next one."""
    heading = ""
    paragraphs: list[str] = []
    for level, block in _text_blocks(text):
        if not level:
            paragraphs.append(block)
            continue
        if paragraphs:
            yield _Section(heading, paragraphs)
            heading, paragraphs = block, []
        else:
            heading = f"{heading}\n{block}" if heading else block
    if paragraphs or heading:
        yield _Section(heading, paragraphs)


def _text_blocks(text: str) -> Iterator[tuple[int, str]]:
    """(1 for a heading else 0, text with whitespace collapsed) per block."""
    lines: list[str] = []
    fenced = False
    for line in [*text.splitlines(), ""]:
        if _FENCE.match(line):
            fenced = not fenced
            continue  # the fence marker itself says nothing
        heading = None if fenced else _ATX_HEADING.match(line)
        if heading or not line.strip():
            yield from _paragraph_blocks(lines)
            lines = []
            if heading and heading.group(1):
                yield 1, " ".join(heading.group(1).split())
        else:
            lines.append(line)


def _paragraph_blocks(lines: list[str]) -> Iterator[tuple[int, str]]:
    if len(lines) == 2 and _SETEXT_RULE.match(lines[1]):
        yield 1, " ".join(lines[0].split())
        return
    paragraph = " ".join(" ".join(lines).split())
    if paragraph:
        yield 0, paragraph


def _chunk_section(section: _Section, target: int, limit: int, overlap: int) -> list[str]:
    heading, paragraphs = section.heading, section.paragraphs
    if len(heading) > limit // 4:  # too long to repeat: it is text, not a title
        heading, paragraphs = "", [*heading.split("\n"), *paragraphs]
    prefix = heading + "\n" if heading else ""
    if not paragraphs:
        return [heading] if heading else []
    room = limit - len(prefix)
    bodies = _pack(_units(paragraphs, room, overlap), target - len(prefix), room, overlap)
    return [prefix + body for body in bodies]


def _units(paragraphs: list[str], limit: int, overlap: int) -> Iterator[tuple[str, str]]:
    """(glue, text) pieces of at most `limit` characters; glue joins it to the last."""
    # Pieces cut out of a sentence leave room for the overlap to be repeated.
    split_at = max(limit - overlap, 1)
    for paragraph in paragraphs:
        glue = "\n\n"
        pieces = [paragraph] if len(paragraph) <= limit else _SENTENCE_END.split(paragraph)
        for sentence in pieces:
            for piece in _hard_split(sentence, split_at):
                yield glue, piece
                glue = " "


def _hard_split(text: str, limit: int) -> Iterator[str]:
    while len(text) > limit:
        cut = text.rfind(" ", 1, limit + 1)
        if cut <= 0:
            cut = limit
        yield text[:cut].rstrip()
        text = text[cut:].lstrip()
    if text:
        yield text


def _pack(units: Iterator[tuple[str, str]], target: int, limit: int, overlap: int) -> list[str]:
    bodies: list[str] = []
    current = ""
    for glue, piece in units:
        if not current:
            current = piece
        elif len(current) + len(glue) + len(piece) <= max(target, 1):
            current += glue + piece
        else:
            bodies.append(current)
            current = _with_tail(current, piece, glue, limit, overlap)
    if current:
        bodies.append(current)
    return bodies


def _with_tail(previous: str, piece: str, glue: str, limit: int, overlap: int) -> str:
    """`piece`, preceded by the last words of `previous` if they fit."""
    words = previous.split()
    tail: list[str] = []
    size = 0
    while words and size + len(words[-1]) + 1 <= overlap:
        size += len(words[-1]) + 1
        tail.insert(0, words.pop())
    joined = " ".join(tail)
    if tail and len(joined) + len(glue) + len(piece) <= limit:
        return joined + glue + piece
    return piece


def chunk_file(
    source: Path | Listed,
    *,
    target_chars: int = 800,
    max_chars: int = 1500,
    overlap: int = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[Chunk]:
    """The chunks of one file, each tagged "<absolute path>#<index>" (see file_chunks)."""
    return file_chunks(source, target_chars=target_chars, max_chars=max_chars,
                       overlap=overlap, max_bytes=max_bytes).chunks


def file_chunks(
    source: Path | Listed,
    *,
    target_chars: int = 800,
    max_chars: int = 1500,
    overlap: int = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FileChunks:
    """The chunks of one file and what was left out of it; raises IngestError."""
    text = read_document(source, max_bytes)
    path = source.path if isinstance(source, Listed) else source
    absolute = os.path.abspath(path)  # absolute but, unlike resolve(), keeps symlink names
    if not path.name.lower().endswith(TRANSCRIPT_SUFFIXES):
        found = FileChunks([
            Chunk(text=piece, origin=f"{absolute}#{index}")
            for index, piece in enumerate(chunk_text(text, target_chars, max_chars, overlap))
        ], {})
    else:
        try:
            parsed = parse_transcript(path.name, text, target_chars=target_chars,
                                      max_chars=max_chars)
        except TranscriptError as exc:
            raise IngestError(path, exc.reason) from exc
        found = FileChunks([Chunk(text=piece.text, origin=absolute + piece.anchor,
                                  question=piece.question) for piece in parsed.pieces],
                           parsed.left_out)
    _check_origins(path, found.chunks)
    return found


_ORIGIN_CONTROL = re.compile(ORIGIN_CONTROL)


def _check_origins(path: Path, chunks: list[Chunk]) -> None:
    """Refuse here a file whose name the daemon would refuse as an origin
    (with the whole batch its chunks travel in)."""
    for chunk in chunks:
        if len(chunk.origin) > MAX_ORIGIN or _ORIGIN_CONTROL.search(chunk.origin):
            raise IngestError(path, f"its path cannot name a memory (one line of at most "
                                    f"{MAX_ORIGIN} characters, with the part after it); "
                                    "rename or move it")
