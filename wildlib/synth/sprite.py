"""The sprite canvas (supersampled RGBA drawing) and the shapes animals are built from."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 2  # supersampling factor for sprites (anti-aliased edges)


class Sprite:
    """An RGBA drawing surface in supersampled pixels; parts are painted through masks."""

    def __init__(self, w: int, h: int):
        self.w, self.h = int(w), int(h)
        self.rgb = np.zeros((self.h, self.w, 3), np.float32)
        self.alpha = np.zeros((self.h, self.w), np.float32)
        self.yy, self.xx = np.mgrid[0 : self.h, 0 : self.w].astype(np.float32)

    def new_mask(self):
        m = Image.new("L", (self.w, self.h), 0)
        return m, ImageDraw.Draw(m)

    def paint(self, mask, fill, opacity: float = 1.0):
        m = np.asarray(mask, np.float32) / 255.0 if not isinstance(mask, np.ndarray) else mask
        m = m * opacity
        fill = np.asarray(fill, np.float32)
        if fill.ndim == 1:
            fill = fill[None, None, :]
        self.rgb = self.rgb * (1 - m[..., None]) + fill * m[..., None]
        self.alpha = np.maximum(self.alpha, m)

    def finish(self, rng, light=0.35):
        """Shade top-to-bottom, crop to the drawn pixels, downsample by SS. Returns RGBA float."""
        ys, xs = np.nonzero(self.alpha > 0.02)
        if len(ys) == 0:
            return np.zeros((1, 1, 4), np.float32)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        # pad crop to a multiple of SS
        y1 = y0 + int(math.ceil((y1 - y0) / SUPERSAMPLE)) * SUPERSAMPLE
        x1 = x0 + int(math.ceil((x1 - x0) / SUPERSAMPLE)) * SUPERSAMPLE
        pad_y, pad_x = max(0, y1 - self.h), max(0, x1 - self.w)
        rgb = np.pad(self.rgb, ((0, pad_y), (0, pad_x), (0, 0)))[y0:y1, x0:x1]
        a = np.pad(self.alpha, ((0, pad_y), (0, pad_x)))[y0:y1, x0:x1]
        hh = rgb.shape[0]
        shade = 1 + light * (0.5 - np.linspace(0, 1, hh, dtype=np.float32))[:, None, None]
        rgb = np.clip(rgb * shade, 0, 1)
        out = np.concatenate([rgb * a[..., None], a[..., None]], axis=2)
        h2, w2 = out.shape[0] // SUPERSAMPLE, out.shape[1] // SUPERSAMPLE
        out = out[: h2 * SUPERSAMPLE, : w2 * SUPERSAMPLE].reshape(h2, SUPERSAMPLE, w2, SUPERSAMPLE, 4).mean(axis=(1, 3))
        a = out[..., 3:4]
        rgb = np.where(a > 1e-4, out[..., :3] / np.maximum(a, 1e-4), 0)
        return np.concatenate([rgb, a], axis=2).astype(np.float32)


def ellipse_pts(cx, cy, rx, ry, angle=0.0, n=28):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = math.cos(angle), math.sin(angle)
    x, y = rx * np.cos(t), ry * np.sin(t)
    return [(float(cx + c * a - s * b), float(cy + s * a + c * b)) for a, b in zip(x, y)]


def limb(draw, pts, width):
    pts = [(float(x), float(y)) for x, y in pts]
    draw.line(pts, fill=255, width=max(1, int(width)), joint="curve")
    r = width / 2
    for x, y in (pts[0], pts[-1]):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)


def taper(draw, p0, p1, w0, w1):
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    n = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / n, dx / n
    draw.polygon(
        [
            (x0 + nx * w0 / 2, y0 + ny * w0 / 2),
            (x1 + nx * w1 / 2, y1 + ny * w1 / 2),
            (x1 - nx * w1 / 2, y1 - ny * w1 / 2),
            (x0 - nx * w0 / 2, y0 - ny * w0 / 2),
        ],
        fill=255,
    )
    draw.ellipse([x1 - w1 / 2, y1 - w1 / 2, x1 + w1 / 2, y1 + w1 / 2], fill=255)
