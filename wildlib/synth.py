"""Procedural "savanna" detection set: a stand-in for the paper's unreleased wildlife photos.

Every image is a rendered scene (sky, hills, textured ground, acacias, bushes, rocks, termite
mounds, water) with 1-6 animals drawn as articulated silhouettes: a body, legs in a walking
pose, neck, head, tail and the features that tell the 13 classes apart (zebra stripes, giraffe
patches and long neck, leopard rosettes, elephant bulk, trunk and ears, crocodile long and low,
...).  Animals are scaled by depth, shaded, hazed with distance, cast shadows, overlap each
other and are partly hidden by grass and bushes; the whole frame gets lighting, blur, noise and
JPEG compression.  ``difficulty`` (0..1) turns clutter, occlusion and degradation up or down.

Output is the authors' Pascal VOC layout, so the real loader is the one exercised::

    <out>/annotations/<id>.xml  <out>/images/<id>.jpg  <out>/train.txt  <out>/valid.txt

Rendering is deterministic: image ``i`` of seed ``s`` depends on ``(s, i)`` only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .classes import CLASSES, PAPER_COUNTS, VOC_SPELLING

SS = 2  # supersampling factor for sprites (anti-aliased edges)


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator; ``counts`` default to the paper's table times ``scale``."""

    seed: int = 0
    scale: float = 1.0
    width: int = 320
    height: int = 240
    difficulty: float = 0.6
    valid_fraction: float = 0.2
    jpeg_quality: tuple[int, int] = (72, 92)

    def counts(self) -> dict[str, int]:
        return {c: max(1, int(round(n * self.scale))) for c, n in PAPER_COUNTS.items()}


# ----------------------------------------------------------------------------- noise helpers
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


# ----------------------------------------------------------------------------- sprite canvas
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
        m = (np.asarray(mask, np.float32) / 255.0 if not isinstance(mask, np.ndarray) else mask)
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
        y1 = y0 + int(math.ceil((y1 - y0) / SS)) * SS
        x1 = x0 + int(math.ceil((x1 - x0) / SS)) * SS
        pad_y, pad_x = max(0, y1 - self.h), max(0, x1 - self.w)
        rgb = np.pad(self.rgb, ((0, pad_y), (0, pad_x), (0, 0)))[y0:y1, x0:x1]
        a = np.pad(self.alpha, ((0, pad_y), (0, pad_x)))[y0:y1, x0:x1]
        hh = rgb.shape[0]
        shade = 1 + light * (0.5 - np.linspace(0, 1, hh, dtype=np.float32))[:, None, None]
        rgb = np.clip(rgb * shade, 0, 1)
        out = np.concatenate([rgb * a[..., None], a[..., None]], axis=2)
        h2, w2 = out.shape[0] // SS, out.shape[1] // SS
        out = out[: h2 * SS, : w2 * SS].reshape(h2, SS, w2, SS, 4).mean(axis=(1, 3))
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
        [(x0 + nx * w0 / 2, y0 + ny * w0 / 2), (x1 + nx * w1 / 2, y1 + ny * w1 / 2),
         (x1 - nx * w1 / 2, y1 - ny * w1 / 2), (x0 - nx * w0 / 2, y0 - ny * w0 / 2)],
        fill=255,
    )
    draw.ellipse([x1 - w1 / 2, y1 - w1 / 2, x1 + w1 / 2, y1 + w1 / 2], fill=255)


# ----------------------------------------------------------------------------- textures
def tex_solid(rng, sp, color, var=0.12, cells=6):
    n = fractal_noise(rng, sp.h, sp.w, cells, 3)
    return np.clip(np.asarray(color, np.float32)[None, None] * (1 + var * n[..., None]), 0, 1)


def tex_stripes(rng, sp, L, light, dark, period=0.11, angle=None):
    ang = rng.uniform(-0.25, 0.25) + (math.pi / 2 if angle is None else angle)
    warp = smooth_noise(rng, sp.h, sp.w, 5) * L * 0.08
    u = (sp.xx * math.cos(ang) + sp.yy * math.sin(ang) + warp) / (L * period)
    band = (np.sin(2 * np.pi * u) > rng.uniform(-0.2, 0.2)).astype(np.float32)
    band = np.asarray(Image.fromarray(band * 255).convert("L").filter(ImageFilter.GaussianBlur(0.6 * SS)), np.float32) / 255
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


def tex_patches(rng, sp, L, cell_color, net_color, cell=0.16, net=0.025):
    d1, d2, idx = jittered_cells(rng, sp, L * cell)
    tones = rng.uniform(0.8, 1.15, int(idx.max()) + 1).astype(np.float32)[idx]
    base = np.asarray(cell_color)[None, None] * tones[..., None]
    netm = ((d2 - d1) < L * net).astype(np.float32)[..., None]
    return np.clip(base * (1 - netm) + np.asarray(net_color)[None, None] * netm, 0, 1)


def tex_rosettes(rng, sp, L, ground, ring, r=0.045, density=1.0):
    out = tex_solid(rng, sp, ground, 0.1)
    d1, _, _ = jittered_cells(rng, sp, L * r * 3.2, fill=min(1.0, density))
    rr = L * r
    m = (np.abs(d1 - rr) < rr * 0.35).astype(np.float32)
    m *= (smooth_noise(rng, sp.h, sp.w, int(sp.w / (L * r * 2)) + 2) > -0.4)  # broken rings
    return out * (1 - m[..., None]) + np.asarray(ring)[None, None] * m[..., None]


def tex_spots(rng, sp, L, ground, spot, r=0.03, density=0.6):
    out = tex_solid(rng, sp, ground, 0.12)
    d1, _, _ = jittered_cells(rng, sp, L * r * 3, fill=min(1.0, density))
    m = np.clip(1.5 - d1 / (L * r), 0, 1)
    return out * (1 - m[..., None]) + np.asarray(spot)[None, None] * m[..., None]


