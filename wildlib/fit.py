"""Settings fitted to the data: what stage 00 suggests and stage 01 applies (the user's
``CFG_OVERRIDES`` and parameters win).  Each rule looks at the training and validation boxes at
the model's input scale and changes a setting only where the config's value does not fit them, so
data the defaults were made for (the embedded savanna set) keeps them:

* **input size**: images larger than the input are not shrunk when that makes the median object
  small (under ``SMALL_OBJECT_PX`` at the input): the input follows their native size, up to
  ``INPUT_CAP``; a median object still under the smallest anchor asks for a larger input;
* **anchors**: sizes and aspect ratios by k-means over the boxes' shapes at the input scale, when
  the config's anchors fit fewer than ``ANCHOR_FIT`` of the boxes and the fitted ones fit more.
  Fit and threshold are YOLOv5's auto-anchor check (``utils/autoanchor.py``: an anchor fits a box
  when neither side differs by more than ``ANCHOR_RATIO`` times; refit under 98% of boxes fitted);
* **sampling**: ROIs sampled per training image and RPN proposals kept, scaled to boxes per image;
* **schedule**: iterations follow the training set's size (``EPOCHS`` passes, between
  ``MIN_ITER`` and ``MAX_ITER_CAP``); the LR steps stay at the same fractions of it.
"""

from __future__ import annotations

import math

import numpy as np

from .cluster import kmeans_1d
from .data import SMALL_OBJECT_PX, input_scale, sizes_at_input

INPUT_CAP = 800  # the largest short side an input is raised to
ANCHOR_RATIO, ANCHOR_FIT = 4.0, 0.98  # YOLOv5's auto-anchor: side ratio within 4x; refit under 98% fitted
POSITIVES_PER_BOX = 6  # sampled positive ROIs wanted per ground-truth box
PROPOSALS_PER_BOX = 10  # RPN proposals kept per ground-truth box (the most crowded image)
EPOCHS = 21  # passes over the training set: the savanna set's 1200 iterations at batch 8
MIN_ITER, MAX_ITER_CAP, ITER_STEP = 600, 6000, 50


def _px(x: float) -> int:
    return int(round(x))


def box_shapes(records, min_size: int, max_size: int) -> np.ndarray:
    """Every box's (width, height) in pixels once its image is resized to the model's input."""
    out = [(input_scale(r["height"], r["width"], min_size, max_size) * (a["bbox"][2] - a["bbox"][0]),
            input_scale(r["height"], r["width"], min_size, max_size) * (a["bbox"][3] - a["bbox"][1]))
           for r in records for a in r["annotations"]]
    return np.asarray(out, float).reshape(-1, 2)


def anchor_shapes(sizes, ratios) -> np.ndarray:
    """Detectron2's anchors as (width, height): every size (sqrt of the area) at every aspect
    ratio (height / width)."""
    flat = [float(s) for level in sizes for s in (level if isinstance(level, (list, tuple)) else [level])]
    rs = [float(r) for level in ratios for r in (level if isinstance(level, (list, tuple)) else [level])]
    return np.asarray([(s / math.sqrt(r), s * math.sqrt(r)) for s in flat for r in rs], float)


def anchor_coverage(wh: np.ndarray, sizes, ratios, ratio: float = ANCHOR_RATIO) -> float:
    """The share of boxes that some anchor fits: width and height each within ``ratio`` times
    the anchor's (YOLOv5's best possible recall)."""
    if not len(wh):
        return 1.0
    r = wh[:, None, :] / anchor_shapes(sizes, ratios)[None]
    worst = np.minimum(r, 1 / r).min(2)  # per box and anchor: the side that differs most
    return float((worst.max(1) > 1 / ratio).mean())


def _centres(x: np.ndarray, k: int) -> np.ndarray:
    """``k`` sorted k-means centres of 1-D data, started at its quantiles (deterministic); fewer
    distinct values than ``k`` repeat the largest centre."""
    c, _ = kmeans_1d(x, k, init="density", iters=50)
    return np.pad(c.astype(float), (0, k - c.size), mode="edge")


def fitted_anchors(wh: np.ndarray, levels: int, n_ratios: int = 3) -> tuple[list, list]:
    """Anchor sizes (one per FPN level, smallest first) and aspect ratios from k-means over the
    boxes' log sizes and log aspect ratios."""
    size = np.sqrt(wh.prod(1))
    sizes = np.exp(_centres(np.log(size), levels))
    ratios = np.exp(_centres(np.log(wh[:, 1] / wh[:, 0]), n_ratios))
    return [[float(round(s, 1))] for s in sizes], [[float(round(r, 2)) for r in ratios]]


def training_iterations(n_train: int, ims_per_batch: int, epochs: float = EPOCHS) -> int:
    """``epochs`` passes over ``n_train`` images at ``ims_per_batch``, in steps of ``ITER_STEP``,
    between ``MIN_ITER`` and ``MAX_ITER_CAP``: 1200 for the savanna set's 461 images at batch 8.
    Introduced in notebook 01_train_baseline (its set-up cell, ``MAX_ITER = 0``)."""
    it = ITER_STEP * round(epochs * n_train / ims_per_batch / ITER_STEP)
    return int(min(MAX_ITER_CAP, max(MIN_ITER, it)))


