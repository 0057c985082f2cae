"""Scopes, rankings (global L1, LAMP) and masks through ``torch.nn.utils.prune``; sparsity counted from
the tensors. Introduced in notebook 02, sections 1-2."""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from ..parts import FORMER_NAMES, OTHER, backbone_stage_of, part_of


# The parts of the detector (wildlib.parts) that hold prunable weights; "all" is every one but
# the box predictor (the final classifier and box regressor), left alone unless asked.
SCOPES = ("backbone", "fpn", "rpn", "box_head", "box_predictor")
DEFAULT_SCOPES = ("backbone", "fpn", "rpn", "box_head")


def parse_scopes(spec) -> tuple[str, ...]:
    """``"all"``, ``"backbone+box_head"`` or a list -> a tuple of scope names."""
    names_given = spec.split("+") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for p in names_given:
        p = FORMER_NAMES.get(p.strip(), p.strip())  # a scope recorded by a run before the names were one
        names = DEFAULT_SCOPES if p == "all" else (p,)
        for n in names:
            if n not in SCOPES:
                raise ValueError(f"unknown pruning scope {n!r}; known: {', '.join(SCOPES)} and 'all'")
            if n not in out:
                out.append(n)
    return tuple(out)


def scope_of(name: str) -> str | None:
    """The scope of a module by its name in a GeneralizedRCNN: its part, if that part holds
    prunable weights."""
    part = part_of(name)
    return part if part in SCOPES else None


def group_of(name: str) -> str:
    """A coarser-than-layer group for sensitivity scans: the backbone stage, else the scope."""
    stage = backbone_stage_of(name)
    if stage:
        return f"backbone.{stage}"
    return scope_of(name) or OTHER


def prunable(model, scopes=DEFAULT_SCOPES) -> list[tuple[str, nn.Module]]:
    """(module name, module) of every Conv2d/Linear whose scope is selected.
    Introduced in notebook 03_weight_sharing, section "Bits per layer type" (02 prunes through it)."""
    scopes = parse_scopes(scopes)
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and scope_of(n) in scopes]


def _targets(model, scopes):
    mods = prunable(model, scopes)
    if not mods:
        raise ValueError(f"no prunable layer in scopes {scopes}")
    return [(m, "weight") for _, m in mods]


# ------------------------------------------------------------------------- rankings (a slot)
# A ranking (a pruning criterion) is one function: a layer's weight tensor (with the entries
# already pruned at zero) -> a non-negative score per entry, the same shape.  The lowest scores
# are pruned first, across all the layers of the scopes together.  Register one with @register_ranking("name")
# and one-shot (global_magnitude), layer-wise and gradual (GradualPruning) pruning all take
# ranking="name"; the notebooks and the report list RANKINGS.
RANKINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def register_ranking(name: str):
    """Decorator: register a ranking function (weights -> scores) under ``name``."""
    def register(fn):
        if name in RANKINGS:
            raise ValueError(f"a ranking named {name!r} is registered already")
        RANKINGS[name] = fn
        return fn
    return register


def check_ranking(ranking: str) -> str:
    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}; known: {', '.join(RANKINGS)}")
    return ranking


@register_ranking("l1")
def l1_scores(weight: torch.Tensor) -> torch.Tensor:
    """The magnitude of every entry: global L1, the paper's ranking."""
    return weight.detach().abs()


