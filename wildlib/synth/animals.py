"""The 13 classes as articulated silhouettes (a shared quadruped template and per-class
features), their sizes and herd sizes, and :func:`render_sprite`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..classes import CLASSES
from .noise import jitter_color
from .sprite import SUPERSAMPLE, Sprite, ellipse_pts, limb, taper
from .textures import tex_solid, tex_stripes, tex_patches, tex_rosettes, tex_spots


@dataclass
class Quad:
    body_h: float = 0.45  # body height / body length
    leg: float = 0.6  # leg length / body length
    leg_w: float = 0.09
    front_leg: float = 1.0  # front leg length factor (hyena, gorilla > 1)
    neck: float = 0.4
    neck_w: float = 0.22
    neck_angle: float = 40.0  # degrees above horizontal
    head: float = 0.3
    head_h: float = 0.6  # head height / head length
    head_tilt: float = 25.0  # degrees below horizontal
    tail: float = 0.35
    tail_w: float = 0.03
    tail_droop: float = 70.0
    slope: float = 0.0  # degrees, positive = shoulders higher


def quad_canvas(length):
    """A blank canvas that holds a quadruped of body length ``length`` with room to spare; textures
    are drawn on one of these as a probe before the body is painted with them."""
    return Sprite(length * 3.2, length * 3.2)


def draw_quadruped(rng, length, q: Quad, body_tex, leg_tex=None, far_shade=0.72):
    """Side view facing right; returns (sprite, geometry dict of key points)."""
    sp = quad_canvas(length)
    cx, cy = length * 1.6, length * 1.55
    slope = math.radians(q.slope)
    half = length / 2
    bh = q.body_h * length
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
            ll = q.leg * length * factor + bh * 0.2
            knee = (
                root[0] + math.sin(a1) * ll * 0.5 + (length * 0.04 if far else 0),
                root[1] + math.cos(a1) * ll * 0.5,
            )
            a2 = a1 + (0.35 * abs(math.sin(phase + off)) if k == 0 else -0.35 * abs(math.sin(phase + off)))
            foot = (knee[0] + math.sin(a2) * ll * 0.5, knee[1] + math.cos(a2) * ll * 0.5)
            rx = root[0] + (length * 0.04 if far else 0)
            limb(d, [(rx, root[1]), knee], q.leg_w * length * 1.15)
            limb(d, [knee, foot], q.leg_w * length * 0.8)
        return m

    sp.paint(legs(True), np.asarray(leg_tex) * far_shade)
    # tail
    m, d = sp.new_mask()
    root = (cx - half * 0.95 * math.cos(slope), cy + half * 0.95 * math.sin(slope) - bh * 0.25)
    ta = math.radians(q.tail_droop + rng.uniform(-20, 20))
    tip = (root[0] - math.cos(ta) * q.tail * length, root[1] + math.sin(ta) * q.tail * length)
    mid = ((root[0] + tip[0]) / 2 - length * 0.05, (root[1] + tip[1]) / 2)
    if q.tail > 0:
        limb(d, [root, mid, tip], max(1.0, q.tail_w * length))
    geo = {"tail_tip": tip, "cx": cx, "cy": cy}
    # body
    d.polygon(ellipse_pts(cx, cy, half, bh / 2, -slope), fill=255)
    # neck + head
    na = math.radians(q.neck_angle)
    neck_base = (cx + half * 0.72 * math.cos(slope), cy - half * 0.72 * math.sin(slope) - bh * 0.12)
    neck_end = (neck_base[0] + math.cos(na) * q.neck * length, neck_base[1] - math.sin(na) * q.neck * length)
    taper(d, neck_base, neck_end, q.neck_w * length, q.neck_w * length * 0.65)
    ha = math.radians(q.head_tilt)
    hl = q.head * length
    head_c = (neck_end[0] + math.cos(ha) * hl * 0.35, neck_end[1] + math.sin(ha) * hl * 0.35)
    d.polygon(ellipse_pts(head_c[0], head_c[1], hl / 2, hl * q.head_h / 2, ha), fill=255)
    snout = (head_c[0] + math.cos(ha) * hl * 0.5, head_c[1] + math.sin(ha) * hl * 0.5)
    sp.paint(m, body_tex)
    m, d = sp.new_mask()
    sp.paint(legs(False), leg_tex)
    geo.update(
        neck_base=neck_base,
        neck_end=neck_end,
        head=head_c,
        snout=snout,
        head_len=hl,
        head_angle=ha,
        hip=hip,
        shoulder=sho,
        body=(cx, cy, half, bh / 2, -slope),
    )
    return sp, geo


def coat_and_body(rng, length, q: Quad, color, jitter: float, texture):
    """The template most animals start from: a coat colour jittered around ``color``, its texture
    drawn on a probe canvas by ``texture(coat, probe)``, then the quadruped body in that coat.
    Returns (coat, sprite, geometry); the animal then adds its own features and ends with
    :func:`finish_quadruped`."""
    coat = jitter_color(rng, color, jitter)
    tex = texture(coat, quad_canvas(length))
    sp, geo = draw_quadruped(rng, length, q, tex)
    return coat, sp, geo


def ears(sp, geo, length, size, color, pointed=True):
    """A pair of ears (``size`` in body lengths) on top of the head, pointed or round."""
    m, d = sp.new_mask()
    hx, hy = geo["head"]
    hl = geo["head_len"]
    for k in (0, 1):
        bx = hx - hl * (0.25 + 0.12 * k)
        by = hy - hl * 0.22
        if pointed:
            d.polygon(
                [
                    (bx - size * length * 0.3, by),
                    (bx + size * length * 0.3, by),
                    (bx - size * length * 0.25, by - size * length),
                ],
                fill=255,
            )
        else:
            r = size * length * 0.5
            d.ellipse([bx - r, by - r * 1.6, bx + r, by + r * 0.2], fill=255)
    sp.paint(m, color)


def eye(sp, geo, length, color=(0.05, 0.04, 0.03)):
    """A small dark eye near the front of the head."""
    m, d = sp.new_mask()
    hx, hy = geo["head"]
    hl = geo["head_len"]
    ex = hx + math.cos(geo["head_angle"]) * hl * 0.08
    ey = hy - hl * 0.12
    r = max(1.0, length * 0.018)
    d.ellipse([ex - r, ey - r, ex + r, ey + r], fill=255)
    sp.paint(m, color)


def paint_belly(sp, geo, color, frac=0.45):
    """Repaint the lower ``frac`` of the body ellipse (a pale belly) in ``color`` (a colour or texture)."""
    cx, cy, rx, ry, ang = geo["body"]
    m, d = sp.new_mask()
    d.polygon(ellipse_pts(cx, cy, rx, ry, ang), fill=255)
    arr = np.asarray(m, np.float32) / 255
    arr *= (sp.yy > cy + ry * (1 - 2 * frac)).astype(np.float32)
    sp.paint(arr, color)


def tail_tuft(sp, geo, length, r, color):
    """A tuft of hair at the tail tip, ``r`` body lengths long."""
    m, d = sp.new_mask()
    x, y = geo["tail_tip"]
    rr = r * length
    d.polygon(ellipse_pts(x, y, rr * 0.6, rr, 0.3), fill=255)
    sp.paint(m, color)


def paint_strokes(sp, strokes, width, color):
    """Paint thick strokes (horns, ossicones, tusks) in one colour: each stroke is a list of
    points drawn as a :func:`limb` of the given ``width``, all on one mask, in order."""
    mask, draw = sp.new_mask()
    for points in strokes:
        limb(draw, points, width)
    sp.paint(mask, color)


def finish_quadruped(sp, geo, length, ear_size=None, ear_color=None, pointed_ears=True, tuft_size=None,
                     tuft_color=None, with_eye=True):
    """The last touches the quadrupeds share, painted in this order: a pair of ears (when
    ``ear_size`` is given; pointed or round), a tuft at the tail tip (when ``tuft_size`` is given),
    then the eye (unless ``with_eye`` is false). Draws nothing at random; returns the sprite."""
    if ear_size is not None:
        ears(sp, geo, length, ear_size, ear_color, pointed=pointed_ears)
    if tuft_size is not None:
        tail_tuft(sp, geo, length, tuft_size, tuft_color)
    if with_eye:
        eye(sp, geo, length)
    return sp


def giraffe(rng, length):
    q = Quad(body_h=0.5, leg=0.95, leg_w=0.07, neck=rng.uniform(0.95, 1.2), neck_w=0.2,
             neck_angle=rng.uniform(55, 78), head=0.26, head_h=0.5, head_tilt=rng.uniform(20, 60), tail=0.45,
             tail_w=0.025, slope=12)
    cell = jitter_color(rng, (0.55, 0.32, 0.13), 0.12)
    net, sp, geo = coat_and_body(
        rng, length, q, (0.93, 0.85, 0.66), 0.05, lambda c, probe: tex_patches(rng, probe, length, cell, c)
    )
    hx, hy = geo["head"]
    ossicones = [
        [(hx - length * (0.06 + 0.03 * k), hy - length * 0.04), (hx - length * (0.07 + 0.03 * k), hy - length * 0.13)]
        for k in (0, 1)
    ]
    paint_strokes(sp, ossicones, length * 0.025, cell * 0.6)
    return finish_quadruped(
        sp, geo, length, ear_size=0.06, ear_color=net * 0.9, tuft_size=0.05, tuft_color=(0.1, 0.07, 0.05)
    )


def zebra(rng, length):
    q = Quad(body_h=0.48, leg=0.58, leg_w=0.085, neck=0.42, neck_w=0.3, neck_angle=rng.uniform(-30, 50), head=0.38,
             head_h=0.45, head_tilt=rng.uniform(30, 80), tail=0.4, tail_w=0.03)
    white = jitter_color(rng, (0.93, 0.92, 0.88), 0.04)
    black = jitter_color(rng, (0.07, 0.06, 0.06), 0.2)
    probe = quad_canvas(length)
    tex = tex_stripes(rng, probe, length, white, black, period=rng.uniform(0.09, 0.13))
    legtex = tex_stripes(rng, probe, length, white, black, period=0.07, angle=0.0)
    sp, geo = draw_quadruped(rng, length, q, tex, legtex)
    mane, draw = sp.new_mask()
    taper(draw, geo["neck_base"], geo["neck_end"], length * 0.06, length * 0.04)
    sp.paint(mane, black)
    return finish_quadruped(sp, geo, length, ear_size=0.1, ear_color=white, tuft_size=0.05, tuft_color=black)


def elephant(rng, length):
    q = Quad(body_h=0.72, leg=0.5, leg_w=0.2, neck=0.12, neck_w=0.45, neck_angle=10, head=0.42, head_h=1.0,
             head_tilt=rng.uniform(10, 40), tail=0.35, tail_w=0.03, slope=4)
    gray = jitter_color(rng, (0.45, 0.42, 0.40), 0.1)
    if rng.random() < 0.3:
        gray = jitter_color(rng, (0.55, 0.40, 0.30), 0.06)  # dusted with red soil
    probe = quad_canvas(length)
    tex = tex_solid(rng, probe, gray, 0.18, 12)
    sp, geo = draw_quadruped(rng, length, q, tex)
    hx, hy = geo["head"]
    # trunk: from snout downward, curled tip
    m, d = sp.new_mask()
    sx, sy = hx + length * 0.16, hy + length * 0.05
    curl = rng.uniform(-0.2, 0.25)
    pts = [
        (sx, sy),
        (sx + length * 0.1, sy + length * 0.2),
        (sx + length * 0.08, sy + length * 0.42),
        (sx + length * (0.1 + curl), sy + length * 0.52),
    ]
    for (a, b), w in zip(zip(pts[:-1], pts[1:]), (0.13, 0.1, 0.07)):
        taper(d, a, b, length * w, length * w * 0.8)
    sp.paint(m, gray * 0.95)
    if rng.random() < 0.8:  # tusks
        tusk = [
            (hx + length * 0.12, hy + length * 0.12),
            (hx + length * 0.22, hy + length * 0.22),
            (hx + length * 0.3, hy + length * 0.2),
        ]
        paint_strokes(sp, [tusk], length * 0.035, (0.9, 0.87, 0.78))
    # big ear
    m, d = sp.new_mask()
    d.polygon(
        ellipse_pts(hx - length * 0.1, hy + length * 0.02, length * 0.17, length * 0.25, rng.uniform(-0.2, 0.2)),
        fill=255,
    )
    sp.paint(m, gray * 0.85)
    return finish_quadruped(sp, geo, length, tuft_size=0.03, tuft_color=gray * 0.3)


def impala(rng, length):
    q = Quad(body_h=0.42, leg=0.72, leg_w=0.055, neck=0.45, neck_w=0.16, neck_angle=rng.uniform(-20, 60), head=0.27,
             head_h=0.45, head_tilt=rng.uniform(20, 70), tail=0.2, tail_w=0.04, tail_droop=40)
    coat, sp, geo = coat_and_body(
        rng, length, q, (0.68, 0.42, 0.22), 0.07, lambda c, probe: tex_solid(rng, probe, c, 0.08)
    )
    paint_belly(sp, geo, jitter_color(rng, (0.92, 0.88, 0.8), 0.03), 0.35)
    if rng.random() < 0.5:  # lyre-shaped horns of the males
        hx, hy = geo["head"]
        horns = []
        for k in (0, 1):
            behind = length * 0.03 * k
            horns.append([
                (hx - length * 0.05 - behind, hy - length * 0.06),
                (hx - length * 0.14 - behind, hy - length * 0.2),
                (hx - length * 0.09 - behind, hy - length * 0.32),
                (hx - length * 0.13 - behind, hy - length * 0.4),
            ])
        paint_strokes(sp, horns, length * 0.022, (0.12, 0.1, 0.08))
    return finish_quadruped(
        sp, geo, length, ear_size=0.11, ear_color=coat, tuft_size=0.04, tuft_color=(0.1, 0.08, 0.06)
    )


def lion(rng, length):
    q = Quad(body_h=0.42, leg=0.5, leg_w=0.12, neck=0.28, neck_w=0.3, neck_angle=rng.uniform(0, 40), head=0.33,
             head_h=0.75, head_tilt=rng.uniform(5, 35), tail=0.7, tail_w=0.035, tail_droop=55)
    coat = jitter_color(rng, (0.78, 0.6, 0.35), 0.06)
    probe = quad_canvas(length)
    tex = tex_solid(rng, probe, coat, 0.08)
    male = rng.random() < 0.4
    sp, geo = draw_quadruped(rng, length, q, tex)
    if male:  # mane around head and neck
        m, d = sp.new_mask()
        hx, hy = geo["head"]
        d.polygon(ellipse_pts(hx - length * 0.08, hy + length * 0.03, length * 0.22, length * 0.25, 0.3), fill=255)
        sp.paint(m, tex_solid(rng, sp, jitter_color(rng, (0.45, 0.28, 0.12), 0.12), 0.25, 20))
        m, d = sp.new_mask()
        d.polygon(
            ellipse_pts(hx + length * 0.05, hy + length * 0.02, length * 0.15, length * 0.11, geo["head_angle"]),
            fill=255,
        )
        sp.paint(m, coat)
    return finish_quadruped(
        sp, geo, length, ear_size=0.07, ear_color=coat, pointed_ears=False, tuft_size=0.045,
        tuft_color=(0.2, 0.12, 0.06),
    )


def leopard(rng, length):
    q = Quad(body_h=0.34, leg=0.45, leg_w=0.1, neck=0.25, neck_w=0.22, neck_angle=rng.uniform(-10, 30), head=0.26,
             head_h=0.8, head_tilt=rng.uniform(0, 30), tail=0.8, tail_w=0.04, tail_droop=rng.uniform(40, 95))
    ground, sp, geo = coat_and_body(
        rng,
        length,
        q,
        (0.82, 0.62, 0.3),
        0.06,
        lambda c, probe: tex_rosettes(rng, probe, length, c, (0.12, 0.09, 0.05)),
    )
    paint_belly(sp, geo, tex_rosettes(rng, sp, length, (0.9, 0.85, 0.72), (0.15, 0.1, 0.06), density=0.5), 0.25)
    return finish_quadruped(sp, geo, length, ear_size=0.06, ear_color=ground, pointed_ears=False)


def buffalo(rng, length):
    q = Quad(body_h=0.62, leg=0.42, leg_w=0.15, neck=0.2, neck_w=0.38, neck_angle=rng.uniform(-25, 15), head=0.34,
             head_h=0.65, head_tilt=rng.uniform(30, 70), tail=0.4, tail_w=0.03, slope=6)
    coat, sp, geo = coat_and_body(
        rng, length, q, (0.16, 0.13, 0.11), 0.2, lambda c, probe: tex_solid(rng, probe, c, 0.25, 10)
    )
    hx, hy = geo["head"]
    horns = [  # boss and horns sweeping down then up
        [
            (hx - length * 0.02, hy - length * 0.1),
            (hx - length * 0.02 + side * length * 0.14, hy - length * 0.02),
            (hx + side * length * 0.2, hy - length * 0.14),
        ]
        for side in (-1, 1)
    ]
    paint_strokes(sp, horns, length * 0.05, jitter_color(rng, (0.3, 0.27, 0.22), 0.1))
    return finish_quadruped(
        sp, geo, length, ear_size=0.08, ear_color=coat, pointed_ears=False, tuft_size=0.04, tuft_color=coat * 0.6,
        with_eye=False,
    )


def hyena(rng, length):
    q = Quad(body_h=0.45, leg=0.45, leg_w=0.1, front_leg=1.35, neck=0.3, neck_w=0.3, neck_angle=rng.uniform(0, 35),
             head=0.3, head_h=0.7, head_tilt=rng.uniform(15, 45), tail=0.28, tail_w=0.07, tail_droop=80,
             slope=rng.uniform(12, 20))
    ground, sp, geo = coat_and_body(
        rng, length, q, (0.6, 0.52, 0.38), 0.08, lambda c, probe: tex_spots(rng, probe, length, c, (0.2, 0.15, 0.1))
    )
    muzzle, draw = sp.new_mask()
    snout_x, snout_y = geo["snout"]
    draw.polygon(ellipse_pts(snout_x - length * 0.03, snout_y, length * 0.06, length * 0.05), fill=255)
    sp.paint(muzzle, (0.15, 0.12, 0.1))  # dark muzzle
    return finish_quadruped(sp, geo, length, ear_size=0.09, ear_color=ground * 0.8, pointed_ears=False)


def gorilla(rng, length):
    coat = jitter_color(rng, (0.1, 0.09, 0.09), 0.2)
    if rng.random() < 0.55:  # knuckle-walking
        q = Quad(body_h=0.7, leg=0.35, leg_w=0.2, front_leg=1.7, neck=0.08, neck_w=0.4, neck_angle=20, head=0.34,
                 head_h=0.9, head_tilt=20, tail=0.0, slope=rng.uniform(20, 30))
        probe = quad_canvas(length)
        sp, geo = draw_quadruped(rng, length, q, tex_solid(rng, probe, coat, 0.3, 14), far_shade=0.8)
        if rng.random() < 0.5:  # silverback saddle
            cx, cy, rx, ry, ang = geo["body"]
            m, d = sp.new_mask()
            d.polygon(ellipse_pts(cx - rx * 0.2, cy - ry * 0.35, rx * 0.5, ry * 0.45, ang), fill=255)
            sp.paint(np.asarray(m, np.float32) / 255 * 0.8, (0.55, 0.55, 0.55))
        m, d = sp.new_mask()
        hx, hy = geo["head"]
        d.polygon(ellipse_pts(hx + length * 0.06, hy + length * 0.03, length * 0.09, length * 0.1), fill=255)
        sp.paint(m, (0.05, 0.05, 0.05))
        return sp
    # sitting upright: broad shoulders, long arms
    sp = Sprite(length * 1.8, length * 2.0)
    cx, cy = length * 0.9, length * 1.1
    m, d = sp.new_mask()
    d.polygon(ellipse_pts(cx, cy, length * 0.42, length * 0.5), fill=255)
    d.polygon(ellipse_pts(cx, cy - length * 0.55, length * 0.2, length * 0.22), fill=255)
    d.polygon(ellipse_pts(cx, cy - length * 0.72, length * 0.1, length * 0.1), fill=255)  # crest
    for s in (-1, 1):
        limb(
            d,
            [
                (cx + s * length * 0.35, cy - length * 0.3),
                (cx + s * length * 0.55, cy + length * 0.15),
                (cx + s * length * 0.45, cy + length * 0.55),
            ],
            length * 0.2,
        )
        limb(
            d, [(cx + s * length * 0.2, cy + length * 0.35), (cx + s * length * 0.3, cy + length * 0.6)], length * 0.22
        )
    sp.paint(m, tex_solid(rng, sp, coat, 0.3, 14))
    m, d = sp.new_mask()
    d.polygon(ellipse_pts(cx, cy - length * 0.5, length * 0.12, length * 0.12), fill=255)
    sp.paint(m, (0.04, 0.04, 0.04))
    return sp


def monkey(rng, length):
    coat = jitter_color(rng, (0.5, 0.45, 0.38) if rng.random() < 0.6 else (0.45, 0.33, 0.2), 0.1)
    face = jitter_color(rng, (0.25, 0.2, 0.18), 0.1)
    if rng.random() < 0.5:  # walking on all fours, tail arched
        q = Quad(body_h=0.42, leg=0.55, leg_w=0.1, neck=0.15, neck_w=0.25, neck_angle=20, head=0.3, head_h=0.85,
                 head_tilt=10, tail=0.9, tail_w=0.05, tail_droop=-60 + rng.uniform(-20, 30), slope=5)
        probe = quad_canvas(length)
        sp, geo = draw_quadruped(rng, length, q, tex_solid(rng, probe, coat, 0.12))
        m, d = sp.new_mask()
        d.polygon(ellipse_pts(geo["snout"][0] - length * 0.04, geo["snout"][1], length * 0.07, length * 0.06), fill=255)
        sp.paint(m, face)
        return sp
    # sitting, tail hanging in an S curve
    sp = Sprite(length * 1.8, length * 2.2)
    cx, cy = length * 0.8, length * 1.0
    m, d = sp.new_mask()
    d.polygon(ellipse_pts(cx, cy, length * 0.28, length * 0.4, 0.15), fill=255)
    d.polygon(ellipse_pts(cx + length * 0.08, cy - length * 0.48, length * 0.17, length * 0.17), fill=255)
    limb(
        d,
        [
            (cx + length * 0.15, cy - length * 0.2),
            (cx + length * 0.35, cy + length * 0.15),
            (cx + length * 0.3, cy + length * 0.38),
        ],
        length * 0.09,
    )
    limb(d, [(cx - length * 0.05, cy + length * 0.3), (cx + length * 0.25, cy + length * 0.4)], length * 0.14)
    s = rng.choice([-1, 1])
    limb(
        d,
        [
            (cx - length * 0.2, cy + length * 0.3),
            (cx - length * 0.4, cy + length * 0.6),
            (cx - length * (0.4 + 0.2 * s), cy + length * 0.9),
            (cx - length * 0.35, cy + length * 1.15),
        ],
        length * 0.05,
    )
    sp.paint(m, tex_solid(rng, sp, coat, 0.12))
    m, d = sp.new_mask()
    d.polygon(ellipse_pts(cx + length * 0.15, cy - length * 0.46, length * 0.09, length * 0.1), fill=255)
    sp.paint(m, face)
    return sp


def crocodile(rng, length):
    sp = Sprite(length * 1.4, length * 0.6)
    y = length * 0.3
    x0 = length * 0.05
    skin = jitter_color(rng, (0.32, 0.35, 0.2), 0.12)
    m, d = sp.new_mask()
    # tail (tapering), body, flat head with long snout
    d.polygon(
        [
            (x0, y - length * 0.01),
            (x0 + length * 0.5, y - length * 0.06),
            (x0 + length * 0.5, y + length * 0.06),
            (x0, y + length * 0.015),
        ],
        fill=255,
    )
    d.polygon(ellipse_pts(x0 + length * 0.72, y, length * 0.26, length * 0.075), fill=255)
    jaw = rng.uniform(0, 0.06) if rng.random() < 0.3 else 0.0
    d.polygon(
        [
            (x0 + length * 0.92, y - length * 0.06),
            (x0 + length * 1.28, y - length * 0.02 - jaw * length),
            (x0 + length * 1.3, y + length * 0.0),
            (x0 + length * 0.92, y + length * 0.05),
        ],
        fill=255,
    )
    if jaw:
        d.polygon(
            [
                (x0 + length * 0.95, y + length * 0.02),
                (x0 + length * 1.27, y + length * 0.03 + jaw * length * 0.4),
                (x0 + length * 0.95, y + length * 0.06),
            ],
            fill=255,
        )
    for lx in (0.58, 0.86):  # short splayed legs
        limb(
            d,
            [
                (x0 + length * lx, y + length * 0.04),
                (x0 + length * (lx - 0.05), y + length * 0.1),
                (x0 + length * (lx + 0.02), y + length * 0.13),
            ],
            length * 0.04,
        )
    tex = tex_solid(rng, sp, skin, 0.12)
    bands = (np.sin(sp.xx / (length * 0.035) * np.pi) > 0.3).astype(np.float32) * (np.abs(sp.yy - y) < length * 0.05)
    tex = tex * (1 - 0.35 * bands[..., None])
    sp.paint(m, tex)
    m, d = sp.new_mask()  # eye bump
    d.ellipse([x0 + length * 0.98, y - length * 0.085, x0 + length * 1.03, y - length * 0.045], fill=255)
    sp.paint(m, skin * 0.6)
    return sp


def bird(rng, length):
    palettes = [
        (0.95, 0.95, 0.93),
        (0.08, 0.08, 0.1),
        (0.2, 0.35, 0.7),
        (0.55, 0.4, 0.25),
        (0.7, 0.25, 0.15),
        (0.5, 0.55, 0.5),
    ]
    col = jitter_color(rng, palettes[rng.integers(len(palettes))], 0.08)
    wing = col * rng.uniform(0.6, 1.0)
    sp = Sprite(length * 1.6, length * 1.4)
    cx, cy = length * 0.8, length * 0.7
    m, d = sp.new_mask()
    d.polygon(ellipse_pts(cx, cy, length * 0.32, length * 0.16, -0.15), fill=255)
    d.polygon(ellipse_pts(cx + length * 0.32, cy - length * 0.14, length * 0.11, length * 0.1), fill=255)
    d.polygon(
        [
            (cx - length * 0.28, cy - length * 0.02),
            (cx - length * 0.55, cy - length * 0.06),
            (cx - length * 0.52, cy + length * 0.08),
        ],
        fill=255,
    )
    flying = rng.random() < 0.45
    if not flying:
        for lx in (-0.03, 0.07):
            limb(
                d,
                [(cx + length * lx, cy + length * 0.12), (cx + length * lx, cy + length * 0.45)],
                max(1.0, length * 0.025),
            )
    sp.paint(m, col)
    m, d = sp.new_mask()
    d.polygon(
        [
            (cx + length * 0.4, cy - length * 0.17),
            (cx + length * 0.62, cy - length * 0.12),
            (cx + length * 0.4, cy - length * 0.1),
        ],
        fill=255,
    )
    sp.paint(m, (0.85, 0.6, 0.1) if rng.random() < 0.5 else (0.1, 0.1, 0.1))
    m, d = sp.new_mask()
    if flying:
        up = rng.uniform(-1, 1)
        d.polygon(
            [
                (cx - length * 0.12, cy - length * 0.05),
                (cx + length * 0.15, cy - length * 0.05),
                (cx - length * 0.1, cy - length * (0.1 + 0.5 * up)),
            ],
            fill=255,
        )
    else:
        d.polygon(ellipse_pts(cx - length * 0.05, cy - length * 0.01, length * 0.22, length * 0.09, -0.2), fill=255)
    sp.paint(m, wing)
    return sp


def person(rng, length):
    """L is the standing height."""
    sp = Sprite(length * 0.8, length * 1.1)
    cx, top = length * 0.4, length * 0.05
    skin = jitter_color(rng, (0.35, 0.22, 0.14) if rng.random() < 0.7 else (0.8, 0.62, 0.5), 0.1)
    shirt = jitter_color(rng, rng.uniform(0.05, 0.95, 3), 0.05)
    trousers = jitter_color(
        rng, rng.choice([(0.2, 0.25, 0.4), (0.35, 0.3, 0.2), (0.15, 0.15, 0.15), (0.5, 0.45, 0.35)]), 0.1
    )
    head_r = length * 0.065
    neck_y = top + 2 * head_r
    hip_y = neck_y + length * 0.36
    step = rng.uniform(-0.15, 0.15)
    m, d = sp.new_mask()  # legs
    for s in (-1, 1):
        limb(
            d,
            [
                (cx + s * length * 0.04, hip_y),
                (cx + s * step * length * 0.6, hip_y + length * 0.24),
                (cx + s * step * length, top + length * 0.97),
            ],
            length * 0.075,
        )
    sp.paint(m, trousers)
    m, d = sp.new_mask()  # torso and arms
    d.polygon(
        [
            (cx - length * 0.1, neck_y + length * 0.02),
            (cx + length * 0.1, neck_y + length * 0.02),
            (cx + length * 0.08, hip_y + length * 0.03),
            (cx - length * 0.08, hip_y + length * 0.03),
        ],
        fill=255,
    )
    for s in (-1, 1):
        a = rng.uniform(-0.5, 0.9)
        elbow = (cx + s * length * 0.12 + math.sin(a) * length * 0.05 * s, neck_y + length * 0.18)
        limb(
            d,
            [
                (cx + s * length * 0.1, neck_y + length * 0.05),
                elbow,
                (elbow[0] + math.sin(a) * length * 0.1, elbow[1] + length * 0.15),
            ],
            length * 0.055,
        )
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
    "giraffe": giraffe,
    "person": person,
    "zebra": zebra,
    "elephant": elephant,
    "impala": impala,
    "monkey": monkey,
    "lion": lion,
    "leopard": leopard,
    "crocodile": crocodile,
    "buffalo": buffalo,
    "hyena": hyena,
    "bird": bird,
    "gorilla": gorilla,
}


# Body length range of each class (a person's: standing height), in pixels of a 320-pixel-wide image
# at the nearest distance; farther animals are drawn smaller.
SIZE = {
    "giraffe": (55, 80), "person": (60, 95), "zebra": (55, 80), "elephant": (80, 115),
    "impala": (42, 62), "monkey": (26, 40), "lion": (52, 75), "leopard": (45, 68),
    "crocodile": (75, 115), "buffalo": (62, 85), "hyena": (44, 62), "bird": (14, 30),
    "gorilla": (44, 62),
}


HERD = {
    "zebra": 5,
    "impala": 5,
    "buffalo": 4,
    "elephant": 3,
    "giraffe": 3,
    "bird": 4,
    "monkey": 3,
    "person": 3,
    "lion": 3,
    "hyena": 3,
    "gorilla": 2,
    "leopard": 1,
    "crocodile": 2,
}


assert set(DRAW) == set(CLASSES) == set(SIZE) == set(HERD)


def render_sprite(rng, cls: str, length_px: float) -> np.ndarray:
    length = max(6.0, length_px) * SUPERSAMPLE
    sp = DRAW[cls](rng, length)
    out = sp.finish(rng)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)
