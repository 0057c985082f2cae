"""The experiments of notebook 02: the one-shot sweep, the sensitivity scan, the variants table and
the one-shot setting stage 05 re-makes."""

from __future__ import annotations

import copy
from pathlib import Path


from .masks import group_of, prunable, layerwise_magnitude, make_permanent, pruned_copy, group_sparsity, sparsity
from ..evaluate import AP50_TOLERANCE, COCO_KEYS, Variant, against, best_within, coco, coco_with_interval, scored as score_model
from ..io import progress as progress_bar, slug


def one_shot_sweep(model, cfg, dataset: str, scopes_list, ratios, progress: bool = True, ranking: str = "l1"):
    """The paper's experiment: prune a copy of ``model`` once per (scope, ratio), no
    fine-tuning, and evaluate it.  Sparsity is also reported over all prunable weights.
    Introduced in notebook 02_prune_magnitude, section "1 · One-shot global L1 pruning (the paper's experiment)"."""
    import pandas as pd

    rows = []
    grid = [(s, r) for s in scopes_list for r in ratios]
    for scopes, r in progress_bar(grid, "one-shot sweep", enabled=progress):
        m = pruned_copy(model, scopes, r, ranking) if r > 0 else model
        met = coco_with_interval(m, cfg, dataset)
        rows.append({"scope": scopes, "ranking": ranking, "ratio": r, "sparsity_scope": sparsity(m, scopes),
                     "sparsity_all": sparsity(m), **{k: met[k] for k in COCO_KEYS},
                     "AP50_lo": met["AP50_ci95"][0], "AP50_hi": met["AP50_ci95"][1]})
    return pd.DataFrame(rows, columns=["scope", "ranking", "ratio", "sparsity_scope", "sparsity_all", *COCO_KEYS,
                                       "AP50_lo", "AP50_hi"])


def sensitivity_scan(model, cfg, dataset: str, ratios, groups=None, progress: bool = True):
    """Prune one group at a time (a backbone stage, the FPN, the RPN, the box head) at each
    ratio and evaluate: which parts of the detector tolerate pruning.
    Introduced in notebook 02_prune_magnitude, section "3 · Which parts are fragile? A sensitivity scan"."""
    import pandas as pd

    groups = groups or sorted({group_of(n) for n, _ in prunable(model, "all")})
    sizes = group_sparsity(model)["weights"]
    rows = []
    for g, r in progress_bar([(g, r) for g in groups for r in ratios], "sensitivity", enabled=progress):
        m = copy.deepcopy(model)
        make_permanent(layerwise_magnitude(m, {g: r}))
        met = coco(m, cfg, dataset, quiet=True)
        rows.append({"group": g, "ratio": r, "weights": int(sizes[g]), "AP50": met["AP50"], "AP": met["AP"]})
    return pd.DataFrame(rows, columns=["group", "ratio", "weights", "AP50", "AP"])


def ratios_from_sensitivity(scan, baseline_ap50: float, tolerance: float = 1.0) -> dict[str, float]:
    """Per group, the largest scanned ratio whose AP50 stays within ``tolerance`` of the baseline.

    Introduced in notebook 02_prune_magnitude, section "3 · Which parts are fragile? A sensitivity scan"."""
    return {g: float((best_within(df, "ratio", baseline_ap50, tolerance) or {"ratio": 0.0})["ratio"])
            for g, df in scan.groupby("group")}


def reported_row(name: str, sparsity_all: float, comparison: dict) -> dict:
    """One reported row of stage 02: name, sparsity of all prunable weights, and the variant
    against the reference on the report split (:func:`wildlib.evaluate.against`: AP50 with its
    interval, the paired delta with its interval, both verdicts)."""
    return Variant(name, sparsity_all=float(sparsity_all), **comparison).row()


def pick_name(pick: dict) -> str:
    """The display name of a one-shot setting: ``"one-shot lamp all 50%"``.

    Introduced in notebook 02_prune_magnitude, section "Summary: every reported model on the report split, against the reference"."""
    return f"one-shot {pick['ranking']} {pick['scope']} {pick['ratio']:.0%}"


def from_pick(model, pick: dict):
    """The one-shot model of a recorded setting (:func:`one_shot_pick`), re-made from ``model``.

    Introduced in notebook 02_prune_magnitude, section "Summary: every reported model on the report split, against the reference"."""
    return pruned_copy(model, pick["scope"], pick["ratio"], pick.get("ranking", "l1"))


def reported_rows(models: dict, cfg, datasets: dict, split: str, reference, detections_dir, scored=None,
                  baseline=None) -> list[dict]:
    """:func:`reported_row` of each of ``models`` (name -> model), scored on ``split`` (reusing
    ``scored``: name -> :class:`wildlib.evaluate.Scored` already measured) and compared with the
    ``reference``'s Scored (and, beside it, ``baseline``'s); each model's detections are written to ``detections_dir``.
    Introduced in notebook 02_prune_magnitude, section "Summary: every reported model on the report split, against the reference"."""
    scored = dict(scored or {})
    rows = []
    for name, m in progress_bar(models.items(), f"scored on {split}", total=len(models)):
        s = scored.get(name) or score_model(m, cfg, datasets, split, detections_file=Path(detections_dir) / f"{slug(name)}.json")
        rows.append(reported_row(name, sparsity(m), against(s, reference, baseline=baseline)))
    return rows


def one_shot_pick(rows, reference_ap50: float, tolerance: float | None = None) -> dict | None:
    """The one-shot setting (``scope``, ``ratio``, ``ranking``) with the most sparsity among the rows
    within ``tolerance`` AP50 of the reference, or the mildest if none is: what stage 02 records
    for stage 05 to re-make. Introduced in notebook 02, Summary."""
    tolerance = AP50_TOLERANCE if tolerance is None else tolerance
    rows = list(rows)
    if not rows:  # the sweep was skipped (a sweep point): nothing to re-make
        return None
    best = best_within(rows, "sparsity_all", reference_ap50, tolerance) or min(rows, key=lambda r: r["ratio"])
    return {"scope": best["scope"], "ratio": float(best["ratio"]), "ranking": best.get("ranking", "l1")}