# ----------------------------------------------------------------------------- quadrupeds
@dataclass
class Quad:
    body_h: float = 0.45        # body height / body length
    leg: float = 0.6            # leg length / body length
    leg_w: float = 0.09
    front_leg: float = 1.0      # front leg length factor (hyena, gorilla > 1)
    neck: float = 0.4
    neck_w: float = 0.22
    neck_angle: float = 40.0    # degrees above horizontal
    head: float = 0.3
    head_h: float = 0.6         # head height / head length
    head_tilt: float = 25.0     # degrees below horizontal
    tail: float = 0.35
    tail_w: float = 0.03
    tail_droop: float = 70.0
    slope: float = 0.0          # degrees, positive = shoulders higher


def draw_quadruped(rng, L, q: Quad, body_tex, leg_tex=None, far_shade=0.72):
    """Side view facing right; returns (sprite, geometry dict of key points)."""
    sp = Sprite(L * 3.2, L * 3.2)
    cx, cy = L * 1.6, L * 1.55
    slope = math.radians(q.slope)
    half = L / 2
    bh = q.body_h * L
    hip = (cx - half * 0.62 * math.cos(slope), cy + half * 0.62 * math.sin(slope) + bh * 0.18)
    sho = (cx + half * 0.62 * math.cos(slope), cy - half * 0.62 * math.sin(slope) + bh * 0.18)
    phase = rng.uniform(0, 2 * np.pi)
    amp = rng.uniform(0.05, 0.45)
    leg_tex = body_tex if leg_tex is None else leg_tex

    def legs(far: bool):
        m, d = sp.new_mask()
        for k, (root, factor) in enumerate(((hip, 1.0), (sho, q.front_leg))):
            off = (math.pi if far else 0) + k * math.pi / 2
            a1 = amp * math.sin(phase + off) * (1 if k else -1)
            ll = q.leg * L * factor + bh * 0.2
            knee = (root[0] + math.sin(a1) * ll * 0.5 + (L * 0.04 if far else 0), root[1] + math.cos(a1) * ll * 0.5)
            a2 = a1 + (0.35 * abs(math.sin(phase + off)) if k == 0 else -0.35 * abs(math.sin(phase + off)))
            foot = (knee[0] + math.sin(a2) * ll * 0.5, knee[1] + math.cos(a2) * ll * 0.5)
            rx = root[0] + (L * 0.04 if far else 0)
            limb(d, [(rx, root[1]), knee], q.leg_w * L * 1.15)
            limb(d, [knee, foot], q.leg_w * L * 0.8)
        return m

    sp.paint(legs(True), np.asarray(leg_tex) * far_shade)
    # tail
    m, d = sp.new_mask()
    root = (cx - half * 0.95 * math.cos(slope), cy + half * 0.95 * math.sin(slope) - bh * 0.25)
    ta = math.radians(q.tail_droop + rng.uniform(-20, 20))
    tip = (root[0] - math.cos(ta) * q.tail * L, root[1] + math.sin(ta) * q.tail * L)
    mid = ((root[0] + tip[0]) / 2 - L * 0.05, (root[1] + tip[1]) / 2)
    if q.tail > 0:
        limb(d, [root, mid, tip], max(1.0, q.tail_w * L))
    geo = {"tail_tip": tip, "cx": cx, "cy": cy}
    # body
    d.polygon(ellipse_pts(cx, cy, half, bh / 2, -slope), fill=255)
    # neck + head
    na = math.radians(q.neck_angle)
    neck_base = (cx + half * 0.72 * math.cos(slope), cy - half * 0.72 * math.sin(slope) - bh * 0.12)
    neck_end = (neck_base[0] + math.cos(na) * q.neck * L, neck_base[1] - math.sin(na) * q.neck * L)
    taper(d, neck_base, neck_end, q.neck_w * L, q.neck_w * L * 0.65)
    ha = math.radians(q.head_tilt)
    hl = q.head * L
    head_c = (neck_end[0] + math.cos(ha) * hl * 0.35, neck_end[1] + math.sin(ha) * hl * 0.35)
    d.polygon(ellipse_pts(head_c[0], head_c[1], hl / 2, hl * q.head_h / 2, ha), fill=255)
    snout = (head_c[0] + math.cos(ha) * hl * 0.5, head_c[1] + math.sin(ha) * hl * 0.5)
    sp.paint(m, body_tex)
    m, d = sp.new_mask()
    sp.paint(legs(False), leg_tex)
    geo.update(neck_base=neck_base, neck_end=neck_end, head=head_c, snout=snout, head_len=hl,
               head_angle=ha, hip=hip, shoulder=sho, body=(cx, cy, half, bh / 2, -slope))
    return sp, geo


def ears(sp, geo, L, size, color, pointed=True):
    m, d = sp.new_mask()
    hx, hy = geo["head"]
    hl = geo["head_len"]
    for k in (0, 1):
        bx = hx - hl * (0.25 + 0.12 * k)
        by = hy - hl * 0.22
        if pointed:
            d.polygon([(bx - size * L * 0.3, by), (bx + size * L * 0.3, by), (bx - size * L * 0.25, by - size * L)], fill=255)
        else:
            r = size * L * 0.5
            d.ellipse([bx - r, by - r * 1.6, bx + r, by + r * 0.2], fill=255)
    sp.paint(m, color)


def eye(sp, geo, L, color=(0.05, 0.04, 0.03)):
    m, d = sp.new_mask()
    hx, hy = geo["head"]
    hl = geo["head_len"]
    ex = hx + math.cos(geo["head_angle"]) * hl * 0.08
    ey = hy - hl * 0.12
    r = max(1.0, L * 0.018)
    d.ellipse([ex - r, ey - r, ex + r, ey + r], fill=255)
    sp.paint(m, color)


