"""The figures the notebooks draw (matplotlib only; each returns its Figure)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from .classes import CLASSES

PALETTE = plt.get_cmap("tab20")(np.linspace(0, 1, 20))


def class_color(i: int):
    return PALETTE[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20]


def draw_boxes(ax, image, boxes, classes, scores=None, names=CLASSES, title=None, lw=1.5):
    ax.imshow(image)
    for k, (b, c) in enumerate(zip(boxes, classes)):
        x0, y0, x1, y1 = b
        col = class_color(int(c))
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=col, lw=lw))
        label = names[int(c)] + (f" {scores[k]:.2f}" if scores is not None else "")
        ax.text(x0, y0 - 1, label, fontsize=6, color="white", va="bottom",
                bbox=dict(facecolor=col, alpha=0.8, pad=0.5, lw=0))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def _grid(n, cols, size=3.2):
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size * 0.8), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, axes.flat


def sample_grid(records, names=CLASSES, n=8, cols=4, seed=0):
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(records), size=min(n, len(records)), replace=False)
    fig, axes = _grid(len(pick), cols)
    for ax, i in zip(axes, pick):
        r = records[i]
        anns = r["annotations"]
        draw_boxes(ax, Image.open(r["file_name"]).convert("RGB"), [a["bbox"] for a in anns],
                   [a["category_id"] for a in anns], names=names, title=r.get("voc_id"))
    fig.tight_layout()
    return fig


def counts_vs_paper(table):
    """Instances per class; beside the paper's table when ``table`` has its column."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(table)), 3.5))
    x = np.arange(len(table))
    paper = "paper" in table
    w = 0.4 if paper else 0.8
    ax.bar(x - (0.2 if paper else 0), table["total"], w, label="this dataset")
    if paper:
        ax.bar(x + 0.2, table["paper"], w, label="paper's table")
    ax.set_xticks(x, table.index, rotation=45, ha="right")
    ax.set_ylabel("instances")
    ax.legend()
    fig.tight_layout()
    return fig


def box_statistics(boxes, boxes_per_image):
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].hist(np.sqrt(boxes["area"]), bins=40, color="C0")
    axes[0].set_xlabel("box size sqrt(w*h) [px]")
    for lim, name in ((32, "COCO small"), (96, "COCO medium")):
        axes[0].axvline(lim, color="k", ls="--", lw=0.8)
        axes[0].text(lim, axes[0].get_ylim()[1] * 0.9, f" {name}|", fontsize=7)
    axes[1].hist(np.log2(boxes["aspect"]), bins=40, color="C1")
    axes[1].set_xlabel("log2(width / height)")
    vals, counts = np.unique(boxes_per_image, return_counts=True)
    axes[2].bar(vals, counts, color="C2")
    axes[2].set_xlabel("boxes per image")
    for ax in axes:
        ax.set_ylabel("count")
    fig.tight_layout()
    return fig


