"""1-D k-means (Lloyd's algorithm on sorted values): weight sharing clusters a layer's weights
with it (:mod:`wildlib.share`), and the data check clusters box sizes and aspect ratios into
anchors (:mod:`wildlib.fit`)."""

from __future__ import annotations

import numpy as np

INITS = ("linear", "density", "random")


def kmeans_1d(values: np.ndarray, k: int, init: str = "linear", iters: int = 20, seed: int = 0):
    """Lloyd's k-means on a 1-D array in O(n) per step after one sort: in sorted order every
    cluster is a contiguous run, so assignment is a ``searchsorted`` on the midpoints between
    centroids and the update is a ``reduceat`` over the runs.  Returns (centroids, labels)."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    order = np.argsort(v, kind="stable")
    s = v[order]
    k = int(min(k, np.unique(s).size))
    if init == "linear":
        c = np.linspace(s[0], s[-1], k)
    elif init == "density":  # equal-probability points of the weights' CDF
        c = np.quantile(s, (np.arange(k) + 0.5) / k)
    elif init == "random":  # Forgy: k distinct weights drawn at random
        c = np.sort(np.random.default_rng(seed).choice(np.unique(s), size=k, replace=False))
    else:
        raise ValueError(f"init must be one of {INITS}, not {init!r}")
    for _ in range(iters):
        c = np.sort(c)
        bounds = np.searchsorted(s, (c[1:] + c[:-1]) / 2)  # start of clusters 1..k-1
        starts = np.concatenate([[0], bounds])
        sizes = np.diff(np.concatenate([starts, [s.size]]))
        nonempty = sizes > 0
        sums = np.add.reduceat(s, np.minimum(starts, s.size - 1))
        new = c.copy()
        new[nonempty] = sums[nonempty] / sizes[nonempty]
        if np.allclose(new, c, rtol=0, atol=1e-12):
            c = new
            break
        c = new
    c = np.sort(c)
    labels_sorted = np.searchsorted((c[1:] + c[:-1]) / 2, s, side="right")
    labels = np.empty_like(labels_sorted)
    labels[order] = labels_sorted
    return c.astype(np.float32), labels.astype(np.int64)