def paint_belly(sp, geo, color, frac=0.45):
    cx, cy, rx, ry, ang = geo["body"]
    m, d = sp.new_mask()
    d.polygon(ellipse_pts(cx, cy, rx, ry, ang), fill=255)
    arr = np.asarray(m, np.float32) / 255
    arr *= (sp.yy > cy + ry * (1 - 2 * frac)).astype(np.float32)
    sp.paint(arr, color)


def tail_tuft(sp, geo, L, r, color):
    m, d = sp.new_mask()
    x, y = geo["tail_tip"]
    rr = r * L
    d.polygon(ellipse_pts(x, y, rr * 0.6, rr, 0.3), fill=255)
    sp.paint(m, color)


# ----------------------------------------------------------------------------- the 13 classes
def giraffe(rng, L):
    q = Quad(body_h=0.5, leg=0.95, leg_w=0.07, neck=rng.uniform(0.95, 1.2), neck_w=0.2,
             neck_angle=rng.uniform(55, 78), head=0.26, head_h=0.5, head_tilt=rng.uniform(20, 60),
             tail=0.45, tail_w=0.025, slope=12)
    cell = jitter_color(rng, (0.55, 0.32, 0.13), 0.12)
    net = jitter_color(rng, (0.93, 0.85, 0.66), 0.05)
    probe = Sprite(L * 3.2, L * 3.2)
    tex = tex_patches(rng, probe, L, cell, net)
    sp, geo = draw_quadruped(rng, L, q, tex)
    m, d = sp.new_mask()  # ossicones
    hx, hy = geo["head"]
    for k in (0, 1):
        limb(d, [(hx - L * (0.06 + 0.03 * k), hy - L * 0.04), (hx - L * (0.07 + 0.03 * k), hy - L * 0.13)], L * 0.025)
    sp.paint(m, cell * 0.6)
    ears(sp, geo, L, 0.06, net * 0.9)
    tail_tuft(sp, geo, L, 0.05, (0.1, 0.07, 0.05))
    eye(sp, geo, L)
    return sp


def zebra(rng, L):
    q = Quad(body_h=0.48, leg=0.58, leg_w=0.085, neck=0.42, neck_w=0.3, neck_angle=rng.uniform(-30, 50),
             head=0.38, head_h=0.45, head_tilt=rng.uniform(30, 80), tail=0.4, tail_w=0.03)
    white = jitter_color(rng, (0.93, 0.92, 0.88), 0.04)
    black = jitter_color(rng, (0.07, 0.06, 0.06), 0.2)
    probe = Sprite(L * 3.2, L * 3.2)
    tex = tex_stripes(rng, probe, L, white, black, period=rng.uniform(0.09, 0.13))
    legtex = tex_stripes(rng, probe, L, white, black, period=0.07, angle=0.0)
    sp, geo = draw_quadruped(rng, L, q, tex, legtex)
    m, d = sp.new_mask()  # mane
    taper(d, geo["neck_base"], geo["neck_end"], L * 0.06, L * 0.04)
    sp.paint(m, black)
    ears(sp, geo, L, 0.1, white)
    tail_tuft(sp, geo, L, 0.05, black)
    eye(sp, geo, L)
    return sp


def elephant(rng, L):
    q = Quad(body_h=0.72, leg=0.5, leg_w=0.2, neck=0.12, neck_w=0.45, neck_angle=10, head=0.42,
             head_h=1.0, head_tilt=rng.uniform(10, 40), tail=0.35, tail_w=0.03, slope=4)
    gray = jitter_color(rng, (0.45, 0.42, 0.40), 0.1)
    if rng.random() < 0.3:
        gray = jitter_color(rng, (0.55, 0.40, 0.30), 0.06)  # dusted with red soil
    probe = Sprite(L * 3.2, L * 3.2)
    tex = tex_solid(rng, probe, gray, 0.18, 12)
    sp, geo = draw_quadruped(rng, L, q, tex)
    hx, hy = geo["head"]
    # trunk: from snout downward, curled tip
    m, d = sp.new_mask()
    sx, sy = hx + L * 0.16, hy + L * 0.05
    curl = rng.uniform(-0.2, 0.25)
    pts = [(sx, sy), (sx + L * 0.1, sy + L * 0.2), (sx + L * 0.08, sy + L * 0.42), (sx + L * (0.1 + curl), sy + L * 0.52)]
    for (a, b), w in zip(zip(pts[:-1], pts[1:]), (0.13, 0.1, 0.07)):
        taper(d, a, b, L * w, L * w * 0.8)
    sp.paint(m, gray * 0.95)
    # tusks
    if rng.random() < 0.8:
        m, d = sp.new_mask()
        limb(d, [(hx + L * 0.12, hy + L * 0.12), (hx + L * 0.22, hy + L * 0.22), (hx + L * 0.3, hy + L * 0.2)], L * 0.035)
        sp.paint(m, (0.9, 0.87, 0.78))
    # big ear
    m, d = sp.new_mask()
    d.polygon(ellipse_pts(hx - L * 0.1, hy + L * 0.02, L * 0.17, L * 0.25, rng.uniform(-0.2, 0.2)), fill=255)
    sp.paint(m, gray * 0.85)
    tail_tuft(sp, geo, L, 0.03, gray * 0.3)
    eye(sp, geo, L)
    return sp


def impala(rng, L):
    q = Quad(body_h=0.42, leg=0.72, leg_w=0.055, neck=0.45, neck_w=0.16, neck_angle=rng.uniform(-20, 60),
             head=0.27, head_h=0.45, head_tilt=rng.uniform(20, 70), tail=0.2, tail_w=0.04, tail_droop=40)
    coat = jitter_color(rng, (0.68, 0.42, 0.22), 0.07)
    probe = Sprite(L * 3.2, L * 3.2)
    tex = tex_solid(rng, probe, coat, 0.08)
    sp, geo = draw_quadruped(rng, L, q, tex)
    paint_belly(sp, geo, jitter_color(rng, (0.92, 0.88, 0.8), 0.03), 0.35)
    if rng.random() < 0.5:  # lyre-shaped horns of the males
        m, d = sp.new_mask()
        hx, hy = geo["head"]
        for k in (0, 1):
            o = L * 0.03 * k
            limb(d, [(hx - L * 0.05 - o, hy - L * 0.06), (hx - L * 0.14 - o, hy - L * 0.2),
                     (hx - L * 0.09 - o, hy - L * 0.32), (hx - L * 0.13 - o, hy - L * 0.4)], L * 0.022)
        sp.paint(m, (0.12, 0.1, 0.08))
    ears(sp, geo, L, 0.11, coat)
    tail_tuft(sp, geo, L, 0.04, (0.1, 0.08, 0.06))
    eye(sp, geo, L)
    return sp


