"""Aerial herd surveys: the embedded generator's crowded small-object scene (``scene="aerial"``).

A survey frame is a patch of ground seen straight down (dry grass, soil, tracks, bushes and their
shadows) with herds of one species each and a few animals on their own, drawn from above: a body
ellipse, the head (on a long neck for a giraffe), ears, horns, tail, the coat's pattern, and a
shadow cast away from one sun per frame.  Frames are cut into ``AERIAL_TILE``-pixel tiles, the way
surveys are annotated and trained on; every tile of a frame goes to the same split, and a box that
a tile cuts is kept if most of it is inside.  An animal is 26-84 pixels long (``TOP``); herds of
3-45 (``HERD_SIZE``) put about 18 boxes in a tile on average and up to about 50 where they are
thickest (the first six frames of seed 0: median box 35 pixels).

Only the classes a survey counts appear (``AERIAL_CLASSES``); their counts come from the herds
(``synth.json`` records them).  Deterministic: frame ``i`` of seed ``s`` depends on ``(s, i)`` only.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .noise import fractal_noise, jitter_color
from .scenery import foliage, paste
from .sprite import SUPERSAMPLE, Sprite, ellipse_pts, taper
from .textures import tex_patches, tex_solid, tex_stripes

AERIAL_CLASSES = ("elephant", "zebra", "buffalo", "giraffe", "impala")
AERIAL_FRAME, AERIAL_TILE = 800, 400  # a frame is cut into (800 / 400)^2 = 4 tiles
AERIAL_FRAMES, AERIAL_TEST_FRAMES = 60, 25  # frames at scale 1: train + valid, test
# Seen from above: body length in pixels, width / length, head length / body, neck / body, colour.
TOP = {
    "elephant": ((60, 84), 0.55, 0.2, 0.0, (0.47, 0.45, 0.43)),
    "buffalo": ((40, 54), 0.44, 0.24, 0.0, (0.17, 0.15, 0.14)),
    "zebra": ((36, 46), 0.32, 0.26, 0.12, (0.92, 0.9, 0.86)),
    "giraffe": ((40, 54), 0.30, 0.14, 0.55, (0.86, 0.66, 0.36)),
    "impala": ((26, 34), 0.30, 0.22, 0.1, (0.66, 0.44, 0.25)),
}
HERD_SIZE = {"elephant": (6, 18), "buffalo": (15, 45), "zebra": (10, 35), "giraffe": (3, 9), "impala": (12, 40)}
GROUND = [(0.70, 0.62, 0.42), (0.58, 0.56, 0.34), (0.64, 0.52, 0.36), (0.50, 0.52, 0.30)]


def animal_from_above(rng, cls: str, length: float) -> np.ndarray:
    """One animal seen straight down, facing +x: RGBA float, tightly cropped."""
    (lo, hi), wf, head, neck, color = TOP[cls]
    ss = SUPERSAMPLE
    L = length * ss
    sp = Sprite(L * (1.9 + neck), L * 1.4)
    cx, cy = L * 0.55, sp.h / 2
    mask, d = sp.new_mask()
    d.polygon(ellipse_pts(cx, cy, L / 2, L * wf / 2), fill=255)
    front = cx + L / 2
    if neck:
        taper(d, (front - L * 0.1, cy), (front + L * neck, cy), L * wf * 0.45, L * wf * 0.25)
        front += L * neck
    d.polygon(ellipse_pts(front + L * head / 2, cy, L * head / 2, L * wf * 0.28), fill=255)
    d.line([(cx - L / 2, cy), (cx - L * 0.72, cy + rng.normal(0, L * 0.05))], fill=255, width=max(1, int(L * 0.04)))
    if cls == "elephant":  # ears: two flaps behind the head
        for s in (-1, 1):
            d.polygon(ellipse_pts(front - L * 0.06, cy + s * L * wf * 0.45, L * 0.1, L * 0.16), fill=255)
    if cls == "buffalo":  # horns: a bar across the head
        taper(d, (front + L * 0.06, cy - L * 0.2), (front + L * 0.06, cy + L * 0.2), L * 0.05, L * 0.05)
    if cls == "zebra":
        coat = tex_stripes(rng, sp, L, color, (0.08, 0.08, 0.09), period=0.09, angle=0.0)
    elif cls == "giraffe":
        coat = tex_patches(rng, sp, L, (0.62, 0.36, 0.16), color, cell=0.14)
    else:
        coat = tex_solid(rng, sp, jitter_color(rng, color, 0.06), 0.15)
    sp.paint(mask, coat)
    spine, sd = sp.new_mask()  # the back's ridge catches the light
    sd.line([(cx - L * 0.4, cy), (cx + L * 0.4, cy)], fill=160, width=max(1, int(L * wf * 0.18)))
    sp.paint(np.asarray(spine.filter(ImageFilter.GaussianBlur(ss)), np.float32) / 255 * 0.35, (1.0, 1.0, 1.0))
    return sp.finish(rng, light=0.0)


def rotated(rgba: np.ndarray, degrees: float) -> np.ndarray:
    """``rgba`` rotated counter-clockwise by ``degrees`` on a canvas that holds it."""
    chans = [Image.fromarray(rgba[..., k]).rotate(degrees, Image.BILINEAR, expand=True) for k in range(4)]
    out = np.stack([np.asarray(c, np.float32) for c in chans], -1)
    return out


def ground(rng, size: int) -> np.ndarray:
    """Ground seen from above: two soils mixed by noise, grass grain, tracks and bushes."""
    base = jitter_color(rng, GROUND[rng.integers(len(GROUND))], 0.06)
    other = base * rng.uniform(0.75, 0.95)
    mix = (fractal_noise(rng, size, size, 3, 4) > rng.uniform(-0.3, 0.3)).astype(np.float32)
    mix = np.asarray(Image.fromarray((mix * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(6)), np.float32)
    mix = mix[..., None] / 255
    img = base[None, None] * (1 - mix) + other[None, None] * mix
    img = img * (1 + 0.12 * fractal_noise(rng, size, size, 24, 3)[..., None])
    img = img * (1 + 0.08 * rng.standard_normal((size, size, 1)).astype(np.float32))  # grass grain
    tracks = Image.new("L", (size, size), 0)
    td = ImageDraw.Draw(tracks)
    for _ in range(int(rng.integers(1, 4))):
        pts = np.cumsum(rng.normal(0, size / 12, (12, 2)), 0) + rng.uniform(0, size, 2)
        td.line([tuple(p) for p in pts], fill=255, width=int(rng.integers(2, 5)), joint="curve")
    t = np.asarray(tracks.filter(ImageFilter.GaussianBlur(1.5)), np.float32)[..., None] / 255
    return np.clip(img * (1 - 0.25 * t) + 0.25 * t * np.asarray((0.8, 0.74, 0.6)), 0, 1)


def shadow_of(rgba: np.ndarray, strength: float) -> np.ndarray:
    a = np.asarray(Image.fromarray((rgba[..., 3] * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2)),
                   np.float32) / 255 * strength
    return np.concatenate([np.zeros(a.shape + (3,), np.float32), a[..., None]], 2)


def frame_groups(rng, n_frames: int) -> list[list[tuple[str, int]]]:
    """Each frame's herds: (class, animals), one to three herds plus a few strays."""
    out = []
    for _ in range(n_frames):
        herds = []
        for _h in range(int(rng.integers(2, 6))):
            cls = AERIAL_CLASSES[rng.integers(len(AERIAL_CLASSES))]
            herds.append((cls, int(rng.integers(*HERD_SIZE[cls]))))
        herds += [(AERIAL_CLASSES[rng.integers(len(AERIAL_CLASSES))], 1) for _ in range(int(rng.integers(2, 8)))]
        out.append(herds)
    return out


