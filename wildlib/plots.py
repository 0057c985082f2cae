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
    """``n`` random images of ``records`` with their boxes and class names.  Introduced in notebook
    00_explore_data, section "A look at the images"."""
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


def detected(paths, found: dict, cols: int = 3):
    """The images ``paths`` with the boxes ``wildlib.detect`` wrote for them (its ``detections.json``:
    ``found``, whose ``images`` are in the order of ``paths``).  Introduced in notebook 05_evaluate,
    section "The deployable on photos"."""
    fig, axes = _grid(len(paths), cols)
    for i, (ax, path) in enumerate(zip(axes, paths)):
        dets = [d for d in found["detections"] if d["image_id"] == i]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)]
        draw_boxes(ax, Image.open(path).convert("RGB"), boxes, [d["category_id"] for d in dets],
                   scores=[d["score"] for d in dets], names=found["classes"], title=found["images"][i])
    fig.tight_layout()
    return fig


def counts_vs_paper(table):
    """Instances per class; beside the paper's table when ``table`` has its column.

    Introduced in notebook 00_explore_data, section "Class counts (against the paper's, for the paper's classes)"."""
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
    """Box sizes (with COCO's small/medium limits), aspect ratios and boxes per image.  Introduced
    in notebook 00_explore_data, section "Boxes: how big, what shape, how many per image"."""
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
    """Training losses against iteration, each smoothed over ``smooth`` iterations.  Introduced in
    notebook 01_train_baseline, section "Training"."""
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


def predictions_vs_truth(records, preds, names=CLASSES, score_thresh=0.5, other=None, titles=None):
    """One row per image: ground truth on the left, predictions above ``score_thresh`` right.
    With ``other`` (a second model's predictions), the two models side by side instead, titled
    ``titles``. Introduced in notebook 01; two models in notebook 05."""
    fig, axes = plt.subplots(len(records), 2, figsize=(7, 2.7 * len(records)), squeeze=False)
    for k, ((a, b), r, p) in enumerate(zip(axes, records, preds)):
        img = Image.open(r["file_name"]).convert("RGB")
        if other is None:
            anns = r["annotations"]
            draw_boxes(a, img, [x["bbox"] for x in anns], [x["category_id"] for x in anns], names=names,
                       title=f"{r.get('voc_id', '')} ground truth")
            panels = ((b, p, f"predictions (score >= {score_thresh})"),)
        else:
            panels = ((a, p, titles[0] if titles else "model A"), (b, other[k], titles[1] if titles else "model B"))
        for ax, pr, title in panels:
            keep = pr["scores"] >= score_thresh
            draw_boxes(ax, img, pr["boxes"][keep], pr["classes"][keep], pr["scores"][keep], names=names, title=title)
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