def lion(rng, L):
    q = Quad(body_h=0.42, leg=0.5, leg_w=0.12, neck=0.28, neck_w=0.3, neck_angle=rng.uniform(0, 40),
             head=0.33, head_h=0.75, head_tilt=rng.uniform(5, 35), tail=0.7, tail_w=0.035, tail_droop=55)
    coat = jitter_color(rng, (0.78, 0.6, 0.35), 0.06)
    probe = Sprite(L * 3.2, L * 3.2)
    tex = tex_solid(rng, probe, coat, 0.08)
    male = rng.random() < 0.4
    sp, geo = draw_quadruped(rng, L, q, tex)
    if male:  # mane around head and neck
        m, d = sp.new_mask()
        hx, hy = geo["head"]
        d.polygon(ellipse_pts(hx - L * 0.08, hy + L * 0.03, L * 0.22, L * 0.25, 0.3), fill=255)
        sp.paint(m, tex_solid(rng, sp, jitter_color(rng, (0.45, 0.28, 0.12), 0.12), 0.25, 20))
        m, d = sp.new_mask()
        d.polygon(ellipse_pts(hx + L * 0.05, hy + L * 0.02, L * 0.15, L * 0.11, geo["head_angle"]), fill=255)
        sp.paint(m, coat)
    ears(sp, geo, L, 0.07, coat, pointed=False)
    tail_tuft(sp, geo, L, 0.045, (0.2, 0.12, 0.06))
    eye(sp, geo, L)
    return sp


def leopard(rng, L):
    q = Quad(body_h=0.34, leg=0.45, leg_w=0.1, neck=0.25, neck_w=0.22, neck_angle=rng.uniform(-10, 30),
             head=0.26, head_h=0.8, head_tilt=rng.uniform(0, 30), tail=0.8, tail_w=0.04, tail_droop=rng.uniform(40, 95))
    ground = jitter_color(rng, (0.82, 0.62, 0.3), 0.06)
    probe = Sprite(L * 3.2, L * 3.2)
    tex = tex_rosettes(rng, probe, L, ground, (0.12, 0.09, 0.05))
    sp, geo = draw_quadruped(rng, L, q, tex)
    paint_belly(sp, geo, tex_rosettes(rng, sp, L, (0.9, 0.85, 0.72), (0.15, 0.1, 0.06), density=0.5), 0.25)
    ears(sp, geo, L, 0.06, ground, pointed=False)
    eye(sp, geo, L)
    return sp


def buffalo(rng, L):
    q = Quad(body_h=0.62, leg=0.42, leg_w=0.15, neck=0.2, neck_w=0.38, neck_angle=rng.uniform(-25, 15),
             head=0.34, head_h=0.65, head_tilt=rng.uniform(30, 70), tail=0.4, tail_w=0.03, slope=6)
    coat = jitter_color(rng, (0.16, 0.13, 0.11), 0.2)
    probe = Sprite(L * 3.2, L * 3.2)
    tex = tex_solid(rng, probe, coat, 0.25, 10)
    sp, geo = draw_quadruped(rng, L, q, tex)
    m, d = sp.new_mask()  # boss and horns sweeping down then up
    hx, hy = geo["head"]
    for s in (-1, 1):
        limb(d, [(hx - L * 0.02, hy - L * 0.1), (hx - L * 0.02 + s * L * 0.14, hy - L * 0.02),
                 (hx + s * L * 0.2, hy - L * 0.14)], L * 0.05)
    sp.paint(m, jitter_color(rng, (0.3, 0.27, 0.22), 0.1))
    ears(sp, geo, L, 0.08, coat, pointed=False)
    tail_tuft(sp, geo, L, 0.04, coat * 0.6)
    return sp


def hyena(rng, L):
    q = Quad(body_h=0.45, leg=0.45, leg_w=0.1, front_leg=1.35, neck=0.3, neck_w=0.3,
             neck_angle=rng.uniform(0, 35), head=0.3, head_h=0.7, head_tilt=rng.uniform(15, 45),
             tail=0.28, tail_w=0.07, tail_droop=80, slope=rng.uniform(12, 20))
    ground = jitter_color(rng, (0.6, 0.52, 0.38), 0.08)
    probe = Sprite(L * 3.2, L * 3.2)
    tex = tex_spots(rng, probe, L, ground, (0.2, 0.15, 0.1))
    sp, geo = draw_quadruped(rng, L, q, tex)
    m, d = sp.new_mask()
    hx, hy = geo["head"]
    d.polygon(ellipse_pts(geo["snout"][0] - L * 0.03, geo["snout"][1], L * 0.06, L * 0.05), fill=255)
    sp.paint(m, (0.15, 0.12, 0.1))  # dark muzzle
    ears(sp, geo, L, 0.09, ground * 0.8, pointed=False)
    eye(sp, geo, L)
    return sp


