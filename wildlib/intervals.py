"""Image-level bootstrap intervals of COCO AP50, and paired ones for the difference of two models.

pycocotools matches each image's detections to its ground truth once (``COCOeval.evaluate`` at
IoU 0.5, every area, the reference's ``maxDets``); what it keeps per image and class — the kept
detections' scores, whether each matched, how many ground-truth boxes count — is all AP50 needs.
A bootstrap sample draws the images with replacement and recomputes AP50 from those per-image
pieces with COCO's own accumulation (101-point interpolated precision, averaged over the classes
that have ground truth in the sample).  An image drawn k times weighs k: the same as
concatenating k copies, up to the order of tied scores across images.

Two models scored on the **same** resampled images give a paired difference: its interval is
far narrower than either AP50's, since both models meet the same easy and hard images.

A bootstrap interval's ends are themselves estimates: with ``SAMPLES`` draws a 95% end moves by a
few hundredths of AP50 from one set of draws to the next (its Monte Carlo error, :func:`quantile_mcse`,
recorded beside every paired interval).  A non-inferiority verdict whose bound lies that close to
the tolerance would be decided by the draws, not the images: :func:`non_inferiority` draws again,
four times as many at a time, until the bound is clear of the tolerance or ``MAX_SAMPLES`` are spent.

Why written here: pycocotools has no bootstrap, and re-running ``COCOeval`` per sample (1,000
samples x 400 images) would match boxes 1,000 times over; matching once and resampling the
per-image pieces costs a fraction of a second per model.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass

import numpy as np

SAMPLES = 1000   # bootstrap samples of every interval
LEVEL = 0.95     # two-sided
SEED = 0         # the samples depend on this and the number of images only: every model gets the same
REC_THRS = np.linspace(0.0, 1.00, 101)  # COCO's recall thresholds
MARGIN_MCSE = 2.0      # a non-inferiority bound nearer the tolerance than this many Monte Carlo errors ...
MAX_SAMPLES = 16_000   # ... is drawn again with 4x the samples, up to this many (non_inferiority)


@dataclass
class Matched:
    """One model's detections on one split, matched once: per class, the detections sorted the way
    COCO sorts them (score, descending, stable over images in order) with their image index and
    true/false positive flags; per class and image, the ground-truth boxes that count."""

    image_ids: list
    det_image: list[np.ndarray]   # per class: image index of each detection
    det_tp: list[np.ndarray]      # per class: 1 for a true positive
    det_fp: list[np.ndarray]      # per class: 1 for a false positive (ignored detections: 0 and 0)
    npos: np.ndarray              # (classes, images): ground-truth boxes that count

    @property
    def num_images(self) -> int:
        return len(self.image_ids)


def match(gt, detections: list[dict], max_dets: int = 100) -> Matched:
    """Match ``detections`` (COCO result dicts) to ``gt`` (a pycocotools ``COCO``) once, at IoU 0.5."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
        dt = gt.loadRes(detections) if detections else COCO()
        if not detections:
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.iouThrs = np.array([0.5])
        ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]
        ev.params.maxDets = [int(max_dets)]
        ev.evaluate()
    cats, imgs = ev.params.catIds, ev.params.imgIds
    npos = np.zeros((len(cats), len(imgs)), np.int64)
    det_image, det_tp, det_fp = [], [], []
    for k in range(len(cats)):
        scores, image, tp, fp = [], [], [], []
        for i in range(len(imgs)):
            e = ev.evalImgs[k * len(imgs) + i]  # area "all" is the only range: index k*A*I + a*I + i
            if e is None:
                continue
            npos[k, i] = int(np.count_nonzero(e["gtIgnore"] == 0))
            s = np.asarray(e["dtScores"][:max_dets])
            m = e["dtMatches"][0, :max_dets] > 0
            ig = e["dtIgnore"][0, :max_dets] > 0
            scores.append(s), image.append(np.full(len(s), i)), tp.append(m & ~ig), fp.append(~m & ~ig)
        if scores:
            s, image, tp, fp = (np.concatenate(a) for a in (scores, image, tp, fp))
            order = np.argsort(-s, kind="mergesort")  # as COCOeval.accumulate sorts
            det_image.append(image[order]), det_tp.append(tp[order].astype(np.int64))
            det_fp.append(fp[order].astype(np.int64))
        else:
            det_image.append(np.zeros(0, np.int64)), det_tp.append(np.zeros(0, np.int64))
            det_fp.append(np.zeros(0, np.int64))
    return Matched(list(imgs), det_image, det_tp, det_fp, npos)


