"""A dependency-free line plot written as PNG (numpy, zlib and struct only).

`plot(panels, x_max)` draws stacked panels, each with its own y range, light
grid lines, optional horizontal reference lines and a few numeric labels in
a 3x5 pixel font; `write_png(path, image)` encodes the RGB array.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Line", "Panel", "encode_png", "plot", "write_png"]

Color = tuple[int, int, int]
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_Y = 56, 16, 18
SCALE = 2  # font pixels per glyph bit
GRID: Color = (225, 225, 225)
AXIS: Color = (0, 0, 0)
# 3x5 glyphs, one string of 15 bits (rows top to bottom) per character.
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "%": "101001010100101", " ": "000000000000000",
}


@dataclass(frozen=True)
class Line:
    xs: list[float]
    ys: list[float]
    color: Color


@dataclass(frozen=True)
class Panel:
    lines: list[Line]
    y_range: tuple[float, float]
    marks: list[tuple[float, Color]] = field(default_factory=list)  # horizontal lines


def encode_png(rgb: np.ndarray) -> bytes:
    """8-bit RGB PNG bytes of an [H, W, 3] uint8 array."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.write_bytes(encode_png(np.ascontiguousarray(rgb, dtype=np.uint8)))


def _text(img: np.ndarray, x: int, y: int, text: str, color: Color = AXIS) -> None:
    for k, ch in enumerate(text):
        for i, bit in enumerate(_FONT.get(ch, _FONT[" "])):
            px, py = x + SCALE * (4 * k + i % 3), y + SCALE * (i // 3)
            if bit == "1":
                img[py:py + SCALE, px:px + SCALE] = color


def _segment(img: np.ndarray, a: tuple[float, float], b: tuple[float, float],
             color: Color) -> None:
    steps = int(max(abs(b[0] - a[0]), abs(b[1] - a[1]))) + 1
    xs = np.rint(np.linspace(a[0], b[0], steps)).astype(int)
    ys = np.rint(np.linspace(a[1], b[1], steps)).astype(int)
    for dx, dy in ((0, 0), (1, 0), (0, 1)):  # two pixels thick
        x, y = np.clip(xs + dx, 0, img.shape[1] - 1), np.clip(ys + dy, 0, img.shape[0] - 1)
        img[y, x] = color


def _label(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def _panel(img: np.ndarray, top: int, height: int, panel: Panel, x_max: float) -> None:
    width = img.shape[1]
    left, right = MARGIN_LEFT, width - MARGIN_RIGHT
    lo, hi = panel.y_range
    span = (hi - lo) or 1.0

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (right - left) * x / (x_max or 1.0),
                top + height - height * (y - lo) / span)

    for i in range(5):
        y = int(top + height * i / 4)
        img[y, left:right] = GRID
        _text(img, 2, y - 2 * SCALE, _label(hi - span * i / 4))
    for i in range(11):
        img[top:top + height, int(left + (right - left) * i / 10)] = GRID
    for mark, color in panel.marks:
        _segment(img, to_px(0, mark), to_px(x_max, mark), color)
    for line in panel.lines:
        pts = [to_px(x, min(max(y, lo), hi)) for x, y in zip(line.xs, line.ys, strict=True)]
        for a, b in itertools.pairwise(pts):
            _segment(img, a, b, line.color)
    img[top:top + height + 1, left] = AXIS
    img[top + height, left:right] = AXIS


def plot(panels: list[Panel], x_max: float, width: int = 800, panel_height: int = 240
         ) -> np.ndarray:
    """Stacked panels sharing the x axis (0..x_max); returns an RGB array."""
    height = len(panels) * (panel_height + 2 * MARGIN_Y)
    img = np.full((height, width, 3), 255, np.uint8)
    for k, panel in enumerate(panels):
        top = k * (panel_height + 2 * MARGIN_Y) + MARGIN_Y
        _panel(img, top, panel_height, panel, x_max)
        _text(img, MARGIN_LEFT, top + panel_height + 4, "0")
        label = _label(x_max)
        _text(img, width - MARGIN_RIGHT - 4 * SCALE * len(label), top + panel_height + 4, label)
    return img