def gorilla(rng, L):
    coat = jitter_color(rng, (0.1, 0.09, 0.09), 0.2)
    if rng.random() < 0.55:  # knuckle-walking
        q = Quad(body_h=0.7, leg=0.35, leg_w=0.2, front_leg=1.7, neck=0.08, neck_w=0.4, neck_angle=20,
                 head=0.34, head_h=0.9, head_tilt=20, tail=0.0, slope=rng.uniform(20, 30))
        probe = Sprite(L * 3.2, L * 3.2)
        sp, geo = draw_quadruped(rng, L, q, tex_solid(rng, probe, coat, 0.3, 14), far_shade=0.8)
        if rng.random() < 0.5:  # silverback saddle
            cx, cy, rx, ry, ang = geo["body"]
            m, d = sp.new_mask()
            d.polygon(ellipse_pts(cx - rx * 0.2, cy - ry * 0.35, rx * 0.5, ry * 0.45, ang), fill=255)
            sp.paint(np.asarray(m, np.float32) / 255 * 0.8, (0.55, 0.55, 0.55))
        m, d = sp.new_mask()
        hx, hy = geo["head"]
        d.polygon(ellipse_pts(hx + L * 0.06, hy + L * 0.03, L * 0.09, L * 0.1), fill=255)
        sp.paint(m, (0.05, 0.05, 0.05))
        return sp
    # sitting upright: broad shoulders, long arms
    sp = Sprite(L * 1.8, L * 2.0)
    cx, cy = L * 0.9, L * 1.1
    m, d = sp.new_mask()
    d.polygon(ellipse_pts(cx, cy, L * 0.42, L * 0.5), fill=255)
    d.polygon(ellipse_pts(cx, cy - L * 0.55, L * 0.2, L * 0.22), fill=255)
    d.polygon(ellipse_pts(cx, cy - L * 0.72, L * 0.1, L * 0.1), fill=255)  # crest
    for s in (-1, 1):
        limb(d, [(cx + s * L * 0.35, cy - L * 0.3), (cx + s * L * 0.55, cy + L * 0.15), (cx + s * L * 0.45, cy + L * 0.55)], L * 0.2)
        limb(d, [(cx + s * L * 0.2, cy + L * 0.35), (cx + s * L * 0.3, cy + L * 0.6)], L * 0.22)
    sp.paint(m, tex_solid(rng, sp, coat, 0.3, 14))
    m, d = sp.new_mask()
    d.polygon(ellipse_pts(cx, cy - L * 0.5, L * 0.12, L * 0.12), fill=255)
    sp.paint(m, (0.04, 0.04, 0.04))
    return sp


def monkey(rng, L):
    coat = jitter_color(rng, (0.5, 0.45, 0.38) if rng.random() < 0.6 else (0.45, 0.33, 0.2), 0.1)
    face = jitter_color(rng, (0.25, 0.2, 0.18), 0.1)
    if rng.random() < 0.5:  # walking on all fours, tail arched
        q = Quad(body_h=0.42, leg=0.55, leg_w=0.1, neck=0.15, neck_w=0.25, neck_angle=20, head=0.3,
                 head_h=0.85, head_tilt=10, tail=0.9, tail_w=0.05, tail_droop=-60 + rng.uniform(-20, 30), slope=5)
        probe = Sprite(L * 3.2, L * 3.2)
        sp, geo = draw_quadruped(rng, L, q, tex_solid(rng, probe, coat, 0.12))
        m, d = sp.new_mask()
        d.polygon(ellipse_pts(geo["snout"][0] - L * 0.04, geo["snout"][1], L * 0.07, L * 0.06), fill=255)
        sp.paint(m, face)
        return sp
    # sitting, tail hanging in an S curve
    sp = Sprite(L * 1.8, L * 2.2)
    cx, cy = L * 0.8, L * 1.0
    m, d = sp.new_mask()
    d.polygon(ellipse_pts(cx, cy, L * 0.28, L * 0.4, 0.15), fill=255)
    d.polygon(ellipse_pts(cx + L * 0.08, cy - L * 0.48, L * 0.17, L * 0.17), fill=255)
    limb(d, [(cx + L * 0.15, cy - L * 0.2), (cx + L * 0.35, cy + L * 0.15), (cx + L * 0.3, cy + L * 0.38)], L * 0.09)
    limb(d, [(cx - L * 0.05, cy + L * 0.3), (cx + L * 0.25, cy + L * 0.4)], L * 0.14)
    s = rng.choice([-1, 1])
    limb(d, [(cx - L * 0.2, cy + L * 0.3), (cx - L * 0.4, cy + L * 0.6), (cx - L * (0.4 + 0.2 * s), cy + L * 0.9),
             (cx - L * 0.35, cy + L * 1.15)], L * 0.05)
    sp.paint(m, tex_solid(rng, sp, coat, 0.12))
    m, d = sp.new_mask()
    d.polygon(ellipse_pts(cx + L * 0.15, cy - L * 0.46, L * 0.09, L * 0.1), fill=255)
    sp.paint(m, face)
    return sp


def crocodile(rng, L):
    sp = Sprite(L * 1.4, L * 0.6)
    y = L * 0.3
    x0 = L * 0.05
    skin = jitter_color(rng, (0.32, 0.35, 0.2), 0.12)
    m, d = sp.new_mask()
    # tail (tapering), body, flat head with long snout
    d.polygon([(x0, y - L * 0.01), (x0 + L * 0.5, y - L * 0.06), (x0 + L * 0.5, y + L * 0.06), (x0, y + L * 0.015)], fill=255)
    d.polygon(ellipse_pts(x0 + L * 0.72, y, L * 0.26, L * 0.075), fill=255)
    jaw = rng.uniform(0, 0.06) if rng.random() < 0.3 else 0.0
    d.polygon([(x0 + L * 0.92, y - L * 0.06), (x0 + L * 1.28, y - L * 0.02 - jaw * L), (x0 + L * 1.3, y + L * 0.0),
               (x0 + L * 0.92, y + L * 0.05)], fill=255)
    if jaw:
        d.polygon([(x0 + L * 0.95, y + L * 0.02), (x0 + L * 1.27, y + L * 0.03 + jaw * L * 0.4), (x0 + L * 0.95, y + L * 0.06)], fill=255)
    for lx in (0.58, 0.86):  # short splayed legs
        limb(d, [(x0 + L * lx, y + L * 0.04), (x0 + L * (lx - 0.05), y + L * 0.1), (x0 + L * (lx + 0.02), y + L * 0.13)], L * 0.04)
    tex = tex_solid(rng, sp, skin, 0.12)
    bands = (np.sin(sp.xx / (L * 0.035) * np.pi) > 0.3).astype(np.float32) * (np.abs(sp.yy - y) < L * 0.05)
    tex = tex * (1 - 0.35 * bands[..., None])
    sp.paint(m, tex)
    m, d = sp.new_mask()  # eye bump
    d.ellipse([x0 + L * 0.98, y - L * 0.085, x0 + L * 1.03, y - L * 0.045], fill=255)
    sp.paint(m, skin * 0.6)
    return sp


