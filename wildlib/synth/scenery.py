"""Backgrounds (sky, hills, ground) and scenery (acacias, bushes, grass, rocks), and pasting sprites."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .noise import smooth_noise, fractal_noise, jitter_color
from .sprite import limb


def paste(img, rgba, x, y):
    """Alpha-composite ``rgba`` with its top-left at (x, y); returns the clipped box or None."""
    H, W = img.shape[:2]
    h, w = rgba.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    part = rgba[y0 - y : y1 - y, x0 - x : x1 - x]
    a = part[..., 3:4]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + part[..., :3] * a
    return x0, y0, x1, y1


def blob_mask(rng, w, h, lobes=6):
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    for _ in range(lobes):
        cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.35, 0.8) * h
        rx, ry = rng.uniform(0.15, 0.3) * w, rng.uniform(0.2, 0.35) * h
        d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    return np.asarray(m, np.float32) / 255


def foliage(rng, w, h, color, lobes=7):
    a = blob_mask(rng, w, h, lobes)
    n = fractal_noise(rng, h, w, 6, 3)
    rgb = np.clip(np.asarray(color)[None, None] * (1 + 0.35 * n[..., None]), 0, 1)
    a = a * (n > -0.55)
    return np.concatenate([rgb, a[..., None]], axis=2).astype(np.float32)


def acacia(rng, size):
    w, h = int(size * 1.3), int(size)
    sp = np.zeros((h, w, 4), np.float32)
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    tx = w * rng.uniform(0.4, 0.6)
    limb(d, [(tx, h - 1), (tx + rng.uniform(-0.05, 0.05) * w, h * 0.45), (tx - w * 0.2, h * 0.25)], max(2, size * 0.05))
    limb(d, [(tx, h * 0.5), (tx + w * 0.22, h * 0.25)], max(1, size * 0.03))
    trunk = np.asarray(m, np.float32) / 255
    sp[..., :3] = (0.25, 0.2, 0.15)
    sp[..., 3] = trunk
    canopy = foliage(rng, w, int(h * 0.35), jitter_color(rng, (0.22, 0.32, 0.12), 0.15), 9)
    ch = canopy.shape[0]
    y0 = int(h * 0.1)
    region = sp[y0 : y0 + ch]
    a = canopy[..., 3:4]
    region[..., :3] = region[..., :3] * (1 - a) + canopy[..., :3] * a
    region[..., 3:4] = np.maximum(region[..., 3:4], a)
    return sp


def grass_tuft(rng, w, h, color):
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    for _ in range(int(w * 1.2)):
        x = rng.uniform(0, w)
        lean = rng.normal(0, 0.25) * h
        d.line([(x, h), (x + lean, h - rng.uniform(0.4, 1.0) * h)], fill=255, width=1)
    a = np.asarray(m, np.float32) / 255
    n = fractal_noise(rng, h, w, 4, 2)
    rgb = np.clip(np.asarray(color)[None, None] * (1 + 0.3 * n[..., None]), 0, 1)
    return np.concatenate([rgb, a[..., None]], axis=2).astype(np.float32)


GROUNDS = [(0.72, 0.62, 0.38), (0.62, 0.55, 0.3), (0.45, 0.5, 0.25), (0.55, 0.42, 0.28), (0.66, 0.58, 0.45)]


SKIES = [
    ((0.45, 0.65, 0.9), (0.8, 0.88, 0.95)),
    ((0.7, 0.72, 0.75), (0.85, 0.85, 0.85)),
    ((0.55, 0.5, 0.6), (0.95, 0.75, 0.5)),
]


def background(rng, W, H, d):
    img = np.zeros((H, W, 3), np.float32)
    horizon = int(H * rng.uniform(0.22, 0.42))
    top, bottom = SKIES[rng.integers(len(SKIES))]
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
    img[:horizon] = jitter_color(rng, top, 0.05) * (1 - t) + jitter_color(rng, bottom, 0.05) * t
    ground = jitter_color(rng, GROUNDS[rng.integers(len(GROUNDS))], 0.07)
    n = fractal_noise(rng, H - horizon, W, 3, 5)
    depth = np.linspace(0.85, 1.1, H - horizon, dtype=np.float32)[:, None, None]
    img[horizon:] = np.clip(ground[None, None] * depth * (1 + (0.12 + 0.15 * d) * n[..., None]), 0, 1)
    # fine grass texture: many short strokes of lighter/darker tone
    strokes = Image.new("L", (W, H), 128)
    sd = ImageDraw.Draw(strokes)
    for _ in range(int((400 + 1600 * d) * W * H / 76800)):
        x, y = rng.uniform(0, W), rng.uniform(horizon, H)
        ln = 1 + 6 * (y - horizon) / (H - horizon)
        sd.line([(x, y), (x + rng.normal(0, 1), y - ln)], fill=int(rng.uniform(60, 200)), width=1)
    s = (np.asarray(strokes, np.float32) - 128) / 128
    img[horizon:] = np.clip(img[horizon:] * (1 + 0.18 * s[horizon:, :, None]), 0, 1)
    # distant hills
    hill = (smooth_noise(rng, 1, W, 6)[0] * 0.5 + 0.5) * H * rng.uniform(0.03, 0.1)
    yy = np.arange(H)[:, None]
    hm = ((yy > horizon - hill[None, :]) & (yy <= horizon + 1)).astype(np.float32)[..., None]
    img = img * (1 - hm * 0.6) + hm * 0.6 * jitter_color(rng, (0.45, 0.5, 0.5), 0.1)
    return img, horizon, ground


def place_scenery(rng, img, horizon, d, front: bool):
    H, W = img.shape[:2]
    n_items = rng.poisson((0.8 + 3.0 * d) * (0.5 if front else 1.0))
    for _ in range(n_items):
        kind = rng.choice(["tree", "bush", "rock", "mound", "log"], p=[0.3, 0.35, 0.15, 0.1, 0.1])
        t = rng.uniform(0.0, 1.0) if not front else rng.uniform(0.7, 1.0)
        f = 0.3 + 0.7 * t
        y = int(horizon + t * (H - horizon))
        if kind == "tree":
            spr = acacia(rng, int(rng.uniform(60, 130) * f))
        elif kind == "bush":
            s = int(rng.uniform(25, 70) * f) + 4
            spr = foliage(rng, s, int(s * 0.7), jitter_color(rng, (0.25, 0.35, 0.15), 0.2))
        elif kind == "rock":
            s = int(rng.uniform(15, 45) * f) + 4
            spr = foliage(rng, s, int(s * 0.6), jitter_color(rng, (0.5, 0.48, 0.45), 0.15), 3)
        elif kind == "mound":  # termite mound: a brown cone, a classic false positive
            s = int(rng.uniform(20, 50) * f) + 4
            m = Image.new("L", (s, s), 0)
            ImageDraw.Draw(m).polygon([(0, s), (s * 0.4, 0), (s * 0.6, s * 0.1), (s, s)], fill=255)
            a = np.asarray(m, np.float32)[..., None] / 255
            spr = np.concatenate([np.broadcast_to(jitter_color(rng, (0.55, 0.38, 0.25), 0.1), (s, s, 3)), a], 2)
        else:  # fallen log: long and low like a crocodile
            s = int(rng.uniform(30, 80) * f) + 6
            m = Image.new("L", (s, max(3, s // 6)), 0)
            ImageDraw.Draw(m).ellipse([0, 0, s - 1, max(2, s // 6) - 1], fill=255)
            a = np.asarray(m, np.float32)[..., None] / 255
            spr = np.concatenate(
                [np.broadcast_to(jitter_color(rng, (0.35, 0.3, 0.22), 0.15), a.shape[:2] + (3,)), a], 2
            )
        spr = np.ascontiguousarray(spr, dtype=np.float32)
        paste(img, spr, int(rng.uniform(-0.1, 1.0) * W), y - spr.shape[0])
