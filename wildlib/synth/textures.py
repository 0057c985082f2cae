"""Coat textures: solid, stripes, giraffe patches, rosettes, spots."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from .noise import smooth_noise, fractal_noise
from .sprite import SUPERSAMPLE


def tex_solid(rng, sp, color, var=0.12, cells=6):
    n = fractal_noise(rng, sp.h, sp.w, cells, 3)
    return np.clip(np.asarray(color, np.float32)[None, None] * (1 + var * n[..., None]), 0, 1)


def tex_stripes(rng, sp, length, light, dark, period=0.11, angle=None):
    ang = rng.uniform(-0.25, 0.25) + (math.pi / 2 if angle is None else angle)
    warp = smooth_noise(rng, sp.h, sp.w, 5) * length * 0.08
    u = (sp.xx * math.cos(ang) + sp.yy * math.sin(ang) + warp) / (length * period)
    band = (np.sin(2 * np.pi * u) > rng.uniform(-0.2, 0.2)).astype(np.float32)
    band = (
        np.asarray(
            Image.fromarray(band * 255).convert("L").filter(ImageFilter.GaussianBlur(0.6 * SUPERSAMPLE)), np.float32
        )
        / 255
    )
    return np.asarray(light)[None, None] * (1 - band[..., None]) + np.asarray(dark)[None, None] * band[..., None]


def jittered_cells(rng, sp, cell: float, fill: float = 1.0):
    """Distances to the nearest and second-nearest of a jittered grid of seeds (one per cell,
    present with probability ``fill``), and the nearest seed's index.  Only the 3x3 neighbouring
    cells are searched, so the cost is 9 array passes whatever the number of seeds."""
    gh, gw = int(sp.h / cell) + 3, int(sp.w / cell) + 3
    seeds = (np.stack(np.mgrid[0:gh, 0:gw][::-1], -1) - 1 + rng.uniform(0.1, 0.9, (gh, gw, 2))) * cell
    present = rng.random((gh, gw)) < fill
    gx = (sp.xx // cell).astype(np.int32) + 1
    gy = (sp.yy // cell).astype(np.int32) + 1
    d1 = np.full((sp.h, sp.w), 1e9, np.float32)
    d2 = np.full((sp.h, sp.w), 1e9, np.float32)
    idx = np.zeros((sp.h, sp.w), np.int32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            cy, cx = np.clip(gy + dy, 0, gh - 1), np.clip(gx + dx, 0, gw - 1)
            s = seeds[cy, cx]
            d = np.hypot(sp.xx - s[..., 0], sp.yy - s[..., 1])
            d = np.where(present[cy, cx], d, 1e9).astype(np.float32)
            closer = d < d1
            d2 = np.where(closer, d1, np.minimum(d2, d))
            idx = np.where(closer, cy * gw + cx, idx)
            d1 = np.where(closer, d, d1)
    return d1, d2, idx


def tex_patches(rng, sp, length, cell_color, net_color, cell=0.16, net=0.025):
    d1, d2, idx = jittered_cells(rng, sp, length * cell)
    tones = rng.uniform(0.8, 1.15, int(idx.max()) + 1).astype(np.float32)[idx]
    base = np.asarray(cell_color)[None, None] * tones[..., None]
    netm = ((d2 - d1) < length * net).astype(np.float32)[..., None]
    return np.clip(base * (1 - netm) + np.asarray(net_color)[None, None] * netm, 0, 1)


def tex_rosettes(rng, sp, length, ground, ring, r=0.045, density=1.0):
    out = tex_solid(rng, sp, ground, 0.1)
    d1, _, _ = jittered_cells(rng, sp, length * r * 3.2, fill=min(1.0, density))
    rr = length * r
    m = (np.abs(d1 - rr) < rr * 0.35).astype(np.float32)
    m *= smooth_noise(rng, sp.h, sp.w, int(sp.w / (length * r * 2)) + 2) > -0.4  # broken rings
    return out * (1 - m[..., None]) + np.asarray(ring)[None, None] * m[..., None]


def tex_spots(rng, sp, length, ground, spot, r=0.03, density=0.6):
    out = tex_solid(rng, sp, ground, 0.12)
    d1, _, _ = jittered_cells(rng, sp, length * r * 3, fill=min(1.0, density))
    m = np.clip(1.5 - d1 / (length * r), 0, 1)
    return out * (1 - m[..., None]) + np.asarray(spot)[None, None] * m[..., None]
