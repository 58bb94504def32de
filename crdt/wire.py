"""The one bounded msgpack decoder every codec calls (STYLE.md 13), pure.

Bytes from a peer or a disk are hostile until shaped. `unpack` checks the
size *before* decoding, then lets msgpack itself refuse any string, binary,
array or map that claims more than the limits (so a 5-byte header claiming
4 G elements costs nothing), refuses extension types, non-UTF-8 strings,
map keys other than str or bytes, trailing bytes, and nesting deeper than
msgpack's own stack (1,024). With ``canonical=True`` the bytes must also be
exactly what `pack` makes of the result: one value, one encoding.

Every failure is a `DecodeError` (a ValueError; `Oversized` when the size
alone refused it); each codec maps it to its own typed error at its border
(``RecordError``, ``VerifyError``, ``Rejected``…). The `as_*` helpers check
a decoded value's shape and fail the same way.

crdt imports nothing of ours (tests/test_purity.py): every room may use it.
"""

from __future__ import annotations

import msgpack

__all__ = ["DecodeError", "Oversized", "as_bytes", "as_int", "as_list", "pack", "unpack"]


_BYTES = (bytes, bytearray, memoryview)


class DecodeError(ValueError):
    """Bytes that are not a well-formed, bounded message of the expected shape."""


class Oversized(DecodeError):
    """Bytes over the size limit, refused before anything was decoded."""


def pack(obj: object) -> bytes:
    """Canonical msgpack: binary as bin, the smallest encoding of every value
    (callers sort every collection whose order is not part of its meaning)."""
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: object, max_bytes: int, what: str, *, max_len: int | None = None,
           max_map: int | None = None, max_str: int | None = None,
           max_bin: int | None = None, canonical: bool = False) -> object:
    """Decode `data`, at most `max_bytes` long, or raise DecodeError naming `what`.

    Each limit defaults to `max_bytes`: `max_len` items in an array, `max_map`
    entries in a map (default `max_len`), `max_str` bytes in a string,
    `max_bin` bytes in a binary (default `max_str`)."""
    if not isinstance(data, _BYTES):
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise Oversized(f"{what}: {len(data)} bytes exceeds {max_bytes}")
    items = max_bytes if max_len is None else max_len
    chars = max_bytes if max_str is None else max_str
    try:
        obj = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True,
                              max_array_len=items,
                              max_map_len=items if max_map is None else max_map,
                              max_str_len=chars,
                              max_bin_len=chars if max_bin is None else max_bin,
                              max_ext_len=0)
    except (ValueError, TypeError, OverflowError, RecursionError,
            msgpack.UnpackException) as exc:
        raise DecodeError(f"{what}: malformed msgpack: {str(exc) or type(exc).__name__}") \
            from exc
    if canonical and pack(obj) != bytes(data):
        raise DecodeError(f"{what}: not the canonical encoding")
    return obj


def as_list(obj: object, what: str, max_len: int, exact: int | None = None) -> list[object]:
    """`obj` as a list of at most `max_len` items (exactly `exact` if given)."""
    if not isinstance(obj, list) or len(obj) > max_len:
        raise DecodeError(f"{what}: expected a list of at most {max_len}")
    if exact is not None and len(obj) != exact:
        raise DecodeError(f"{what}: expected {exact} fields, got {len(obj)}")
    return obj


def as_bytes(obj: object, what: str, max_len: int, min_len: int = 0) -> bytes:
    """`obj` as bytes of `min_len`..`max_len`."""
    if not isinstance(obj, bytes) or not min_len <= len(obj) <= max_len:
        raise DecodeError(f"{what}: expected {min_len}..{max_len} bytes")
    return obj


def as_int(obj: object, what: str, lo: int, hi: int) -> int:
    """`obj` as an integer in `lo`..`hi` (a msgpack ``true`` is no integer)."""
    if isinstance(obj, bool) or not isinstance(obj, int) or not lo <= obj <= hi:
        raise DecodeError(f"{what}: expected an integer in {lo}..{hi}")
    return obj