def loss_curves(rows, keys=("total_loss", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"), smooth=20):
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for k in keys:
        pts = [(r["iter"], r[k]) for r in rows if k in r]
        if not pts:
            continue
        it, v = map(np.asarray, zip(*pts))
        w = max(1, min(smooth, len(v)))
        sm = np.convolve(v, np.ones(w) / w, mode="valid")
        ax.plot(it[w - 1 :], sm, label=k)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"loss (moving mean of {smooth})")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def predictions_vs_truth(records, preds, names=CLASSES, score_thresh=0.5):
    """One row per image: ground truth on the left, predictions above ``score_thresh`` right."""
    fig, axes = plt.subplots(len(records), 2, figsize=(7, 2.7 * len(records)), squeeze=False)
    for (a, b), r, p in zip(axes, records, preds):
        img = Image.open(r["file_name"]).convert("RGB")
        anns = r["annotations"]
        draw_boxes(a, img, [x["bbox"] for x in anns], [x["category_id"] for x in anns], names=names,
                   title=f"{r.get('voc_id', '')} ground truth")
        keep = p["scores"] >= score_thresh
        draw_boxes(b, img, p["boxes"][keep], p["classes"][keep], p["scores"][keep], names=names,
                   title=f"predictions (score >= {score_thresh})")
    fig.tight_layout()
    return fig


def learning_curve(evals, max_iter: int, at: float = 0.75, key: str = "AP50"):
    """AP50 at each periodic evaluation, with the last quarter of the schedule shaded: a model
    that has converged gains (almost) nothing there. Introduced in notebook 01."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    pts = [(e["iter"], e[key]) for e in evals if key in e]
    if pts:
        it, v = zip(*pts)
        ax.plot(it, v, marker="o", label=key)
        top = max(v)
        ax.set_ylim(max(0, min(v) - 5), min(100, top + 3))
    ax.axvspan(at * max_iter, max_iter, color="C2", alpha=0.12, label=f"last {1 - at:.0%} of the schedule")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"{key} on valid (%)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def cost_bars(table, columns=("infer_ms", "train_ms"), titles=("inference, 1 image", "training step, 1 batch")):
    """Per-part milliseconds as horizontal bars, one panel per column of ``table``
    (from ``wildlib.profile.cost_table``), and FLOPs beside them. Introduced in notebook 01."""
    cols = [c for c in columns if c in table]
    flop_cols = [c for c in ("infer_gflops", "train_fwd_gflops") if c in table]
    fig, axes = plt.subplots(1, len(cols) + (1 if flop_cols else 0), figsize=(4.2 * (len(cols) + 1), 3.4),
                             squeeze=False)
    y = np.arange(len(table))
    for ax, c, title in zip(axes[0], cols, titles):
        ax.barh(y, table[c], color="C0")
        total = table[c].sum()
        for k, v in enumerate(table[c]):
            if v > 0:
                ax.text(v, k, f" {100 * v / total:.0f}%", va="center", fontsize=7)
        ax.set_yticks(y, table.index)
        ax.invert_yaxis()
        ax.set_xlabel("ms (median)")
        ax.set_title(f"{title}: {total:.0f} ms", fontsize=9)
    if flop_cols:
        ax = axes[0][-1]
        h = 0.8 / len(flop_cols)
        for k, c in enumerate(flop_cols):
            ax.barh(y + (k - (len(flop_cols) - 1) / 2) * h, table[c], h, label=c, color=f"C{k + 1}")
        ax.set_yticks(y, table.index)
        ax.invert_yaxis()
        ax.set_xlabel("GFLOPs (fvcore, forward)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _reference_line(ax, reference_ap50: float, tolerance: float = 1.0):
    ax.axhline(reference_ap50 - tolerance, color="k", ls=":", lw=1, label=f"reference - {tolerance:g}")


def knob_sweep(sweep, reference_ap50: float, tolerance: float = 1.0):
    """Test-time knobs: AP50 against measured latency, one panel per knob (rows of
    ``wildlib.fast.sweep_test_time``). Introduced in notebook 04_prune_channels."""
    knobs = list(dict.fromkeys(sweep["knob"]))
    fig, axes = plt.subplots(1, len(knobs), figsize=(4.2 * len(knobs), 3.4), squeeze=False, sharey=True)
    labels = {"proposals": lambda r: f"{r.pre_nms}/{r.post_nms}", "detections": lambda r: f"{r.detections}",
              "input size": lambda r: f"{r.min_size}px"}
    import pandas as pd

    for ax, knob in zip(axes[0], knobs):  # the first row, the config's own setting, in every panel
        df = pd.concat([sweep.iloc[[0]], sweep[sweep["knob"] == knob]]).drop_duplicates(
            ["pre_nms", "post_nms", "detections", "min_size"])
        ax.plot(df["latency_ms_median"], df["AP50"], "o-")
        for r in df.itertuples():
            ax.annotate(labels[knob](r), (r.latency_ms_median, r.AP50), fontsize=7)
        _reference_line(ax, reference_ap50, tolerance)
        ax.set_xlabel("latency, median (ms)")
        ax.set_title(knob, fontsize=9)
    axes[0][0].set_ylabel("AP50")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def channel_scan(scan, reference_ap50: float, max_drop: float):
    """One family of channel groups pruned at a time, before fine-tuning: AP50 against the ratio
    (rows of ``wildlib.channels.sensitivity_scan``). Introduced in notebook 04_prune_channels."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for fam, df in scan.groupby("family", sort=False):
        ax.plot(df["ratio"] * 100, df["AP50"], marker="o", label=fam)
    ax.axhline(reference_ap50 - max_drop, color="k", ls=":", lw=1, label=f"reference - {max_drop:g}")
    ax.set_xlabel("channels removed in the family (%)")
    ax.set_ylabel("AP50, no fine-tuning")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def speed_vs_accuracy(rows, reference_ap50: float, tolerance: float = 1.0, x: str = "speedup",
                      xlabel: str = "speedup over the dense fp32 baseline (x, measured side by side)"):
    """Each variant as a point: ``x`` against AP50 (rows: dicts or a DataFrame with ``name``/
    ``variant``, ``x`` and ``AP50``). Introduced in notebook 04_prune_channels."""
    import pandas as pd

    df = pd.DataFrame(rows)
    label = "name" if "name" in df else "variant"
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, r in enumerate(df.itertuples()):
        ax.scatter(getattr(r, x), r.AP50, s=40, color=f"C{k % 10}")
        ax.annotate(getattr(r, label), (getattr(r, x), r.AP50), fontsize=7)
    _reference_line(ax, reference_ap50, tolerance)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("AP50")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