def render_frame(seed: int, index: int, herds, difficulty: float):
    """One survey frame: (uint8 image, [(class, x0, y0, x1, y1)])."""
    rng = np.random.default_rng([seed, index])
    size, d = AERIAL_FRAME, float(np.clip(difficulty, 0, 1))
    img = ground(rng, size)
    sun = rng.uniform(0, 2 * math.pi)
    for _ in range(int(rng.integers(4, 14))):  # bushes and their shadows
        w = int(rng.uniform(20, 70))
        bush = foliage(rng, w, w, jitter_color(rng, (0.24, 0.32, 0.14), 0.15))
        x, y = rng.uniform(-w / 2, size - w / 2, 2).astype(int)
        paste(img, shadow_of(bush, 0.45), x + int(0.25 * w * math.cos(sun)), y + int(0.25 * w * math.sin(sun)))
        paste(img, bush, x, y)
    objects = []
    for cls, n in herds:
        centre = rng.uniform(0.15, 0.85, 2) * size
        spread = 40 + 18 * math.sqrt(n)
        heading = rng.uniform(0, 360)  # a herd grazes or walks roughly one way
        for _ in range(n):
            length = rng.uniform(*TOP[cls][0])
            spr = rotated(animal_from_above(rng, cls, length), heading + rng.normal(0, 35))
            h, w = spr.shape[:2]
            x, y = (centre + rng.normal(0, spread, 2) - (w / 2, h / 2)).astype(int)
            off = 0.22 * length
            paste(img, shadow_of(spr, 0.35 + 0.25 * d), x + int(off * math.cos(sun)), y + int(off * math.sin(sun)))
            spr = spr.copy()
            spr[..., :3] *= rng.uniform(0.85, 1.1)
            box = paste(img, np.clip(spr, 0, 1), x, y)
            ys, xs = np.nonzero(spr[..., 3] > 0.3)
            if box is None or not len(ys):
                continue
            full = (x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1)
            objects.append((cls, *full))
    img = img * rng.uniform(0.85, 1.1) * jitter_color(rng, (1, 1, 1), 0.04)[None, None]
    pil = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    if rng.random() < 0.3 + 0.4 * d:  # motion and focus blur of a survey camera
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.5 + 0.7 * d)))
    arr = np.asarray(pil, np.float32) + rng.normal(0, 1 + 4 * d * rng.random(), (size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8), objects


def tiles_of(pixels: np.ndarray, objects, tile: int = AERIAL_TILE, keep: float = 0.5):
    """The frame cut into ``tile``-pixel tiles: [(row, col, pixels, objects in tile coordinates)];
    a box keeps its clipped part when at least ``keep`` of its area is inside the tile."""
    out = []
    n = pixels.shape[0] // tile
    for r in range(n):
        for c in range(n):
            x0, y0 = c * tile, r * tile
            objs = []
            for cls, a, b, e, f in objects:
                ca, cb, ce, cf = max(a, x0), max(b, y0), min(e, x0 + tile), min(f, y0 + tile)
                if ce > ca and cf > cb and (ce - ca) * (cf - cb) >= keep * (e - a) * (f - b):
                    objs.append((cls, ca - x0, cb - y0, ce - x0, cf - y0))
            out.append((r, c, pixels[y0:y0 + tile, x0:x0 + tile], objs))
    return out