def learning_curves(curves: dict, max_iter: int, key: str = "AP50"):
    """Several runs' learning curves on one axis (``{label: [{iter, AP50}, ...]}``), a dashed line
    where the shorter schedule ends: runs of one length share a colour.
    Introduced in tools/convergence_check.py (the baseline's convergence, docs/evidence.md)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    lengths = sorted({label.split()[0] for label in curves})
    for label, pts in curves.items():
        pts = [(p["iter"], p[key]) for p in pts if key in p]
        if pts:
            it, v = zip(*pts)
            ax.plot(it, v, marker="o", ms=3, lw=1, color=f"C{lengths.index(label.split()[0])}", label=label)
    ax.axvline(max_iter, color="0.5", ls="--", lw=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"{key} on valid (%)")
    ax.legend(fontsize=7, loc="lower right", ncol=2)
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
    ``wildlib.speed.sweep_test_time``). Introduced in notebook 04_prune_channels."""
    knobs = list(dict.fromkeys(sweep["knob"]))
    fig, axes = plt.subplots(1, len(knobs), figsize=(4.2 * len(knobs), 3.4), squeeze=False, sharey=True)
    labels = {"proposals": lambda r: f"{r.pre_nms}/{r.post_nms}", "detections": lambda r: f"{r.detections}",
              "input size": lambda r: f"{r.min_size}px"}
    import pandas as pd

    for ax, knob in zip(axes[0], knobs):  # the first row, the config's own setting, in every panel
        df = pd.concat([sweep.iloc[[0]], sweep[sweep["knob"] == knob]]).drop_duplicates(
            ["pre_nms", "post_nms", "detections", "min_size"])
        ax.plot(df["latency_median_ms"], df["AP50"], "o-")
        for r in df.itertuples():
            ax.annotate(labels[knob](r), (r.latency_median_ms, r.AP50), fontsize=7)
        _reference_line(ax, reference_ap50, tolerance)
        ax.set_xlabel("latency, median (ms)")
        ax.set_title(knob, fontsize=9)
    axes[0][0].set_ylabel("AP50")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def channel_scan(scan, base_ap50: float, max_drop: float):
    """One family of channel groups pruned at a time, before fine-tuning: AP50 against the ratio
    (rows of ``wildlib.channels.sensitivity_scan``), and the line ``max_drop`` below the unpruned
    model's ``base_ap50``. Introduced in notebook 04_prune_channels."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for fam, df in scan.groupby("family", sort=False):
        ax.plot(df["ratio"] * 100, df["AP50"], marker="o", label=fam)
    ax.axhline(base_ap50 - max_drop, color="k", ls=":", lw=1, label=f"unpruned - {max_drop:g}")
    ax.set_xlabel("channels removed in the family (%)")
    ax.set_ylabel("AP50, no fine-tuning")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def speed_vs_accuracy(rows, reference_ap50: float, tolerance: float = 1.0, x: str = "speedup",
                      xlabel: str = "speedup over the dense fp32 baseline (x, measured side by side)"):
    """Each variant as a point: ``x`` against AP50, with its 95% interval where the rows have
    ``AP50_ci95`` (rows: :class:`wildlib.evaluate.Variant` rows, or a DataFrame of them).
    Introduced in notebook 04_prune_channels."""
    import pandas as pd

    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, r in enumerate(df.to_dict(orient="records")):
        ci = r.get("AP50_ci95")
        yerr = [[r["AP50"] - ci[0]], [ci[1] - r["AP50"]]] if isinstance(ci, (list, tuple)) and len(ci) == 2 else None
        ax.errorbar(r[x], r["AP50"], yerr=yerr, fmt="o", ms=5, capsize=3, color=f"C{k % 10}")
        ax.annotate(r["name"], (r[x], r["AP50"]), fontsize=7)
    _reference_line(ax, reference_ap50, tolerance)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("AP50 (95% bootstrap interval)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def one_shot_sweep(ours, paper=None, title="one-shot global L1 pruning, no fine-tuning", bands=None):
    """AP50 against the pruned fraction, one line per scope (``ours``: ratio x scope), with the 95%
    interval of each point as a band (``bands``: the sweep's rows, ``AP50_lo``/``AP50_hi``), the
    paper's dashed beside them. Introduced in notebook 02, section 1."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k, scope in enumerate(ours.columns):
        ax.plot(ours.index * 100, ours[scope], marker="o", color=f"C{k}", label=f"ours: {scope}")
        if bands is not None and "AP50_lo" in bands:
            b = bands[bands["scope"] == scope].sort_values("ratio")
            ax.fill_between(b["ratio"] * 100, b["AP50_lo"], b["AP50_hi"], color=f"C{k}", alpha=0.15)
    for scope, col in (paper.items() if paper is not None else []):
        ax.plot(col.index * 100, col.values, ls="--", marker="x", alpha=0.6, label=f"paper: {scope}")
    ax.set_xlabel("pruned weights in scope (%)")
    ax.set_ylabel("AP50")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def ranking_sweep(l1_all, lamp, reference_ap50: float, tolerance: float = 1.0):
    """Global L1 against LAMP, all scopes, one-shot: ``l1_all`` (a ratio-indexed series, or None)
    and ``lamp`` (rows with ``ratio`` and ``AP50``). Introduced in notebook 02, section 2."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if l1_all is not None:
        ax.plot(l1_all.index * 100, l1_all.values, marker="o", label="global L1, all scopes")
    ax.plot(lamp["ratio"] * 100, lamp["AP50"], marker="s", color="C1", label="LAMP, all scopes (95% band)")
    if "AP50_lo" in lamp:
        ax.fill_between(lamp["ratio"] * 100, lamp["AP50_lo"], lamp["AP50_hi"], color="C1", alpha=0.15)
    _reference_line(ax, reference_ap50, tolerance)
    ax.set_xlabel("pruned weights (%)")
    ax.set_ylabel("AP50")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.set_title("one-shot, no fine-tuning: ranking matters")
    fig.tight_layout()
    return fig


def sensitivity(scan, reference_ap50: float, tolerance: float = 1.0, x="ratio", xlabel="pruned weights in the group (%)"):
    """AP50 against the pruning ratio, one line per group pruned alone (rows with ``group``,
    ``ratio``, ``AP50``). Introduced in notebook 02, section 3."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for g, df in scan.groupby("group"):
        ax.plot(df[x] * 100, df["AP50"], marker="o", label=g)
    _reference_line(ax, reference_ap50, tolerance)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("AP50")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def gradual_schedule(schedule, evals, control_evals=()):
    """Sparsity over the fine-tuning iterations (``schedule``: (iteration, sparsity) pairs) and AP50
    at each evaluation, the dense control's beside it. Introduced in notebook 02, section 4."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if schedule:
        ax.plot(*zip(*schedule), label="sparsity (all prunable)")
    if evals:
        ax2 = ax.twinx()
        ax2.plot([e["iter"] for e in evals], [e["AP50"] for e in evals], "o-", color="C1", label="pruned")
        ax2.plot([e["iter"] for e in control_evals], [e["AP50"] for e in control_evals], "s--", color="C2",
                 label="dense control")
        ax2.set_ylabel("AP50 on valid")
        ax2.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("fine-tuning iteration")
    ax.set_ylabel("sparsity")
    fig.tight_layout()
    return fig


def bits_sweep(sweep, reference_ap50: float, tolerance: float = 1.0):
    """AP50 against bits per weight, one line per layer type shared at b bits while the other keeps
    8 (rows with ``layer_type``, ``bits``, ``AP50``). Introduced in notebook 03."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for kind, df in sweep.groupby("layer_type"):
        ax.plot(df["bits"], df["AP50"], marker="o", label=f"{kind} at b bits, the rest at 8")
    _reference_line(ax, reference_ap50, tolerance)
    ax.set_xlabel("bits per weight (2^b shared values per layer)")
    ax.set_ylabel("AP50")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def pareto(table, reference_ap50: float, tolerance: float = 1.0, threads: int = 2):
    """Each variant (rows of a table indexed by name, with ``file_bytes``, ``latency_median_ms``,
    ``AP50`` and, when measured, ``AP50_ci95``) as a point with its 95% interval: file size against
    AP50, and latency against AP50.  Points closer than their intervals are not told apart by the
    data.  Introduced in notebook 05."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, (name, r) in enumerate(table.iterrows()):
        ci = r.get("AP50_ci95") if hasattr(r, "get") else None
        yerr = [[r.AP50 - ci[0]], [ci[1] - r.AP50]] if isinstance(ci, (list, tuple)) and len(ci) == 2 else None
        for ax, x in ((axes[0], r.file_bytes / 1e6), (axes[1], r.latency_median_ms)):
            ax.errorbar(x, r.AP50, yerr=yerr, fmt="o", ms=5, capsize=3, color=f"C{k % 10}")
            ax.annotate(name, (x, r.AP50), fontsize=7)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("file size on disk (MB, log)")
    axes[1].set_xlabel(f"CPU latency, batch 1, {threads} threads (ms, median, beside the baseline)")
    for ax in axes:
        _reference_line(ax, reference_ap50, tolerance)
        ax.set_ylabel("AP50 (95% bootstrap interval)")
    fig.tight_layout()
    return fig


def frontier(rows, summary, tolerance: float = 1.0):
    """A sweep's frontier (``wildlib.sweep``): left, AP50 on the report split against sparsity —
    each seed a point with its bootstrap interval, the seed mean of each setting a line with the
    mean of its points' intervals as a band, the dense controls' band in grey; right, the
    seed-mean paired delta to the reference with its 95% interval, and the -tolerance line."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    groups = list(dict.fromkeys(summary["group"]))
    ctrl = rows["dense_control_AP50"]
    ax.axhspan(ctrl.min(), ctrl.max(), color="0.85", label=f"dense controls ({ctrl.min():.1f}-{ctrl.max():.1f})")
    for i, g in enumerate(groups):
        col = f"C{i}"
        pts, s = rows[rows["group"] == g], summary[summary["group"] == g].sort_values("sparsity")
        ax.errorbar(pts["sparsity"], pts["AP50"], yerr=[pts["AP50"] - pts["AP50_lo"], pts["AP50_hi"] - pts["AP50"]],
                    fmt="o", ms=3, color=col, alpha=0.45, lw=0.8)
        band = pts.groupby("target")[["sparsity", "AP50", "AP50_lo", "AP50_hi"]].mean().sort_values("sparsity")
        ax.plot(band["sparsity"], band["AP50"], "-", color=col, label=f"{g}: seed mean")
        if len(band) > 1:
            ax.fill_between(band["sparsity"], band["AP50_lo"], band["AP50_hi"], color=col, alpha=0.12)
        off = (i - (len(groups) - 1) / 2) * 0.006  # settings of several groups at one sparsity side by side
        bx.errorbar(s["sparsity"] + off, s["delta_mean"], yerr=[s["delta_mean"] - s["delta_lo"], s["delta_hi"] - s["delta_mean"]],
                    fmt="o-", ms=4, color=col, capsize=3, label=g)
    ax.set_xlabel("sparsity of all prunable weights")
    ax.set_ylabel(f"AP50 on {rows['split'].iloc[0]} (%)")
    ax.set_title("gradual pruning: each seed, and the seed mean")
    ax.legend(fontsize=7)
    bx.axhline(0, color="k", lw=0.8)
    bx.axhline(-tolerance, color="k", ls=":", lw=1, label=f"-{tolerance:g} AP50")
    bx.set_xlabel("sparsity of all prunable weights")
    bx.set_ylabel("AP50 - reference (seed mean, paired 95%)")
    bx.set_title("drop from the reference")
    bx.legend(fontsize=7)
    fig.tight_layout()
    return fig


RANKING_LABELS = {"l1": "global L1 (the paper)", "lamp": "LAMP"}


def ranking_sparsity(table, amount: float, frontier: dict | None = None):
    """Per-group sparsity of global pruning at ``amount`` under each ranking (``table``:
    :func:`wildlib.prune.sparsity_at`), side by side: where global L1 empties a group and LAMP keeps
    it alive.  ``frontier``: the frontier sweep's seed mean at this target (``sparsity``,
    ``AP50_mean``, ``delta_mean``, ``delta_lo``, ``delta_hi``), written in the title.
    Introduced in notebook 02, section 2 (and its slider)."""
    rankings = [c for c in table.columns if c != "weights"]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(table) + 1.6))
    y = np.arange(len(table))
    h = 0.8 / max(len(rankings), 1)
    for i, r in enumerate(rankings):
        ax.barh(y + (i - (len(rankings) - 1) / 2) * h, table[r] * 100, height=h, label=RANKING_LABELS.get(r, r))
    ax.set_yticks(y, [f"{g} ({n / 1e3:.0f}k)" for g, n in zip(table.index, table["weights"])], fontsize=7)
    ax.axvline(amount * 100, color="k", ls=":", lw=1, label=f"global target {amount:.0%}")
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.set_xlabel("pruned weights in the group (%)")
    title = f"one global threshold at {amount:.0%}: where the zeros land"
    if frontier:
        title += (f"\nfrontier sweep at {frontier['sparsity']:.0%} (LAMP, fine-tuned): AP50 {frontier['AP50_mean']:.1f}, "
                  f"delta {frontier['delta_mean']:+.2f} [{frontier['delta_lo']:+.2f}, {frontier['delta_hi']:+.2f}]")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def weight_histogram(weights, cuts: dict | None = None, title: str = "", centroids=None, log: bool = True):
    """Histogram of one layer's weights (``weights``: any array), with each of ``cuts`` (label ->
    magnitude below which a weight is pruned) drawn at +/- its value, and ``centroids`` (the shared
    values of weight sharing) as ticks on top.  Introduced in notebook 02, section 2 (and 03's
    bits slider)."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    fig, ax = plt.subplots(figsize=(6.5, 3))
    ax.hist(w[w != 0] if centroids is not None else w, bins=120, color="0.55", log=log)
    for i, (label, cut) in enumerate((cuts or {}).items()):
        for x in (-cut, cut):
            ax.axvline(x, color=f"C{i}", ls="--", lw=1.2, label=label if x > 0 else None)
    if centroids is not None:
        for c in np.asarray(centroids).ravel():
            ax.axvline(c, color="C3", lw=0.8, alpha=0.8)
        ax.plot([], [], color="C3", lw=0.8, label=f"{len(np.asarray(centroids).ravel())} shared values")
    ax.set_xlabel("weight value")
    ax.set_ylabel("weights" + (" (log)" if log else ""))
    ax.set_title(title, fontsize=9)
    if cuts or centroids is not None:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def per_class_heatmap(per_class, reference: str | None = None):
    """AP50 per class (rows) and variant (columns) as a heatmap with its values, ``per_class`` a
    DataFrame as notebook 05 writes it (``per_class_ap.csv``); with ``reference`` (a column) the
    colour is each cell's difference to it, so the classes a compression costs stand out.
    Introduced in notebook 05_evaluate."""
    table = per_class.astype(float)
    shown = table.sub(table[reference], axis=0) if reference in table else table
    fig, ax = plt.subplots(figsize=(1.1 * table.shape[1] + 3, 0.34 * table.shape[0] + 1.8))
    diffs = np.abs(shown.to_numpy())
    lim = float(np.nanmax(diffs)) if reference in table and np.isfinite(diffs).any() else None
    lim = lim if lim else None  # all equal: no diverging scale
    im = ax.imshow(shown.to_numpy(), cmap="RdBu" if lim else "viridis", vmin=-lim if lim else None,
                   vmax=lim if lim else None, aspect="auto")
    for (i, j), v in np.ndenumerate(table.to_numpy()):
        ax.text(j, i, "" if np.isnan(v) else f"{v:.0f}", ha="center", va="center", fontsize=6)
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(table.shape[0]), [str(i).removeprefix("AP-") for i in table.index], fontsize=7)
    fig.colorbar(im, ax=ax, label=f"AP - {reference}" if lim else "AP")
    ax.set_title("per-class AP" + (f" (colour: difference to the {reference})" if lim else ""), fontsize=9)
    fig.tight_layout()
    return fig


def size_waterfall(steps):
    """Bytes at each step of a compression pipeline (``steps``: (label, bytes) in order, the first
    the dense file), as bars with each one's ratio to the first: where the size goes.
    Introduced in notebook 03_weight_sharing."""
    labels, sizes = zip(*[(label, float(b)) for label, b in steps])
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(steps) + 1.2))
    y = np.arange(len(steps))
    ax.barh(y, np.array(sizes) / 1e6, color=[f"C{i}" for i in range(len(steps))])
    for i, s in enumerate(sizes):
        ax.text(s / 1e6, i, f" {s / 1e6:.2f} MB ({sizes[0] / s:.1f}x)", va="center", fontsize=7)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, sizes[0] / 1e6 * 1.35)
    ax.set_xlabel("bytes on disk (MB); in brackets, times smaller than the dense file")
    ax.set_title("where the size goes", fontsize=9)
    fig.tight_layout()
    return fig


def time_stack(table, title: str = "where the time goes, per image"):
    """Milliseconds per part of the detector (``table``: rows = parts, columns = variants), one
    stacked bar per variant: which part a method made faster.  Introduced in notebook 04_prune_channels."""
    t = table.fillna(0.0)
    fig, ax = plt.subplots(figsize=(1.6 * t.shape[1] + 3, 3.6))
    bottom = np.zeros(t.shape[1])
    for i, (part, row) in enumerate(t.iterrows()):
        ax.bar(range(t.shape[1]), row.to_numpy(), bottom=bottom, color=PALETTE[i % len(PALETTE)], label=str(part))
        bottom += row.to_numpy()
    for j, total in enumerate(bottom):
        ax.text(j, total, f"{total:.0f} ms", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(t.shape[1]), [str(c) for c in t.columns], rotation=15, ha="right", fontsize=7)
    ax.set_ylabel("ms per image (median)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def latency_strips(rows, max_rows: int = 14):
    """Every timed pass of each variant (``rows``: speed-table rows with ``latency_runs_ms`` and
    ``baseline_runs_ms``) as a strip of points, its own baseline's passes in grey beside it, on a
    log axis: the spread behind each median, and how much of a speedup the noise alone could give.
    Introduced in notebook 04_prune_channels, section "Summary"."""
    rows = [r for r in rows if r.get("latency_runs_ms")][:max_rows]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(rows) + 1.4))
    rng = np.random.default_rng(0)
    for i, r in enumerate(rows):
        for values, dy, color in ((r.get("baseline_runs_ms") or [], 0.17, "0.6"), (r["latency_runs_ms"], -0.17, "C0")):
            v = np.asarray(values, dtype=float)
            ax.scatter(v, i + dy + rng.uniform(-0.07, 0.07, v.size), s=6, color=color, alpha=0.7, lw=0)
            if v.size:
                ax.plot([np.median(v)] * 2, [i + dy - 0.12, i + dy + 0.12], color="k", lw=1.2)
    ax.set_yticks(range(len(rows)), [str(r["name"])[:48] for r in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms per image, every timed pass (blue: the variant; grey: its baseline beside it; bar: median)")
    ax.set_title("latency, pass by pass", fontsize=9)
    fig.tight_layout()
    return fig
