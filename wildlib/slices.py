"""Tiles of large images and the merge of their detections, in numpy alone: shared by the
notebooks' sliced detection (:mod:`wildlib.tiles`, on Detectron2) and the deployable's command
(:mod:`wildlib.detect`, on ONNX Runtime alone, without torch)."""

from __future__ import annotations

import numpy as np


def tile_grid(height: int, width: int, size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` of the tiles covering an image; one tile if it fits in one."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"TILE needs a size > 0 and 0 <= overlap < size, got size={size}, overlap={overlap}")

    def starts(n):
        if n <= size:
            return [0]
        out = list(range(0, n - size, size - overlap))
        return out + [n - size]

    return [(x, y, min(x + size, width), min(y + size, height)) for y in starts(height) for x in starts(width)]


def merge_slices(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, threshold: float = 0.5):
    """The detections of overlapping tiles merged into one set (greedy non-maximum *merging*, as
    SAHI's GREEDYNMM): highest score first, every box of the same class whose intersection covers
    more than ``threshold`` of the smaller of the two boxes joins it, and the group becomes the union
    of its boxes at the highest score.  An animal cut by one tile's edge and whole in the next is one
    box, the whole one: plain NMS keeps both, as the cut box's IoU with the whole one is small.
    Returns (boxes, scores, classes), highest score first."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores), kind="stable")
    used = np.zeros(len(order), dtype=bool)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    out_b, out_s, out_c = [], [], []
    for i in order:
        if used[i]:
            continue
        cand = order[~used[order] & (classes[order] == classes[i])]
        b = boxes[cand]
        inter = (np.clip(np.minimum(b[:, 2], boxes[i, 2]) - np.maximum(b[:, 0], boxes[i, 0]), 0, None)
                 * np.clip(np.minimum(b[:, 3], boxes[i, 3]) - np.maximum(b[:, 1], boxes[i, 1]), 0, None))
        smaller = np.minimum(area[cand], area[i])
        group = cand[(inter > threshold * smaller) | (cand == i)]
        used[group] = True
        g = boxes[group]
        out_b.append([g[:, 0].min(), g[:, 1].min(), g[:, 2].max(), g[:, 3].max()])
        out_s.append(scores[i])
        out_c.append(classes[i])
    return (np.asarray(out_b, dtype=np.float32).reshape(-1, 4), np.asarray(out_s, dtype=np.float32),
            np.asarray(out_c, dtype=np.int64))