def ap50(m: Matched, weights: np.ndarray | None = None) -> float:
    """COCO AP50 (percent) with each image counted ``weights[i]`` times (default once each).
    Classes without ground truth in the sample are left out, as COCO does; NaN if none has any."""
    w = np.ones(m.num_images, np.int64) if weights is None else np.asarray(weights)
    aps = []
    for k in range(len(m.det_tp)):
        npig = float(m.npos[k] @ w)
        if npig == 0:
            continue
        dw = w[m.det_image[k]]
        tps, fps = np.cumsum(m.det_tp[k] * dw), np.cumsum(m.det_fp[k] * dw)
        rc = tps / npig
        pr = tps / (tps + fps + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr  # precision envelope, as COCO
        idx = np.searchsorted(rc, REC_THRS, side="left")
        q = np.zeros(len(REC_THRS))
        ok = idx < len(pr)
        q[ok] = pr[idx[ok]]
        aps.append(q.mean())
    return float(np.mean(aps) * 100) if aps else float("nan")


def ap50_many(m: Matched, weights: np.ndarray, chunk: int = 128) -> np.ndarray:
    """:func:`ap50` for each row of ``weights`` (``(samples, images)`` counts, :func:`resamples`) at
    once: the bootstrap's inner loop as array operations, ``chunk`` rows at a time (memory).  Equal
    to calling :func:`ap50` row by row up to float rounding in the mean over classes (tested)."""
    W = np.atleast_2d(np.asarray(weights))
    S = W.shape[0]
    total, count = np.zeros(S), np.zeros(S)
    for k in range(len(m.det_tp)):
        positives = W @ m.npos[k]
        if not positives.any():
            continue
        tp, fp, image = m.det_tp[k], m.det_fp[k], m.det_image[k]
        for a in range(0, S, chunk):
            n = positives[a:a + chunk].astype(np.float64)
            q = _precision_at_recalls(W[a:a + chunk][:, image], tp, fp, n)
            has = n > 0
            total[a:a + chunk] += np.where(has, q.mean(axis=1), 0.0)
            count[a:a + chunk] += has
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count * 100, np.nan)