def bird(rng, L):
    palettes = [(0.95, 0.95, 0.93), (0.08, 0.08, 0.1), (0.2, 0.35, 0.7), (0.55, 0.4, 0.25), (0.7, 0.25, 0.15), (0.5, 0.55, 0.5)]
    col = jitter_color(rng, palettes[rng.integers(len(palettes))], 0.08)
    wing = col * rng.uniform(0.6, 1.0)
    sp = Sprite(L * 1.6, L * 1.4)
    cx, cy = L * 0.8, L * 0.7
    m, d = sp.new_mask()
    d.polygon(ellipse_pts(cx, cy, L * 0.32, L * 0.16, -0.15), fill=255)
    d.polygon(ellipse_pts(cx + L * 0.32, cy - L * 0.14, L * 0.11, L * 0.1), fill=255)
    d.polygon([(cx - L * 0.28, cy - L * 0.02), (cx - L * 0.55, cy - L * 0.06), (cx - L * 0.52, cy + L * 0.08)], fill=255)
    flying = rng.random() < 0.45
    if not flying:
        for lx in (-0.03, 0.07):
            limb(d, [(cx + L * lx, cy + L * 0.12), (cx + L * lx, cy + L * 0.45)], max(1.0, L * 0.025))
    sp.paint(m, col)
    m, d = sp.new_mask()
    d.polygon([(cx + L * 0.4, cy - L * 0.17), (cx + L * 0.62, cy - L * 0.12), (cx + L * 0.4, cy - L * 0.1)], fill=255)
    sp.paint(m, (0.85, 0.6, 0.1) if rng.random() < 0.5 else (0.1, 0.1, 0.1))
    m, d = sp.new_mask()
    if flying:
        up = rng.uniform(-1, 1)
        d.polygon([(cx - L * 0.12, cy - L * 0.05), (cx + L * 0.15, cy - L * 0.05), (cx - L * 0.1, cy - L * (0.1 + 0.5 * up))], fill=255)
    else:
        d.polygon(ellipse_pts(cx - L * 0.05, cy - L * 0.01, L * 0.22, L * 0.09, -0.2), fill=255)
    sp.paint(m, wing)
    return sp


def person(rng, L):
    """L is the standing height."""
    sp = Sprite(L * 0.8, L * 1.1)
    cx, top = L * 0.4, L * 0.05
    skin = jitter_color(rng, (0.35, 0.22, 0.14) if rng.random() < 0.7 else (0.8, 0.62, 0.5), 0.1)
    shirt = jitter_color(rng, rng.uniform(0.05, 0.95, 3), 0.05)
    trousers = jitter_color(rng, rng.choice([(0.2, 0.25, 0.4), (0.35, 0.3, 0.2), (0.15, 0.15, 0.15), (0.5, 0.45, 0.35)]), 0.1)
    head_r = L * 0.065
    neck_y = top + 2 * head_r
    hip_y = neck_y + L * 0.36
    step = rng.uniform(-0.15, 0.15)
    m, d = sp.new_mask()  # legs
    for s in (-1, 1):
        limb(d, [(cx + s * L * 0.04, hip_y), (cx + s * step * L * 0.6, hip_y + L * 0.24), (cx + s * step * L, top + L * 0.97)], L * 0.075)
    sp.paint(m, trousers)
    m, d = sp.new_mask()  # torso and arms
    d.polygon([(cx - L * 0.1, neck_y + L * 0.02), (cx + L * 0.1, neck_y + L * 0.02), (cx + L * 0.08, hip_y + L * 0.03),
               (cx - L * 0.08, hip_y + L * 0.03)], fill=255)
    for s in (-1, 1):
        a = rng.uniform(-0.5, 0.9)
        elbow = (cx + s * L * 0.12 + math.sin(a) * L * 0.05 * s, neck_y + L * 0.18)
        limb(d, [(cx + s * L * 0.1, neck_y + L * 0.05), elbow, (elbow[0] + math.sin(a) * L * 0.1, elbow[1] + L * 0.15)], L * 0.055)
    sp.paint(m, shirt)
    m, d = sp.new_mask()
    d.ellipse([cx - head_r, top, cx + head_r, top + 2 * head_r], fill=255)
    sp.paint(m, skin)
    if rng.random() < 0.35:  # hat
        m, d = sp.new_mask()
        d.rectangle([cx - head_r * 1.5, top + head_r * 0.2, cx + head_r * 1.5, top + head_r * 0.45], fill=255)
        d.rectangle([cx - head_r * 0.9, top - head_r * 0.3, cx + head_r * 0.9, top + head_r * 0.4], fill=255)
        sp.paint(m, jitter_color(rng, (0.6, 0.5, 0.3), 0.2))
    return sp