@register_ranking("lamp")
def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP score of every entry: its squared magnitude over the sum of the squared magnitudes
    of all entries of the layer at least as large.  The largest weight of a layer scores 1."""
    sq = weight.detach().flatten().double() ** 2
    order = torch.argsort(sq)
    tail = torch.flip(torch.cumsum(torch.flip(sq[order], [0]), 0), [0])  # sum over j >= i
    scores = torch.empty_like(sq)
    scores[order] = sq[order] / tail.clamp_min(torch.finfo(torch.float64).tiny)
    return scores.view_as(weight).float()


def _prune_by_scores(targets, amount: float, ranking: str):
    """``torch.nn.utils.prune.global_unstructured`` of ``amount`` of ``targets``' entries, lowest
    ``ranking`` score first (scored on the live, masked weights: pruned entries score 0), over
    contiguous tensors: it flattens weights, masks and scores with ``view(-1)``, which the
    channels-last weights of ``MODEL.CHANNELS_LAST`` refuse.  The values do not change."""
    score = RANKINGS[check_ranking(ranking)]
    for m, n in targets:
        for t in (m._parameters.get(n), m._parameters.get(n + "_orig"), m._buffers.get(n + "_mask")):
            if t is not None and not t.is_contiguous():
                m._wildlib_channels_last = True  # make_permanent gives the weight its layout back
                t.data = t.data.contiguous()
    scores = {(m, n): score(getattr(m, n)).contiguous() for m, n in targets}
    if any(bool((v < 0).any()) for v in scores.values()):  # torch ranks their absolute values
        raise ValueError(f"ranking {ranking!r} gave negative scores; a ranking's scores must be >= 0")
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=float(amount),
                                    importance_scores=scores)


def global_magnitude(model, scopes="all", amount: float = 0.5, ranking: str = "l1"):
    """Global unstructured pruning (masks attached) of the selected scopes: ``amount`` of
    their weights, lowest score first, ranked across all layers together (``ranking`` "l1":
    the raw magnitude, as in the paper; "lamp": the layer-normalised LAMP score).
    Introduced in notebook 02_prune_magnitude, section "2 · Why global L1 empties layers, and a scale-free ranking"."""
    if not 0 <= amount < 1:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    _prune_by_scores(_targets(model, scopes), amount, ranking)
    return model


def layerwise_magnitude(model, ratios: dict[str, float], scopes="all", ranking: str = "l1"):
    """Pruning with a ratio per group (see :func:`group_of`), ranked (``ranking``) within each group.

    Introduced in notebook 02_prune_magnitude, section "3 · Which parts are fragile? A sensitivity scan"."""
    by_group: dict[str, list] = {}
    for name, m in prunable(model, scopes):
        by_group.setdefault(group_of(name), []).append((m, "weight"))
    for g, params in by_group.items():
        r = float(ratios.get(g, 0.0))
        if r > 0:
            _prune_by_scores(params, r, ranking)
    return model


def make_permanent(model):
    """Fold every mask into its weight (``torch_prune.remove``): plain tensors with zeros remain, in
    the memory format they had before pruning (channels-last stays channels-last).
    Introduced in notebook 02_prune_magnitude, section "3 · Which parts are fragile? A sensitivity scan"."""
    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(m, hook._tensor_name)
                if m.__dict__.pop("_wildlib_channels_last", False):  # a channels-last weight stays one:
                    w = getattr(m, hook._tensor_name)  # else a pruned model is timed in another layout
                    w.data = w.data.contiguous(memory_format=torch.channels_last)
    return model


def pruned_copy(model, scopes, amount, ranking: str = "l1"):
    m = copy.deepcopy(model)
    global_magnitude(m, scopes, amount, ranking)
    return make_permanent(m)


def sparsity_table(model, scopes=SCOPES):
    """Per layer: scope, group, weights, nonzero, sparsity (masks included if attached).

    Introduced in notebook 02_prune_magnitude, section "The baseline, re-measured here, and the reference"."""
    rows = []
    for name, m in prunable(model, scopes):
        w = m.weight.detach()
        rows.append({"layer": name, "scope": scope_of(name), "group": group_of(name), "weights": w.numel(),
                     "nonzero": int(torch.count_nonzero(w)), "shape": tuple(w.shape)})
    df = pd.DataFrame(rows)
    df["sparsity"] = 1 - df["nonzero"] / df["weights"]
    return df


def group_sparsity(model, scopes="all"):
    """Per group (see :func:`group_of`): weights, nonzero, sparsity.

    Introduced in notebook 02_prune_magnitude, section "2 · Why global L1 empties layers, and a scale-free ranking"."""
    g = sparsity_table(model, scopes).groupby("group")[["weights", "nonzero"]].sum()
    return g.assign(sparsity=1 - g["nonzero"] / g["weights"])


def ranked_scores(model, scopes="all", rankings=("l1", "lamp")) -> dict:
    """Each ranking's scores of every prunable weight, sorted once per group, so that the group
    sparsities of global pruning at any amount are a lookup (:func:`sparsity_at`): what a slider
    needs, with no copy of the model pruned.  Introduced in notebook 02_prune_magnitude, section
    "2 · Why global L1 empties layers, and a scale-free ranking"."""
    out = {}
    for ranking in rankings:
        score = RANKINGS[check_ranking(ranking)]
        by_group: dict[str, list] = {}
        for name, m in prunable(model, scopes):
            by_group.setdefault(group_of(name), []).append(score(m.weight).flatten().double().numpy())
        groups = {g: np.sort(np.concatenate(v)) for g, v in by_group.items()}
        out[ranking] = {"groups": groups, "all": np.sort(np.concatenate(list(groups.values())))}
    return out


def sparsity_at(ranked: dict, amount: float):
    """Per group and ranking, the fraction of weights global pruning of ``amount`` of them removes
    (the lowest scores first, across all groups together: :func:`global_magnitude`), from
    :func:`ranked_scores`; a DataFrame indexed by group, one column per ranking, and ``weights``.
    Ties at the threshold count as pruned (``global_magnitude`` breaks them by position: on
    trained float weights they are vanishingly rare).
    Introduced in notebook 02_prune_magnitude, section "2 · Why global L1 empties layers, and a scale-free ranking"."""
    if not 0 <= amount < 1:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    cols = {}
    for ranking, r in ranked.items():
        k = int(round(amount * len(r["all"])))
        if k == 0:
            cols[ranking] = {g: 0.0 for g in r["groups"]}
            continue
        threshold = r["all"][k - 1]
        cols[ranking] = {g: float(np.searchsorted(v, threshold, side="right") / len(v)) for g, v in r["groups"].items()}
    first = next(iter(ranked.values()))["groups"]
    return pd.DataFrame(cols).assign(weights={g: len(v) for g, v in first.items()})


def magnitude_cuts(ranked: dict, weight: torch.Tensor, amount: float) -> dict[str, float]:
    """Per ranking of ``ranked`` (:func:`ranked_scores`): the largest magnitude of ``weight``'s
    entries that global pruning of ``amount`` removes (both rankings are monotone in magnitude
    within a layer, so this one number is the layer's cut); 0.0 where it removes none.
    Introduced in notebook 02_prune_magnitude, section "2 · Why global L1 empties layers, and a scale-free ranking"."""
    out = {}
    for ranking, r in ranked.items():
        k = int(round(amount * len(r["all"])))
        scores = RANKINGS[ranking](weight).flatten().double().numpy()
        gone = scores <= r["all"][k - 1] if k else np.zeros(scores.shape, bool)
        mags = weight.detach().abs().flatten().double().numpy()
        out[ranking] = float(mags[gone].max()) if gone.any() else 0.0
    return out


def _zero_fraction(tensors) -> float:
    tensors = [t.detach() for t in tensors]
    return 1 - sum(int(torch.count_nonzero(t)) for t in tensors) / sum(t.numel() for t in tensors)


def sparsity(model, scopes=DEFAULT_SCOPES) -> float:
    """Fraction of zeros among the prunable weights of ``scopes`` (masks included if attached).

    Introduced in notebook 02_prune_magnitude, section "The baseline, re-measured here, and the reference"."""
    return _zero_fraction([m.weight for _, m in prunable(model, scopes)])


def state_sparsity(state: dict, model, scopes=DEFAULT_SCOPES) -> float:
    """The same fraction, read from a state dict (e.g. a saved file) instead of a live model."""
    return _zero_fraction([state[f"{n}.weight"] for n, _ in prunable(model, scopes)])