def _precision_at_recalls(dw: np.ndarray, tp: np.ndarray, fp: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """COCO's interpolated precision at ``REC_THRS`` for each row: ``dw`` (rows, detections) is how
    often each detection's image was drawn, ``positives`` the drawn ground-truth boxes per row."""
    rows, d = dw.shape
    if d == 0:
        return np.zeros((rows, len(REC_THRS)))
    tps, fps = np.cumsum(tp * dw, axis=1), np.cumsum(fp * dw, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rc = tps / positives[:, None]
    pr = tps / (tps + fps + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # the precision envelope, as COCO
    idx = np.array([np.searchsorted(r, REC_THRS, side="left") for r in rc])  # per row: shifting rows would round
    return np.where(idx < d, np.take_along_axis(pr, np.minimum(idx, d - 1), axis=1), 0.0)


def resamples(num_images: int, samples: int = SAMPLES, seed: int = SEED) -> np.ndarray:
    """``(samples, num_images)`` counts: how often each image is drawn in each bootstrap sample.
    Depends only on the arguments: two models (two runs, two machines) get the same samples."""
    rng = np.random.default_rng([seed, num_images])
    return rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=samples)


def _interval(values: np.ndarray, level: float = LEVEL) -> list[float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return [float("nan"), float("nan")]
    a = (1 - level) / 2
    return [float(np.quantile(values, a)), float(np.quantile(values, 1 - a))]


def quantile_mcse(values: np.ndarray, q: float) -> float:
    """The Monte Carlo standard error of the ``q``-quantile of ``values`` (bootstrap draws): half
    the distance between the order statistics at ranks ``B q -+ sqrt(B q (1 - q))``, the binomial
    spread of how many draws fall below the quantile (distribution-free; no density to estimate)."""
    v = np.sort(np.asarray(values, float)[np.isfinite(values)])
    n = len(v)
    if n < 2:
        return float("nan")
    s = math.sqrt(n * q * (1 - q))
    lo, hi = (min(max(int(r), 0), n - 1) for r in (math.floor(n * q - s), math.ceil(n * q + s)))
    return float((v[hi] - v[lo]) / 2)


def _ends_mcse(values: np.ndarray, level: float = LEVEL) -> list[float]:
    a = (1 - level) / 2
    return [quantile_mcse(values, a), quantile_mcse(values, 1 - a)]


def _check_same_images(a: Matched, b: Matched) -> None:
    if a.image_ids != b.image_ids:
        raise ValueError("a paired interval needs both models scored on the same images, in the same order")


def interval(m: Matched, samples: int = SAMPLES, seed: int = SEED, level: float = LEVEL) -> dict:
    """AP50 on every image and its bootstrap interval: ``{"AP50", "ci95", "se"}``."""
    boot = ap50_many(m, resamples(m.num_images, samples, seed))
    return {"AP50": ap50(m), "ci95": _interval(boot, level), "se": float(np.nanstd(boot, ddof=1))}


def paired(variant: Matched, reference: Matched, samples: int = SAMPLES, seed: int = SEED,
           level: float = LEVEL) -> dict:
    """``delta`` = variant AP50 - reference AP50 and its paired bootstrap interval (both models on
    the same resampled images): ``{"delta", "ci95", "se", "ci95_mcse", "samples"}`` (``ci95_mcse``:
    the Monte Carlo error of each end).  Negative: the variant is worse."""
    _check_same_images(variant, reference)
    w = resamples(variant.num_images, samples, seed)
    boot = ap50_many(variant, w) - ap50_many(reference, w)
    return {"delta": ap50(variant) - ap50(reference), "ci95": _interval(boot, level),
            "se": float(np.nanstd(boot, ddof=1)), "ci95_mcse": _ends_mcse(boot, level), "samples": int(samples)}


def paired_mean(pairs: list[tuple[Matched, Matched]], samples: int = SAMPLES, seed: int = SEED,
                level: float = LEVEL, over_seeds: bool = False) -> dict:
    """The mean over ``pairs`` (variant, reference) — one pair per training seed — of the paired
    delta, with its bootstrap interval: every sample resamples the same images for every pair, so
    the interval is of the seed-mean delta over images, the seeds held fixed.  ``over_seeds``: a
    two-level bootstrap, each sample also drawing as many seeds as there are pairs, with
    replacement, so that the spread between seeds widens the interval too (with one pair it is the
    same interval).  ``{"delta", "ci95", "se", "ci95_mcse", "samples", "over_seeds"}``."""
    for v, r in pairs:
        _check_same_images(v, r)
        _check_same_images(v, pairs[0][0])
    n = pairs[0][0].num_images
    w = resamples(n, samples, seed)
    per_seed = np.array([ap50_many(v, w) - ap50_many(r, w) for v, r in pairs])  # (pairs, samples)
    if over_seeds:
        drawn = np.random.default_rng([seed, n, len(pairs)]).integers(0, len(pairs), size=(samples, len(pairs)))
        boot = per_seed[drawn, np.arange(samples)[:, None]].mean(axis=1)
    else:
        boot = per_seed.mean(axis=0)
    return {"delta": float(np.mean([ap50(v) - ap50(r) for v, r in pairs])), "ci95": _interval(boot, level),
            "se": float(np.nanstd(boot, ddof=1)), "ci95_mcse": _ends_mcse(boot, level), "samples": int(samples),
            "over_seeds": bool(over_seeds)}


def non_inferiority(draw, tolerance: float, samples: int = SAMPLES, max_samples: int = MAX_SAMPLES) -> dict:
    """A paired difference and both verdicts, the non-inferiority bound resolved against the draws'
    own noise: ``draw(samples)`` (:func:`paired` or :func:`paired_mean` with that many samples) is
    called again with 4x the samples while the bound (the delta's lower end) lies within
    ``MARGIN_MCSE`` Monte Carlo errors of ``-tolerance``, up to ``max_samples``.  The earlier draws
    are the first rows of the later ones (:func:`resamples` draws row by row): more draws shrink
    the bound's Monte Carlo error (the bound itself may move either way), and each call draws anew.
    ``{**draw, **verdicts, "bound_clear"}``: ``bound_clear`` False when ``max_samples`` still left
    the bound within that margin (the verdict then is the best estimate, not a clear one)."""
    while True:
        d = draw(samples)
        mcse = d["ci95_mcse"][0]  # 0 (identical models) or NaN (no interval): nothing more to draw
        clear = not mcse > 0 or bool(abs(d["ci95"][0] + tolerance) >= MARGIN_MCSE * mcse)
        if clear or samples >= max_samples:
            return {**d, **verdicts(d, tolerance), "bound_clear": clear}
        samples = min(4 * samples, max_samples)


def verdicts(delta: dict, tolerance: float) -> dict:
    """Both verdicts on a paired difference: *within* (the drop's point estimate <= tolerance)
    and *non-inferior* (the drop's 95% upper end, i.e. the delta's lower end, <= tolerance: the
    standard non-inferiority test)."""
    return {"within_tolerance": bool(delta["delta"] >= -tolerance),
            "non_inferior": bool(delta["ci95"][0] >= -tolerance)}