DRAW = {
    "giraffe": giraffe, "person": person, "zebra": zebra, "elephant": elephant, "impala": impala,
    "monkey": monkey, "lion": lion, "leopard": leopard, "crocodile": crocodile, "buffalo": buffalo,
    "hyena": hyena, "bird": bird, "gorilla": gorilla,
}
# drawing size in px (body length; standing height for person) for an animal in the foreground
SIZE = {
    "giraffe": (55, 80), "person": (60, 95), "zebra": (55, 80), "elephant": (80, 115),
    "impala": (42, 62), "monkey": (26, 40), "lion": (52, 75), "leopard": (45, 68),
    "crocodile": (75, 115), "buffalo": (62, 85), "hyena": (44, 62), "bird": (14, 30),
    "gorilla": (44, 62),
}
HERD = {"zebra": 5, "impala": 5, "buffalo": 4, "elephant": 3, "giraffe": 3, "bird": 4, "monkey": 3,
        "person": 3, "lion": 3, "hyena": 3, "gorilla": 2, "leopard": 1, "crocodile": 2}
assert set(DRAW) == set(CLASSES) == set(SIZE) == set(HERD)


def render_sprite(rng, cls: str, length_px: float) -> np.ndarray:
    L = max(6.0, length_px) * SS
    sp = DRAW[cls](rng, L)
    out = sp.finish(rng)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


# ----------------------------------------------------------------------------- scenes
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
SKIES = [((0.45, 0.65, 0.9), (0.8, 0.88, 0.95)), ((0.7, 0.72, 0.75), (0.85, 0.85, 0.85)),
         ((0.55, 0.5, 0.6), (0.95, 0.75, 0.5))]


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
            spr = np.concatenate([np.broadcast_to(jitter_color(rng, (0.35, 0.3, 0.22), 0.15), a.shape[:2] + (3,)), a], 2)
        spr = np.ascontiguousarray(spr, dtype=np.float32)
        paste(img, spr, int(rng.uniform(-0.1, 1.0) * W), y - spr.shape[0])


def choose_groups(rng, counts: dict[str, int]) -> list[list[str]]:
    """Split exact per-class counts into images of 1-6 animals (herds, pairs, mixed scenes)."""
    remaining = dict(counts)
    images = []
    while sum(remaining.values()) > 0:
        names = [c for c in CLASSES if remaining[c] > 0]
        w = np.array([remaining[c] for c in names], np.float64)
        primary = names[rng.choice(len(names), p=w / w.sum())]
        k = int(min(remaining[primary], 1 + rng.binomial(HERD[primary] - 1, 0.45) if HERD[primary] > 1 else 1))
        group = [primary] * k
        remaining[primary] -= k
        if rng.random() < 0.3 and len(group) < 6:
            others = [c for c in names if c != primary and remaining[c] > 0]
            if others:
                o = others[rng.integers(len(others))]
                m = int(min(remaining[o], rng.integers(1, 3), 6 - len(group)))
                group += [o] * m
                remaining[o] -= m
        images.append(group)
    return images


