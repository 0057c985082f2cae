"""Sliders to play with, where playing teaches: each function draws the static figure of its
default (returned, to save and to keep in a papermill run, its HTML and the tests: nothing here
needs a browser) and returns beside it an ipywidgets box whose controls redraw below it in
JupyterLab.  Everything a control changes is computed ahead or cheaply: no model is evaluated.

* :func:`sparsity_slider` (notebook 02): per-group sparsity under global L1 against LAMP at any
  global target, and the frontier sweep's AP50 there where the sweep exists;
* :func:`bits_slider` (notebook 03): one layer's weights with its k-means shared values and the
  bytes its codes and codebook take, at any number of bits;
* :func:`detections_viewer` (notebook 05): a variant's stored `test` detections above a score
  threshold, on the same images for every variant.
"""

from __future__ import annotations

from pathlib import Path

import ipywidgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display
from PIL import Image

from . import plots
from .cluster import INITS, kmeans_1d
from .io import read_json
from .prune import sparsity_at


def _redrawn(controls: list, draw) -> ipywidgets.VBox:
    """``controls`` above an output that ``draw(**values)`` fills each time one of them moves (named
    by each control's description); the box keeps the last figure drawn (``last_figure``)."""
    out = ipywidgets.Output()
    box = ipywidgets.VBox([ipywidgets.HBox(controls), out])
    box.last_figure = None

    def redraw(_change=None):
        fig = draw(**{c.description: c.value for c in controls})
        box.last_figure = fig
        with out:
            out.clear_output(wait=True)
            display(fig)
        plt.close(fig)

    for c in controls:
        c.observe(redraw, names="value")
    return box


def frontier_at(frontier_csv, amount: float) -> dict | None:
    """The frontier sweep's seed-mean row (``summary.csv`` of ``wildlib.sweep``, group ``target``)
    nearest to ``amount``, within 0.05; None where there is no sweep or no such row."""
    path = Path(frontier_csv) if frontier_csv else None
    if path is None or not path.is_file():
        return None
    rows = pd.read_csv(path)
    rows = rows[(rows.get("group") == "target") & rows["sparsity"].notna()] if "group" in rows else rows
    if rows.empty:
        return None
    best = rows.iloc[int(np.argmin(np.abs(rows["sparsity"].to_numpy() - amount)))]
    return best.to_dict() if abs(best["sparsity"] - amount) <= 0.05 else None


def sparsity_slider(ranked: dict, amount: float = 0.8, frontier_csv=None):
    """Global pruning's per-group sparsity under each ranking of ``ranked``
    (:func:`wildlib.prune.ranked_scores`) at ``amount`` (a figure), and a slider over the target
    (every position a lookup in the sorted scores: instant).
    Introduced in notebook 02_prune_magnitude, section "2 · Why global L1 empties layers, and a scale-free ranking"."""
    def draw(sparsity: float):
        return plots.ranking_sparsity(sparsity_at(ranked, sparsity), sparsity, frontier_at(frontier_csv, sparsity))

    slider = ipywidgets.FloatSlider(value=amount, min=0.05, max=0.95, step=0.05, description="sparsity",
                                    readout_format=".0%", continuous_update=False)
    return draw(amount), _redrawn([slider], draw)


def sharing_bytes(n_weights: int, bits: int) -> int:
    """Bytes of ``n_weights`` codes of ``bits`` bits and a float32 codebook of 2**bits values,
    before entropy coding and without the positions of the zeros (what the .wlc adds)."""
    return int(np.ceil(n_weights * bits / 8)) + 4 * 2 ** bits


def bits_slider(weights, name: str, bits: int = 5, init: str = "linear"):
    """One layer's nonzero weights with the ``2**bits`` shared values k-means gives them (``init``
    as notebook 03 shares), the bytes of its codes and codebook, and the error it costs (a figure),
    and a slider over the bits (1-8) and a menu of the centroid initialisations (one 1-D k-means per
    position, well under a second).
    Introduced in notebook 03_weight_sharing, section "Bits per layer type"."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    nz = w[w != 0]

    def draw(bits: int, init: str):
        centroids, labels = kmeans_1d(nz, 2 ** bits, init=init)
        rms = float(np.sqrt(np.mean((nz - centroids[labels]) ** 2))) if nz.size else 0.0
        title = (f"{name}: {nz.size:,} nonzero weights, {bits} bits = {len(centroids)} shared values ({init} init)\n"
                 f"codes + codebook {sharing_bytes(nz.size, bits) / 1e3:.1f} kB (fp32: {nz.size * 4 / 1e3:.1f} kB), "
                 f"RMS error {rms:.2g} (weights' RMS {np.sqrt(np.mean(nz ** 2)):.2g})")
        return plots.weight_histogram(nz, title=title, centroids=centroids)

    slider = ipywidgets.IntSlider(value=bits, min=1, max=8, description="bits", continuous_update=False)
    menu = ipywidgets.Dropdown(options=list(INITS), value=init, description="init")
    return draw(bits, init), _redrawn([slider, menu], draw)


def detections_figure(records: list[dict], detections: list[dict], names, score: float, title: str = "", images=3):
    """The first ``images`` of ``records`` with the ``detections`` (COCO results, contiguous class
    ids) scoring at least ``score``.  Introduced in notebook 05_evaluate (its detections viewer)."""
    shown = records[:images]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.4), squeeze=False)
    for ax, r in zip(axes[0], shown):
        mine = [d for d in detections if d["image_id"] == r["image_id"] and d["score"] >= score]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)]
        with Image.open(r["file_name"]) as im:
            plots.draw_boxes(ax, np.asarray(im.convert("RGB")), boxes, [d["category_id"] for d in mine],
                             [d["score"] for d in mine], names=names, title=f"{len(mine)} boxes")
    fig.suptitle(title or f"score >= {score:.2f}", fontsize=9)
    fig.tight_layout()
    return fig


def detections_viewer(records: list[dict], stored: dict, names, variant: str | None = None, score: float = 0.5,
                      images: int = 3):
    """Each variant's stored detections (``stored``: name -> a COCO results file, as notebook 05
    writes them) on the same ``images`` records above a score threshold (a figure of ``variant``
    at ``score``), with a variant menu and a threshold slider.
    Introduced in notebook 05_evaluate, section "Baseline vs the most compressed model, same images"."""
    ids = {r["image_id"] for r in records[:images]}
    dets = {n: [d for d in read_json(p) if d["image_id"] in ids] for n, p in stored.items()}
    variant = variant if variant in dets else next(iter(dets))

    def draw(variant: str, score: float):
        return detections_figure(records, dets[variant], names, score, f"{variant}: score >= {score:.2f}", images)

    menu = ipywidgets.Dropdown(options=list(dets), value=variant, description="variant")
    slider = ipywidgets.FloatSlider(value=score, min=0.05, max=0.95, step=0.05, description="score",
                                    continuous_update=False)
    return draw(variant, score), _redrawn([menu, slider], draw)
