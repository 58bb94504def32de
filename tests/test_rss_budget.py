"""What keeps a spore's memory bounded in the places it grows by itself: the
encoder's onnxruntime arena and the cache of verified signatures (issue 10,
item 7: RSS <= 250 MB under scripts/bench/hostile.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from agents import encoder as encoder_mod
from p2pnode import identity
from p2pnode.errors import VerifyError

ROOT = Path(__file__).resolve().parents[1]
LINUX = sys.platform.startswith("linux")


# -- the verified-signature cache ---------------------------------------------

def _signed(n: int) -> list[tuple[bytes, bytes, bytes]]:
    out = []
    for _ in range(n):
        ident = identity.Identity.from_seed(os.urandom(16))
        payload = os.urandom(64)
        out.append((ident.public_key, payload, ident.sign(b"vote", payload)))
    return out


def test_cache_never_lets_a_forgery_through() -> None:
    (key, payload, sig), = _signed(1)
    identity.verify(key, b"vote", payload, sig)  # now remembered
    identity.verify(key, b"vote", payload, sig)  # a hit
    for bad in ((key, b"vote", payload + b"x", sig), (key, b"card", payload, sig),
                (key, b"vote", payload, sig[:-1] + bytes([sig[-1] ^ 1])),
                (os.urandom(32), b"vote", payload, sig)):
        with pytest.raises(VerifyError):
            identity.verify(*bad)


def test_cache_holds_a_fixed_table_whatever_a_flood_signs() -> None:
    size = len(identity._TABLE)
    assert size == 2 * 1024 * 1024
    for _ in range(3 * identity._SETS * identity._WAYS):  # three times what it holds
        identity._remember(os.urandom(32))
    assert len(identity._TABLE) == size
    # What verified lately is still remembered, and what was evicted verifies again.
    recent = _signed(200)
    for key, payload, sig in recent:
        identity.verify(key, b"vote", payload, sig)
    digests = [hashlib.sha256(identity._SALT + k + s + identity._message(b"vote", p))
               .digest() for k, p, s in recent]
    with identity._VERIFIED_LOCK:
        assert sum(identity._remembered(d) for d in digests) >= 190  # 2 ways a set
    for _ in range(identity._SETS * identity._WAYS * 3):
        identity._remember(os.urandom(32))
    for key, payload, sig in recent:
        identity.verify(key, b"vote", payload, sig)  # checked again, still valid


def test_a_digest_straddling_two_ways_is_a_miss() -> None:
    digest = os.urandom(32)
    s = int.from_bytes(digest[:4], "little") & (identity._SETS - 1)
    base = s * identity._WAYS * identity._DIGEST
    with identity._VERIFIED_LOCK:
        identity._TABLE[base:base + 64] = bytes(16) + digest + bytes(16)  # at offset 16
        assert not identity._remembered(digest)
        identity._remember(digest)
        assert identity._remembered(digest)


# -- the encoder's arena ----------------------------------------------------------

@pytest.mark.skipif(not LINUX, reason="glibc's mallopt")
def test_encoder_shrinks_its_arena_and_vectors_do_not_change() -> None:
    enc = encoder_mod.load_encoder()
    assert enc._shrink is not None
    texts = ["debian " * 300, "How do I install Debian?", "apt " * 40]
    shrunk = enc.embed(texts)
    plain = encoder_mod.Encoder(enc._session, enc._tokenizer, enc.model_sha256, None)
    np.testing.assert_array_equal(plain.embed(texts), shrunk)
    np.testing.assert_array_equal(np.vstack([enc.embed([t]) for t in texts]), shrunk)


@pytest.mark.skipif(not LINUX, reason="/proc and glibc")
def test_encoder_gives_back_what_long_texts_took() -> None:
    """Embedding 40 texts of 256 tokens grew the process by ~31 MB (the arena
    at its peak, kept); now by ~5 MB. A process of its own: RSS is process-wide."""
    code = textwrap.dedent("""
        import sys
        from agents.encoder import load_encoder
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        enc = load_encoder()
        enc.embed(["warm up"])
        before = rss()
        for i in range(40):
            enc.embed([f"text {i} " + "debian package mirror " * 100])
        print(rss() - before)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=240, check=True)
    grew_mb = float(out.stdout.strip().splitlines()[-1])
    assert grew_mb < 15, f"the encoder kept {grew_mb:.1f} MB after long texts"


# -- the learner's training -------------------------------------------------------

@pytest.mark.skipif(not LINUX, reason="/proc and glibc")
def test_the_learner_thread_gives_back_what_a_training_took() -> None:
    """A training at the caps on a thread of its own (as the daemon runs it)
    kept ~23 MB free in that thread's malloc arena, for good (hostile.py: RSS
    236 -> 282 MB once votes flooded in); asking.learn trims it now, and
    training again keeps nothing more."""
    code = textwrap.dedent("""
        from concurrent.futures import ThreadPoolExecutor
        import numpy as np
        from p2pnode import asking
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        rng = np.random.default_rng(0)
        def unit(n):
            x = rng.standard_normal((n, 384)).astype(np.float32)
            return x / np.linalg.norm(x, axis=1, keepdims=True)
        n = asking.LIMITS.max_pairs
        q, a, pool = unit(n), unit(n), unit(asking.LIMITS.max_pool)
        signs = np.sign(rng.standard_normal(n)).astype(np.float32)
        thread = ThreadPoolExecutor(1)
        thread.submit(sum, [1]).result()
        before = rss()
        thread.submit(asking.learn, q, a, signs, pool).result()
        first = rss()
        for _ in range(4):
            thread.submit(asking.learn, q, a, signs, pool).result()
        settled = rss()
        for _ in range(4):
            thread.submit(asking.learn, q, a, signs, pool).result()
        print(first - before, settled - first, rss() - settled)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(ROOT)
    env["OPENBLAS_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=240, check=True)
    first, more, last = (float(x) for x in out.stdout.strip().splitlines()[-1].split())
    # The first keeps the thread's BLAS buffers (~9-13 MB measured; 36 MB
    # untrimmed), the next few up to ~8 MB of fragments, then ~1.5 MB at most.
    assert first < 16, f"the learner's thread kept {first:.1f} MB after one training"
    assert more < 10, f"4 more trainings kept {more:.1f} MB more"
    assert last < 4, f"the trainings after those kept {last:.1f} MB more: it grows"


@pytest.mark.skipif(not LINUX, reason="/proc and glibc")
def test_release_free_heap_gives_a_threads_freed_blocks_back() -> None:
    """What the daemon's _keep_heap_trimmed runs every few seconds: blocks
    under the mmap threshold freed by a worker thread stay in its arena
    until trimmed."""
    code = textwrap.dedent("""
        from concurrent.futures import ThreadPoolExecutor
        import numpy as np
        from agents.encoder import release_free_heap
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        def churn():
            blocks = [np.ones(8192 + i % 7) for i in range(6000)]  # ~64 KiB each
            del blocks
        ThreadPoolExecutor(1).submit(churn).result()
        before = rss()
        assert release_free_heap()
        print(before - rss())
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    given_back = float(out.stdout.strip().splitlines()[-1])
    assert given_back > 100, f"the trim gave back only {given_back:.1f} MB of ~380 freed"