def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def render_image(cfg: SynthConfig, index: int, group: list[str]):
    """Render one scene; returns (uint8 HxWx3, list of (class, x0, y0, x1, y1) in pixel edges)."""
    rng = np.random.default_rng([cfg.seed, index])
    W, H, d = cfg.width, cfg.height, float(np.clip(cfg.difficulty, 0, 1))
    img, horizon, ground = background(rng, W, H, d)
    place_scenery(rng, img, horizon, d, front=False)
    # sprites with depth; draw far to near
    placed = []
    for cls in group:
        for _try in range(40):
            if cls == "bird" and rng.random() < 0.3:
                t = rng.uniform(0.1, 0.6)  # flying over the plain
                feet = rng.uniform(0.1, 0.9) * horizon + 10
            else:
                t = rng.uniform(0.08, 1.0)
                feet = horizon + t * (H - horizon)
            f = 0.32 + 0.68 * t
            length = rng.uniform(*SIZE[cls]) * f * W / 320
            spr = render_sprite(rng, cls, length)
            h, w = spr.shape[:2]
            x = int(rng.uniform(-0.15 * w, W - 0.85 * w))
            y = int(feet - h * rng.uniform(0.92, 1.0))
            box = (max(0, x), max(0, y), min(W, x + w), min(H, y + h))
            if box[2] - box[0] < 4 or box[3] - box[1] < 4:
                continue
            if (box[2] - box[0]) * (box[3] - box[1]) < 0.6 * w * h:  # mostly outside the frame
                continue
            if all(iou(box, p[2]) < 0.3 for p in placed):
                placed.append((t, cls, box, spr, x, y))
                break
        else:
            placed.append((t, cls, box, spr, x, y))  # accept overlap rather than drop an instance
    placed.sort(key=lambda p: p[0])
    objects = []
    haze = jitter_color(rng, (0.78, 0.8, 0.82), 0.03)
    for t, cls, box, spr, x, y in placed:
        h, w = spr.shape[:2]
        if cls != "bird" or y + h > horizon:  # shadow on the ground
            sh = Image.new("L", (w + 8, max(4, h // 5)), 0)
            ImageDraw.Draw(sh).ellipse([2, 0, w + 5, max(3, h // 5) - 1], fill=int(110 * (0.5 + 0.5 * d)))
            sa = np.asarray(sh.filter(ImageFilter.GaussianBlur(2)), np.float32) / 255
            shadow = np.concatenate([np.zeros(sa.shape + (3,), np.float32), sa[..., None]], 2)
            paste(img, shadow, x - 4 + int(w * 0.1), y + h - sa.shape[0] // 2)
        amount = (1 - t) * (0.25 + 0.35 * d)  # atmospheric haze on distant animals
        spr = spr.copy()
        spr[..., :3] = spr[..., :3] * (1 - amount) + haze * amount
        spr[..., :3] *= rng.uniform(0.8, 1.15)  # sun/shade
        paste(img, np.clip(spr, 0, 1), x, y)
        objects.append((cls, *box))
        # occlusion: grass or a bush in front of the lower part
        if rng.random() < 0.25 + 0.5 * d and cls != "bird":
            bw, bh = box[2] - box[0], box[3] - box[1]
            occ_h = max(3, int(bh * rng.uniform(0.15, 0.35 + 0.25 * d)))
            if rng.random() < 0.6:
                occ = grass_tuft(rng, max(4, int(bw * rng.uniform(0.5, 1.3))), occ_h, ground * rng.uniform(0.8, 1.2))
            else:
                occ = foliage(rng, max(4, int(bw * rng.uniform(0.3, 0.7))), occ_h * 2, jitter_color(rng, (0.25, 0.35, 0.15), 0.2))
            ox = box[0] + int(rng.uniform(-0.2, 0.8) * bw)
            paste(img, occ, ox, box[3] - occ.shape[0] + int(occ_h * 0.1))
    place_scenery(rng, img, horizon, d * 0.6, front=True)
    # photometric: white balance, exposure, contrast, vignette, blur, noise
    img = img * jitter_color(rng, (1, 1, 1), 0.05 + 0.05 * d)[None, None] * rng.uniform(0.75, 1.15)
    mean = img.mean()
    img = (img - mean) * rng.uniform(0.75, 1.15) + mean
    yy, xx = np.mgrid[0:H, 0:W]
    r2 = ((xx - W / 2) / W) ** 2 + ((yy - H / 2) / H) ** 2
    img *= (1 - rng.uniform(0, 0.5) * r2)[..., None]
    img = np.clip(img, 0, 1)
    pil = Image.fromarray((img * 255 + 0.5).astype(np.uint8))
    if rng.random() < 0.2 + 0.4 * d:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.6 + 0.8 * d)))
    arr = np.asarray(pil, np.float32) + rng.normal(0, 1 + 6 * d * rng.random(), (H, W, 3))
    return np.clip(arr, 0, 255).astype(np.uint8), objects


# ----------------------------------------------------------------------------- VOC writing
def voc_xml(image_id: str, width: int, height: int, objects) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "images"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for k, v in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, k).text = str(v)
    for cls, x0, y0, x1, y1 in objects:
        o = ET.SubElement(root, "object")
        ET.SubElement(o, "name").text = VOC_SPELLING.get(cls, cls)
        ET.SubElement(o, "pose").text = "Unspecified"
        ET.SubElement(o, "truncated").text = str(int(x0 == 0 or y0 == 0 or x1 == width or y1 == height))
        ET.SubElement(o, "difficult").text = "0"
        bb = ET.SubElement(o, "bndbox")
        # VOC: 1-based, inclusive pixel indices. Pixel edges [x0, x1) -> xmin = x0 + 1, xmax = x1.
        for k, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, k).text = str(int(v))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def split_ids(rng, groups, valid_fraction):
    """Greedy stratified split: an image goes to valid while its classes are under target."""
    totals: dict[str, int] = {}
    for g in groups:
        for c in g:
            totals[c] = totals.get(c, 0) + 1
    target = {c: n * valid_fraction for c, n in totals.items()}
    got = {c: 0 for c in totals}
    valid = set()
    for i in rng.permutation(len(groups)):
        g = groups[i]
        if all(got[c] + g.count(c) <= target[c] + 0.5 or (got[c] == 0 and g.count(c) < totals[c]) for c in set(g)):
            valid.add(int(i))
            for c in g:
                got[c] += 1
    return valid


def generate(out_dir: str | os.PathLike, cfg: SynthConfig = SynthConfig(), progress: bool = True) -> dict:
    """Render the whole set into ``out_dir`` (replaced atomically). Returns a summary dict."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    rng = np.random.default_rng([cfg.seed, 10**6])
    groups = choose_groups(rng, cfg.counts())
    valid = split_ids(rng, groups, cfg.valid_fraction)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        (tmp / "annotations").mkdir()
        (tmp / "images").mkdir()
        ids = {"train": [], "valid": []}
        for i, group in enumerate(tqdm(groups, desc="rendering", disable=not progress)):
            image_id = f"sav_{i:05d}"
            pixels, objects = render_image(cfg, i, group)
            q = int(np.random.default_rng([cfg.seed, i, 7]).integers(*cfg.jpeg_quality))
            Image.fromarray(pixels).save(tmp / "images" / f"{image_id}.jpg", quality=q)
            (tmp / "annotations" / f"{image_id}.xml").write_bytes(voc_xml(image_id, cfg.width, cfg.height, objects))
            ids["valid" if i in valid else "train"].append(image_id)
        for split, names in ids.items():
            (tmp / f"{split}.txt").write_text("\n".join(names) + "\n")
        summary = {"config": asdict(cfg), "images": {k: len(v) for k, v in ids.items()},
                   "instances": cfg.counts(), "total_instances": sum(cfg.counts().values())}
        (tmp / "synth.json").write_text(json.dumps(summary, indent=2))
        old = None
        if out_dir.exists():
            old = out_dir.with_name(out_dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def ensure(out_dir: str | os.PathLike, cfg: SynthConfig = SynthConfig()) -> Path:
    """Generate the set unless ``out_dir`` already holds one made with the same config."""
    out_dir = Path(out_dir)
    meta = out_dir / "synth.json"
    if meta.exists():
        try:
            if json.loads(meta.read_text())["config"] == json.loads(json.dumps(asdict(cfg))):
                return out_dir
        except (ValueError, KeyError):
            pass
    generate(out_dir, cfg)
    return out_dir


def main(argv=None):
    ap = argparse.ArgumentParser(description="Render the embedded savanna dataset (VOC layout).")
    ap.add_argument("--out", default="data/savanna")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the paper's per-class counts")
    ap.add_argument("--difficulty", type=float, default=SynthConfig.difficulty)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--force", action="store_true", help="re-render even if up to date")
    a = ap.parse_args(argv)
    cfg = SynthConfig(seed=a.seed, scale=a.scale, difficulty=a.difficulty, width=a.width, height=a.height)
    if a.force:
        summary = generate(a.out, cfg)
    else:
        ensure(a.out, cfg)
        summary = json.loads((Path(a.out) / "synth.json").read_text())
    print(json.dumps({k: summary[k] for k in ("images", "total_instances")}))


if __name__ == "__main__":
    main()
