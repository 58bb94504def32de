"""Document ingestion on real files: reading, refusing, walking and chunking."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.documents import (
    SUPPORTED_SUFFIXES,
    Chunk,
    IngestError,
    Listing,
    chunk_file,
    chunk_text,
    expand_paths,
    faq_sections,
    html_to_text,
    read_document,
)
from p2pnode.errors import SporeError
from tests.conftest import Daemon

FAQ = Path("/usr/share/doc/debian/FAQ")
PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"

SENTENCE = "Peers exchange signed records over UDP and keep what they learn. "


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ reading


def test_txt_file_is_chunked_with_absolute_origins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "notes.txt", "First paragraph\nwrapped here.\n\n\nSecond   one.\n")
    monkeypatch.chdir(tmp_path)
    chunks = chunk_file(Path("notes.txt"))
    assert chunks == [
        Chunk(text="First paragraph wrapped here.\n\nSecond one.", origin=f"{tmp_path}/notes.txt#0")
    ]


def test_markdown_sections_keep_their_heading_and_drop_fence_markers(tmp_path: Path) -> None:
    body = " ".join([SENTENCE] * 20)  # ~1300 characters: more than one chunk
    text = f"# Install\n\n{body}\n\n```bash\n# not a heading\napt install spore\n```\n"
    path = write(tmp_path / "guide.md", text)
    chunks = [chunk.text for chunk in chunk_file(path)]
    assert len(chunks) >= 2
    assert all(chunk.startswith("Install\n") for chunk in chunks)
    assert chunks[-1].endswith("# not a heading apt install spore")
    assert not any("```" in chunk for chunk in chunks)


def test_setext_heading_is_a_heading() -> None:
    assert chunk_text("Title\n=====\n\nBody text.") == ["Title\nBody text."]


def test_html_drops_scripts_and_navigation_and_unescapes_entities(tmp_path: Path) -> None:
    html = (
        "<html><head><title>T</title><style>p {color: red}</style></head><body>"
        '<div class="navheader"><a href="x">Prev</a></div>'
        "<script>alert('no')</script>"
        "<h2>1.1. Fish &amp; chips?</h2><p>Caf&eacute; &lt;open&gt; &#8212; daily.</p>"
        "<ul><li>one</li><li>two<br>lines</li></ul>"
        '<div class="toc"><div>nested toc</div>still toc</div><p>after</p>'
        "</body></html>"
    )
    path = write(tmp_path / "page.html", html)
    assert read_document(path) == (
        "## 1.1. Fish & chips?\n\nCafé <open> — daily.\n\none\n\ntwo lines\n\nafter"
    )
    assert (
        chunk_file(path)[0].text
        == "1.1. Fish & chips?\nCafé <open> — daily.\n\none\n\ntwo lines\n\nafter"
    )


def test_html_without_head_end_tag_keeps_its_body() -> None:
    assert html_to_text("<html><head><title>T</title><body><p>kept</p>") == "kept"


def test_utf8_bom_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello")
    assert read_document(path) == "hello"


def test_empty_file_has_no_chunks(tmp_path: Path) -> None:
    assert chunk_file(write(tmp_path / "empty.md", "")) == []
    assert chunk_file(write(tmp_path / "blank.html", "<html><body> </body></html>")) == []


def test_non_utf8_file_is_refused_with_the_offending_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(IngestError, match=r"latin1\.txt: not UTF-8 text \(byte 0xe9 at offset 3\)"):
        read_document(path)


def test_png_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "image.txt"
    path.write_bytes(PNG_HEADER)
    with pytest.raises(IngestError, match=r"byte 0x89 at offset 0.*only UTF-8") as info:
        read_document(path)
    assert isinstance(info.value, SporeError)
    assert info.value.path == path


def test_nul_bytes_are_refused_even_when_valid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_bytes(b"abc\x00def")
    with pytest.raises(IngestError, match=r"binary data \(NUL character at offset 3\)"):
        read_document(path)


def test_utf16_is_named(tmp_path: Path) -> None:
    path = tmp_path / "wide.txt"
    path.write_bytes("hello".encode("utf-16"))
    with pytest.raises(IngestError, match="UTF-16"):
        read_document(path)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "big.txt", "x" * 2049)
    with pytest.raises(IngestError, match=r"big\.txt: larger than 2 KiB"):
        read_document(path, max_bytes=2048)
    assert read_document(write(tmp_path / "fits.txt", "x" * 2048), max_bytes=2048)


def test_directory_named_like_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "folder.txt").mkdir()
    with pytest.raises(IngestError, match="is a directory"):
        read_document(tmp_path / "folder.txt")


def test_broken_symlink_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "gone.md"
    link.symlink_to(tmp_path / "missing.md")
    with pytest.raises(IngestError, match=r"gone\.md: broken symbolic link"):
        read_document(link)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(IngestError, match="not a regular file"):
        read_document(fifo)


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "secret.txt", "hidden")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: mode 000 is still readable")
        with pytest.raises(IngestError, match=r"secret\.txt: permission denied"):
            read_document(path)
    finally:
        path.chmod(0o600)


# ------------------------------------------------------------------ walking


def test_directories_are_walked_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ["b.md", "a/z.txt", "a/b/c.html", "c.HTM", "img.png", "x.markdown"]:
        write(tmp_path / "docs" / name, "text")
    write(tmp_path / "docs" / ".hidden.txt", "text")
    write(tmp_path / "docs" / ".git" / "notes.txt", "text")
    (tmp_path / "docs" / "dir.txt").mkdir()
    write(tmp_path / "docs" / "dir.txt" / "inner.txt", "text")

    listing = expand_paths([tmp_path / "docs"])

    names = [item.path.relative_to(tmp_path / "docs").as_posix() for item in listing.files]
    assert names == ["a/b/c.html", "a/z.txt", "b.md", "c.HTM", "dir.txt/inner.txt", "x.markdown"]
    assert listing.skipped == []
    assert listing.hidden == [tmp_path / "docs" / ".git", tmp_path / "docs" / ".hidden.txt"]


def test_named_files_are_checked_and_reported(tmp_path: Path) -> None:
    good = write(tmp_path / "good.txt", "text")
    hidden = write(tmp_path / ".hidden.md", "text")
    image = tmp_path / "photo.png"
    image.write_bytes(PNG_HEADER)
    missing = tmp_path / "missing.txt"
    broken = tmp_path / "broken.txt"
    broken.symlink_to(missing)

    listing = expand_paths([good, image, missing, hidden, broken, good, tmp_path])
    files, skipped = listing.files, listing.skipped

    assert [item.path for item in files] == [good, hidden]  # good.txt once, named twice, walked
    assert all(item.named for item in files)
    assert skipped.count((broken, "broken symbolic link")) == 1  # named, then walked
    reasons = dict(skipped)
    assert reasons[image].startswith("unsupported file type (.png)")
    assert all(suffix in reasons[image] for suffix in SUPPORTED_SUFFIXES)
    assert reasons[missing] == "no such file or directory"
    assert reasons[broken] == "broken symbolic link"


def test_walk_then_chunk_skips_the_bad_file_and_goes_on(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "alpha")
    (tmp_path / "b.txt").write_bytes(PNG_HEADER)
    write(tmp_path / "c.txt", "gamma")
    texts: list[str] = []
    errors: list[str] = []
    for listed in expand_paths([tmp_path]).files:
        try:
            texts.extend(chunk.text for chunk in chunk_file(listed))
        except IngestError as exc:
            errors.append(str(exc))
    assert texts == ["alpha", "gamma"]
    assert len(errors) == 1
    assert "b.txt: not UTF-8 text" in errors[0]


# ------------------------------------------- what a walk may read (issue 10)


def notes_with_traps(tmp_path: Path) -> tuple[Path, Path]:
    """A notes folder with symlinks out, an owner-only note and a .ssh folder;
    returns it and the outside folder its links point to."""
    outside = tmp_path / "outside"
    write(outside / "id_ed25519.txt", "OUTSIDE-KEY-quokka-7731")
    write(outside / "dir" / "private.md", "OUTSIDE-DIR-wombat-1182")
    notes = tmp_path / "notes"
    write(notes / "plain.md", "# Backups\n\nRun restic every night.")
    (notes / "key.txt").symlink_to(outside / "id_ed25519.txt")
    (notes / "elsewhere").symlink_to(outside / "dir")
    write(notes / "private.md", "OWNER-ONLY-numbat-4410").chmod(0o600)
    write(notes / ".ssh" / "id_ed25519.txt", "HIDDEN-KEY-bilby-5521").chmod(0o644)
    return notes, outside


def walked(listing: Listing, root: Path) -> list[str]:
    return [item.path.relative_to(root).as_posix() for item in listing.files]


def test_walk_skips_symlinks_out_owner_only_files_and_hidden_folders(tmp_path: Path) -> None:
    notes, outside = notes_with_traps(tmp_path)

    listing = expand_paths([notes])

    assert walked(listing, notes) == ["plain.md"]
    assert dict(listing.skipped) == {
        notes / "elsewhere": f"symlink leaves the named folders → {outside / 'dir'}",
        notes / "key.txt": f"symlink leaves the named folders → {outside / 'id_ed25519.txt'}",
        notes
        / "private.md": "readable only by its owner (mode 0600); name it explicitly to ingest it",
    }
    assert listing.hidden == [notes / ".ssh"]


def test_named_files_are_taken_whatever_their_mode_or_name(tmp_path: Path) -> None:
    notes, outside = notes_with_traps(tmp_path)
    private, key = notes / "private.md", notes / "key.txt"

    listing = expand_paths([notes, private, key, notes / ".ssh"])

    assert walked(listing, notes) == ["plain.md", "private.md", "key.txt", ".ssh/id_ed25519.txt"]
    assert [item.named for item in listing.files] == [False, True, True, False]
    assert listing.skipped == [
        (notes / "elsewhere", f"symlink leaves the named folders → {outside / 'dir'}")
    ]
    assert chunk_file(listing.files[1])[0].text == "OWNER-ONLY-numbat-4410"
    assert expand_paths([notes / "private.md"]).skipped == []


@pytest.mark.parametrize(
    ("mode", "taken"),
    [(0o600, False), (0o400, False), (0o700, False), (0o640, True), (0o604, True), (0o644, True)],
)
def test_the_files_own_mode_decides(tmp_path: Path, mode: int, taken: bool) -> None:
    note = write(tmp_path / "locked" / "note.md", "text")
    note.chmod(mode)
    (tmp_path / "locked").chmod(0o700)  # an owner-only folder does not hide shared files
    listing = expand_paths([tmp_path])
    assert [item.path for item in listing.files] == ([note] if taken else [])
    assert bool(listing.skipped) is not taken


def test_symlinks_inside_are_read_once_under_the_real_name(tmp_path: Path) -> None:
    real = write(tmp_path / "zeta" / "real.md", "text")
    (tmp_path / "alias.md").symlink_to(real)  # sorts first, yet the real name wins
    (tmp_path / "again").symlink_to(tmp_path / "zeta")
    (tmp_path / "relative.md").symlink_to("zeta/real.md")
    os.link(real, tmp_path / "zzz.md")  # a second real name: still one file

    listing = expand_paths([tmp_path])

    assert walked(listing, tmp_path) == ["zeta/real.md"]
    assert listing.skipped == []


def test_symlink_into_a_hidden_folder_inside_is_followed(tmp_path: Path) -> None:
    write(tmp_path / ".drafts" / "idea.md", "text")
    (tmp_path / "drafts").symlink_to(".drafts")
    listing = expand_paths([tmp_path])
    assert walked(listing, tmp_path) == ["drafts/idea.md"]
    assert listing.hidden == [tmp_path / ".drafts"]


def test_symlink_loops_end(tmp_path: Path) -> None:
    write(tmp_path / "a" / "note.md", "text")
    (tmp_path / "a" / "up").symlink_to(tmp_path)  # a cycle through the root
    (tmp_path / "ping").symlink_to(tmp_path / "pong")  # two links naming each other
    (tmp_path / "pong").symlink_to(tmp_path / "ping")
    (tmp_path / "self.md").symlink_to(tmp_path / "self.md")

    listing = expand_paths([tmp_path])

    assert walked(listing, tmp_path) == ["a/note.md"]
    assert listing.skipped == [(tmp_path / "self.md", "symbolic link loop")]


def test_a_named_folder_reached_through_a_symlink_is_a_root(tmp_path: Path) -> None:
    write(tmp_path / "data" / "notes" / "n.md", "text")
    write(tmp_path / "data" / "shared.md", "text")
    (tmp_path / "data" / "notes" / "shared.md").symlink_to("../shared.md")
    (tmp_path / "home").symlink_to(tmp_path / "data" / "notes")

    listing = expand_paths([tmp_path / "home"])
    assert walked(listing, tmp_path / "home") == ["n.md"]
    assert listing.skipped[0][1].endswith(f"→ {tmp_path / 'data' / 'shared.md'}")

    both = expand_paths([tmp_path / "home", tmp_path / "data"])  # now shared.md is inside
    assert [item.path.name for item in both.files] == ["n.md", "shared.md"]
    assert both.skipped == []


def test_a_file_swapped_after_listing_is_not_read(tmp_path: Path) -> None:
    secret = write(tmp_path / "outside" / "secret.txt", "OUTSIDE")
    note = write(tmp_path / "notes" / "note.txt", "inside")
    listed = expand_paths([tmp_path / "notes"]).files
    note.unlink()
    note.symlink_to(secret)
    with pytest.raises(IngestError, match="changed since it was listed"):
        chunk_file(listed[0])


def test_a_file_locked_after_listing_is_not_read(tmp_path: Path) -> None:
    note = write(tmp_path / "note.txt", "text")
    listed = expand_paths([tmp_path]).files
    note.chmod(0o600)
    with pytest.raises(IngestError, match=r"readable only by its owner \(mode 0600\)"):
        chunk_file(listed[0])


def test_the_daemon_learns_nothing_a_walk_must_not_read(running: Daemon, tmp_path: Path) -> None:
    notes, _ = notes_with_traps(tmp_path)
    res = running.cli("ingest", str(notes), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["files"], out["new"]) == (1, 1)
    assert {Path(s["path"]).name for s in out["skipped"]} == {"elsewhere", "key.txt", "private.md"}
    assert out["hidden"] == {"count": 1, "first": [str(notes / ".ssh")]}
    assert "symlink leaves the named folders" in res.stderr
    assert "left out 1 hidden files and folders" in res.stderr
    secrets = ["quokka", "wombat", "numbat", "bilby"]
    assert not any(word in memory for memory in memories(running) for word in secrets)

    named = running.cli_json("ingest", str(notes / "private.md"))
    assert (named["files"], named["new"], named["skipped"]) == (1, 1, [])
    assert any("numbat" in memory for memory in memories(running))


def memories(spore: Daemon) -> list[str]:
    return [m["text"] for m in spore.cli_json("memories", "--limit", "1000")["memories"]]


# ----------------------------------------------------------------- chunking


def test_paragraphs_are_packed_up_to_the_target() -> None:
    paragraphs = [f"Paragraph {index} " + "word " * 30 for index in range(10)]
    chunks = chunk_text("\n\n".join(paragraphs), target_chars=400, max_chars=500)
    assert len(chunks) == 5  # 2 paragraphs of ~160 characters each
    assert all(len(chunk) <= 400 for chunk in chunks)
    assert chunks[0].startswith("Paragraph 0")
    assert chunks[0].endswith("\n\n" + paragraphs[1].strip())


def test_long_paragraph_splits_at_sentence_ends() -> None:
    chunks = chunk_text(SENTENCE * 30, target_chars=300, max_chars=400)
    assert len(chunks) > 1
    assert all(chunk.endswith("learn.") for chunk in chunks)


def test_one_long_word_is_hard_split() -> None:
    chunks = chunk_text("a" * 250, target_chars=100, max_chars=100)
    assert chunks == ["a" * 100, "a" * 100, "a" * 50]


def test_overlap_repeats_the_end_of_the_previous_chunk() -> None:
    words = " ".join(f"w{index}" for index in range(200))
    chunks = chunk_text(words, target_chars=100, max_chars=150, overlap=20)
    assert all(len(chunk) <= 150 for chunk in chunks)
    for previous, chunk in itertools.pairwise(chunks):
        assert previous.split()[-1] in chunk.split()


def test_bad_chunk_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="target_chars"):
        chunk_text("x", target_chars=10, max_chars=5)
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("x", target_chars=10, max_chars=20, overlap=10)


def test_chunking_is_deterministic() -> None:
    text = "# A\n\n" + SENTENCE * 40 + "\n\n## B\n\nshort"
    assert chunk_text(text) == chunk_text(text)


TEXT_CHARS = st.sampled_from([*"abcxyzABC019.,!? ", "\n", "\n\n", "\t", "\xa0", "é"])


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.one_of(TEXT_CHARS, st.text("qrst", min_size=1, max_size=300)), max_size=400),
    target=st.integers(1, 400),
    spare=st.integers(0, 400),
)
def test_chunks_fit_and_keep_every_character_in_order(
    pieces: list[str], target: int, spare: int
) -> None:
    text = "".join(pieces)
    chunks = chunk_text(text, target_chars=target, max_chars=target + spare)
    assert all(0 < len(chunk) <= target + spare for chunk in chunks)
    assert "".join("".join(chunks).split()) == "".join(text.split())
    if max(map(len, text.split()), default=0) <= target + spare:  # no word needs cutting
        assert " ".join(chunks).split() == text.split()


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(st.sampled_from(list("ab #=-`~.\n")), max_size=600),
    limit=st.integers(1, 200),
    data=st.data(),
)
def test_markdown_chunks_fit_whatever_the_markup(
    text: str, limit: int, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(0, limit - 1), label="overlap")
    chunks = chunk_text(text, limit, limit, overlap)
    assert all(0 < len(chunk) <= limit for chunk in chunks)


# ---------------------------------------------------------------- Debian FAQ

needs_faq = pytest.mark.skipif(not FAQ.is_dir(), reason="debian-faq is not installed")


@needs_faq
def test_faq_pages_yield_numberless_questions_with_answers() -> None:
    pages = sorted(FAQ.glob("*.en.html"))
    all_sections = [faq_sections(page.read_text(encoding="utf-8")) for page in pages]
    rich = [sections for sections in all_sections if len(sections) > 5]
    assert len(rich) >= 8
    for sections in rich:
        questions = [question for question, _ in sections]
        assert sum(question.endswith("?") for question in questions) >= len(questions) / 2
        assert not any(question[0].isdigit() and "." in question[:4] for question in questions)
        assert all(answer.strip() for _, answer in sections)
    basic = dict(faq_sections((FAQ / "basic-defs.en.html").read_text(encoding="utf-8")))
    assert "Ian Murdock" in basic["What is Debian GNU/Linux?"]
    assert "Prev" not in basic["What is this FAQ?"]


@needs_faq
def test_faq_chunks_start_with_their_question() -> None:
    chunks = chunk_file(FAQ / "basic-defs.en.html")
    assert all(len(chunk.text) <= 1500 for chunk in chunks)
    murdock = [chunk.text for chunk in chunks if "Ian Murdock in 1993" in chunk.text]
    assert murdock
    assert murdock[0].startswith("1.2. What is Debian GNU/Linux?\n")
    assert not any("Table of Contents" in chunk.text for chunk in chunks)
