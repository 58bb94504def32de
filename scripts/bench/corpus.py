"""A real text corpus for benchmarks: chunks of the machine's own documentation.

`load_corpus(n)` returns n chunks of ~200-600 characters, gathered in sorted
file order from /usr/share/doc (text, gzipped changelogs, HTML stripped of
tags), then /usr/share/common-licenses, then Python docstrings, with their
embeddings. The first call embeds (minutes for 100k); the result is cached in
scripts/bench/.cache/corpus-{n}.npz and later calls load it at once. The order
is deterministic, so a bigger cache also serves smaller requests.

Run `python scripts/bench/corpus.py [N]` to build the cache and time it.
"""

from __future__ import annotations

import ast
import gzip
import html.parser
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agents.encoder import Encoder, load_encoder  # noqa: E402

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
MIN_CHUNK, TARGET_CHUNK, MAX_CHUNK = 40, 200, 600
# Without a cap one changelog (harfbuzz) made 20% of the first 100k chunks.
MAX_PER_FILE = 1000
# Prose only: code, data and images would make a corpus nobody searches.
PROSE_SUFFIXES = {"", ".txt", ".md", ".rst", ".html", ".htm", ".debian", ".text", ".faq"}
SOURCES: tuple[tuple[str, str], ...] = (
    ("/usr/share/doc", "files"),
    ("/usr/share/common-licenses", "files"),
    ("/usr/lib/python3", "docstrings"),
    (f"/usr/lib/python{sys.version_info.major}.{sys.version_info.minor}", "docstrings"),
)
_BLOCK_TAGS = {"p", "div", "br", "li", "dt", "dd", "pre", "tr", "td", "section", "table",
               "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol", "hr", "title"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPACES = re.compile(r"\s+")

Vectors = npt.NDArray[np.float32]


class _TextOfHtml(html.parser.HTMLParser):
    """Keeps the visible text; block tags become paragraph breaks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._skip += tag in ("script", "style")
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("script", "style") and self._skip > 0
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_text(markup: str) -> str:
    parser = _TextOfHtml()
    parser.feed(markup)
    parser.close()
    return "".join(parser.parts)


def read_prose(path: Path) -> str | None:
    """The file's text, or None for binaries and non-prose files."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    suffix = Path(name).suffix.lower()
    if suffix not in PROSE_SUFFIXES or path.is_symlink():
        return None
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if b"\0" in raw[:8192]:
        return None
    text = raw.decode("utf-8", errors="replace")
    return html_text(text) if suffix in (".html", ".htm") else text


def units(text: str) -> Iterator[str]:
    """Paragraphs; long ones cut into sentences, overlong sentences at spaces."""
    for paragraph in re.split(r"\n\s*\n", text):
        flat = _SPACES.sub(" ", paragraph).strip()
        if len(flat) <= MAX_CHUNK:
            yield flat
            continue
        for sentence in _SENTENCE_END.split(flat):
            while len(sentence) > MAX_CHUNK:
                cut = sentence.rfind(" ", 0, MAX_CHUNK)
                cut = cut if cut > MIN_CHUNK else MAX_CHUNK
                yield sentence[:cut]
                sentence = sentence[cut:].lstrip()
            yield sentence


def chunks(text: str) -> Iterator[str]:
    """Pack units into chunks of TARGET_CHUNK..MAX_CHUNK characters."""
    buffer = ""
    for unit in units(text):
        if not unit:
            continue
        if buffer and len(buffer) + 1 + len(unit) > MAX_CHUNK:
            yield buffer
            buffer = unit
        else:
            buffer = f"{buffer} {unit}" if buffer else unit
        if len(buffer) >= TARGET_CHUNK:
            yield buffer
            buffer = ""
    if buffer:
        yield buffer


def sorted_files(root: Path) -> Iterator[Path]:
    if root.is_dir():
        yield from (p for p in sorted(root.rglob("*")) if p.is_file())


def docstrings(path: Path) -> str | None:
    """A Python file's docstrings, one paragraph each."""
    if path.suffix != ".py":
        return None
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return None
    nodes = (n for n in ast.walk(tree) if isinstance(n, ast.Module | ast.ClassDef |
             ast.FunctionDef | ast.AsyncFunctionDef))
    found = (ast.get_docstring(n) for n in nodes)
    return "\n\n".join(doc for doc in found if doc)


def source_texts() -> Iterator[str]:
    seen_dirs: set[Path] = set()
    for root, kind in SOURCES:
        real = Path(root).resolve()
        if real in seen_dirs:
            continue
        seen_dirs.add(real)
        reader = read_prose if kind == "files" else docstrings
        for path in sorted_files(Path(root)):
            text = reader(path)
            if text:
                yield text


def gather_chunks(n: int, texts: Iterable[str] | None = None) -> list[str]:
    """The first n distinct chunks of at least MIN_CHUNK characters.

    With all sources this machine has ~225k (measured); enough for 100k.
    """
    found: dict[str, None] = {}  # insertion-ordered set
    for text in texts if texts is not None else source_texts():
        before = len(found)
        for chunk in chunks(text):
            if len(chunk) >= MIN_CHUNK:
                found.setdefault(chunk)
            if len(found) >= n:
                return list(found)
            if len(found) - before >= MAX_PER_FILE:
                break
    if len(found) < n:
        raise RuntimeError(f"only {len(found)} real chunks on this machine, {n} asked")
    return list(found)


def _save(path: Path, texts: list[str], vectors: Vectors, model_sha256: str) -> None:
    # Texts as one UTF-8 blob + offsets: no pickle, a few MB for 100k chunks.
    encoded = [t.encode("utf-8") for t in texts]
    offsets = np.cumsum([0] + [len(b) for b in encoded], dtype=np.int64)
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, blob=blob, offsets=offsets, vectors=vectors, model=np.array(model_sha256))
    tmp.replace(path)