def suggested_settings(records_by_split: dict[str, list[dict]], cfg, ims_per_batch: int | None = None) -> dict:
    """Detectron2 settings fitted to this data (the rules of this module's docstring):
    ``{"overrides": {key: value}, "reasons": [...], "schedule": {...}}``; every change comes with
    its reason.  ``ims_per_batch``: stage 01's batch, for the schedule (default: the config's).
    Introduced in notebook 00, "Checks"; applied by notebook 01."""
    recs = [r for rs in records_by_split.values() for r in rs]
    over, reasons = {}, []
    if not recs:
        return {"overrides": over, "reasons": reasons, "schedule": {}}
    per_image = [len(r["annotations"]) for r in recs]
    max_boxes, mean_boxes = max(per_image), float(np.mean(per_image))
    if max_boxes > cfg.TEST.DETECTIONS_PER_IMAGE:
        over["TEST.DETECTIONS_PER_IMAGE"] = int(50 * math.ceil(1.2 * max_boxes / 50))
        reasons.append(f"up to {max_boxes} boxes in an image: keep {over['TEST.DETECTIONS_PER_IMAGE']} detections")
    _input_size(recs, cfg, over, reasons)
    lo, hi = over.get("INPUT.MIN_SIZE_TEST", int(cfg.INPUT.MIN_SIZE_TEST)), over.get("INPUT.MAX_SIZE_TEST",
                                                                                       int(cfg.INPUT.MAX_SIZE_TEST))
    _anchors(box_shapes(recs, lo, hi), cfg, over, reasons)
    _sampling(mean_boxes, max_boxes, cfg, over, reasons)
    n_train = len(records_by_split.get("train", []))
    batch = int(ims_per_batch or cfg.SOLVER.IMS_PER_BATCH)
    schedule = {"train_images": n_train, "ims_per_batch": batch, "epochs": EPOCHS,
                "max_iter": training_iterations(n_train, batch) if n_train else None}
    return {"overrides": over, "reasons": reasons, "schedule": schedule}


def _input_size(recs, cfg, over: dict, reasons: list) -> None:
    """Native resolution for images the input would shrink until objects are small; a larger
    input where the median object is under the smallest anchor."""
    lo, hi = int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST)
    anchor = float(min(min(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES))
    short = float(np.median([min(r["height"], r["width"]) for r in recs]))
    size = sizes_at_input(recs, lo, hi)  # the splits that choose (train + valid), not test
    median = float(np.median(size)) if size.size else math.inf
    target, why = lo, ""
    if short > lo and median < SMALL_OBJECT_PX:
        target = min(short, INPUT_CAP)
        why = (f"images of {short:.0f} px (short side, median) shrunk to {lo} px leave the median object "
               f"of train + valid {median:.1f} px: native resolution")
    if median * target / lo < anchor:
        target = max(target, min(lo * anchor / median, INPUT_CAP))
        why = f"median object {median:.1f} px at the {lo}-{hi} px input, under the smallest anchor ({anchor:g} px)"
    new_lo = _px(target)
    if not why or new_lo <= lo:
        return
    f = new_lo / lo
    over.update({"INPUT.MIN_SIZE_TEST": new_lo, "INPUT.MAX_SIZE_TEST": _px(hi * f),
                 "INPUT.MIN_SIZE_TRAIN": [_px(s * f) for s in cfg.INPUT.MIN_SIZE_TRAIN],
                 "INPUT.MAX_SIZE_TRAIN": _px(cfg.INPUT.MAX_SIZE_TRAIN * f)})
    reasons.append(f"{why}: input {new_lo}-{over['INPUT.MAX_SIZE_TEST']} px")


def _anchors(wh: np.ndarray, cfg, over: dict, reasons: list) -> None:
    sizes, ratios = cfg.MODEL.ANCHOR_GENERATOR.SIZES, cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS
    have = anchor_coverage(wh, sizes, ratios)
    if have >= ANCHOR_FIT or len(wh) < 2 * len(sizes):
        return
    new_sizes, new_ratios = fitted_anchors(wh, len(sizes), len(ratios[0]))
    got = anchor_coverage(wh, new_sizes, new_ratios)
    if got > have:
        over.update({"MODEL.ANCHOR_GENERATOR.SIZES": new_sizes, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": new_ratios})
        reasons.append(f"the config's anchors fit {have:.0%} of the boxes (sides within {ANCHOR_RATIO:g}x); anchors "
                       f"fitted to the boxes (sizes {[s[0] for s in new_sizes]}, ratios {new_ratios[0]}) fit {got:.0%}")


def _sampling(mean_boxes: float, max_boxes: int, cfg, over: dict, reasons: list) -> None:
    roi = int(cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE)
    if mean_boxes <= 0:
        return  # no boxes: nothing to scale to
    want = 2 ** math.ceil(math.log2(POSITIVES_PER_BOX * mean_boxes / cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION))
    if want > roi:
        over["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"] = int(min(want, 512))
        reasons.append(f"{mean_boxes:.1f} boxes per image: {over['MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE']} sampled "
                       f"ROIs per training image ({roi} before)")
    post = 100 * math.ceil(PROPOSALS_PER_BOX * max_boxes / 100)
    if post > cfg.MODEL.RPN.POST_NMS_TOPK_TEST:
        for split in ("TRAIN", "TEST"):
            over[f"MODEL.RPN.POST_NMS_TOPK_{split}"] = max(post, int(getattr(cfg.MODEL.RPN, f"POST_NMS_TOPK_{split}")))
            over[f"MODEL.RPN.PRE_NMS_TOPK_{split}"] = max(2 * post, int(getattr(cfg.MODEL.RPN, f"PRE_NMS_TOPK_{split}")))
        reasons.append(f"up to {max_boxes} boxes in an image: the RPN keeps {post} proposals after NMS")
