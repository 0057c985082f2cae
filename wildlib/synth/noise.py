"""Smooth and fractal noise, colour jitter: what every texture and background is made of."""

from __future__ import annotations

import numpy as np
from PIL import Image


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Value noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    cells = max(2, cells)
    gh = max(2, int(round(cells * h / max(h, w))) + 1)
    gw = max(2, int(round(cells * w / max(h, w))) + 1)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC)
    return np.clip(np.asarray(img, dtype=np.float32), -1.5, 1.5)


def fractal_noise(rng, h, w, base_cells=4, octaves=4):
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        out += amp * smooth_noise(rng, h, w, base_cells * 2**o)
        total += amp
        amp *= 0.5
    return out / total


def jitter_color(rng, rgb, amount=0.08):
    rgb = np.asarray(rgb, np.float32)
    return np.clip(rgb * (1 + rng.normal(0, amount, 3)) + rng.normal(0, amount * 0.3, 3), 0, 1)