def _load(path: Path, n: int, model_sha256: str) -> tuple[list[str], Vectors] | None:
    with np.load(path, allow_pickle=False) as data:
        if str(data["model"]) != model_sha256 or len(data["offsets"]) - 1 < n:
            return None
        blob, offsets = data["blob"].tobytes(), data["offsets"]
        texts = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n)]
        return texts, np.ascontiguousarray(data["vectors"][:n])


def _cached(n: int, model_sha256: str) -> tuple[list[str], Vectors] | None:
    exact = CACHE_DIR / f"corpus-{n}.npz"
    others = sorted(CACHE_DIR.glob("corpus-*.npz"), key=lambda p: p.stat().st_size)
    for path in ([exact] if exact.is_file() else []) + others:
        size = path.stem.removeprefix("corpus-")
        if size.isdigit() and int(size) >= n:
            hit = _load(path, n, model_sha256)
            if hit is not None:
                return hit
    return None


_worker_encoder: Encoder | None = None


def _start_worker() -> None:
    global _worker_encoder
    _worker_encoder = load_encoder(threads=1)


def _embed_in_worker(texts: list[str]) -> Vectors:
    assert _worker_encoder is not None, "pool started without _start_worker"
    return _worker_encoder.embed(texts)


def embed_all(texts: list[str], workers: int | None = None) -> Vectors:
    """Embed on every core: one single-threaded encoder per process.

    Texts run one at a time through the model, where ORT's intra-op threads
    gain little and lose a lot when another process holds a core; vectors
    are identical whatever the thread count, so processes change nothing.
    """
    workers = workers or os.cpu_count() or 1
    slices = [texts[i : i + 256] for i in range(0, len(texts), 256)]
    with ProcessPoolExecutor(workers, initializer=_start_worker) as pool:
        parts = list(pool.map(_embed_in_worker, slices))
    return np.vstack(parts) if parts else np.empty((0, 384), dtype=np.float32)


def load_corpus(n: int = 100_000) -> tuple[list[str], Vectors]:
    """n real text chunks and their (n, 384) float32 unit embeddings."""
    from agents.model_build import MODEL_SHA256

    hit = _cached(n, MODEL_SHA256)
    if hit is not None:
        return hit
    texts = gather_chunks(n)
    vectors = embed_all(texts)
    _save(CACHE_DIR / f"corpus-{n}.npz", texts, vectors, MODEL_SHA256)
    return texts, vectors


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    start = time.perf_counter()
    texts, vectors = load_corpus(n)
    elapsed = time.perf_counter() - start
    mean_len = sum(map(len, texts)) / max(len(texts), 1)
    print(f"{len(texts)} chunks (mean {mean_len:.0f} chars), vectors {vectors.shape}, "
          f"{elapsed:.1f} s, {len(texts) / elapsed:.0f} chunks/s")


if __name__ == "__main__":
    main()
