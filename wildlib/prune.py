"""Magnitude pruning of a Detectron2 Faster R-CNN with ``torch.nn.utils.prune``.

* **Scopes** name groups of prunable weights (conv and linear ``weight`` tensors):
  ``backbone`` (bottom-up network), ``fpn``, ``rpn``, ``roi_head`` (box head FCs) and
  ``predictor`` (the final classifier/regressor, excluded unless asked).  ``all`` means every
  scope but ``predictor``.  Combine with ``+``: ``"backbone+roi_head"``.
* **One-shot** global L1 pruning (the paper's method), **sensitivity** scans per layer group,
  **gradual** pruning on Zhu & Gupta's cubic schedule while fine-tuning (a Detectron2 hook).
* **Ranking**: ``"l1"`` ranks raw magnitudes across all layers together (the paper).  Layers
  differ in scale (a fan-in of 4704 gives small weights), so global L1 empties whole layers;
  ``"lamp"`` ranks by the layer-adaptive magnitude score of Lee et al. (ICLR 2021),
  ``w_i^2 / sum_{|w_j| >= |w_i|} w_j^2`` within each layer, which is scale-free and keeps every
  layer alive while still choosing per-layer sparsities globally.
* **Size accounting** from the tensors themselves, and a sparse file whose size is measured.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from detectron2.engine import HookBase

from .train import unwrap

SCOPES = ("backbone", "fpn", "rpn", "roi_head", "predictor")
DEFAULT_SCOPES = ("backbone", "fpn", "rpn", "roi_head")


def parse_scopes(spec) -> tuple[str, ...]:
    """``"all"``, ``"backbone+roi_head"`` or a list -> a tuple of scope names."""
    parts = spec.split("+") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for p in parts:
        p = p.strip()
        names = DEFAULT_SCOPES if p == "all" else (p,)
        for n in names:
            if n not in SCOPES:
                raise ValueError(f"unknown pruning scope {n!r}; known: {', '.join(SCOPES)} and 'all'")
            if n not in out:
                out.append(n)
    return tuple(out)


def scope_of(name: str) -> str | None:
    """The scope of a module by its name in a GeneralizedRCNN."""
    if name.startswith("backbone.bottom_up."):
        return "backbone"
    if name.startswith("backbone."):
        return "fpn"
    if name.startswith("proposal_generator."):
        return "rpn"
    if name.startswith("roi_heads.box_head."):
        return "roi_head"
    if name.startswith("roi_heads.box_predictor."):
        return "predictor"
    return None


def group_of(name: str) -> str:
    """A coarser-than-layer group for sensitivity scans: the backbone stage, else the scope."""
    m = re.match(r"backbone\.bottom_up\.(\w+?)\.", name)
    if m:
        return f"backbone.{m.group(1)}"
    return scope_of(name) or "other"


def prunable(model, scopes=DEFAULT_SCOPES) -> list[tuple[str, nn.Module]]:
    """(module name, module) of every Conv2d/Linear whose scope is selected."""
    scopes = parse_scopes(scopes)
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and scope_of(n) in scopes]


def _targets(model, scopes):
    mods = prunable(model, scopes)
    if not mods:
        raise ValueError(f"no prunable layer in scopes {scopes}")
    return [(m, "weight") for _, m in mods]


RANKINGS = ("l1", "lamp")


def _check_ranking(ranking: str) -> str:
    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}; known: {', '.join(RANKINGS)}")
    return ranking


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP score of every entry: its squared magnitude over the sum of the squared magnitudes
    of all entries of the layer at least as large.  The largest weight of a layer scores 1."""
    sq = weight.detach().flatten().double() ** 2
    order = torch.argsort(sq)
    tail = torch.flip(torch.cumsum(torch.flip(sq[order], [0]), 0), [0])  # sum over j >= i
    scores = torch.empty_like(sq)
    scores[order] = sq[order] / tail.clamp_min(torch.finfo(torch.float64).tiny)
    return scores.view_as(weight).float()


def _global_unstructured(targets, amount: float, scores: dict | None = None):
    """``torch.nn.utils.prune.global_unstructured`` (L1 on ``scores``, default: the weights) over
    contiguous tensors: it flattens weights, masks and scores with ``view(-1)``, which the
    channels-last weights of ``MODEL.CHANNELS_LAST`` refuse.  The values do not change."""
    for m, n in targets:
        for t in (m._parameters.get(n), m._parameters.get(n + "_orig"), m._buffers.get(n + "_mask")):
            if t is not None and not t.is_contiguous():
                t.data = t.data.contiguous()
    scores = scores or {(m, n): getattr(m, n).detach() for m, n in targets}
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=float(amount),
                              importance_scores={k: v.contiguous() for k, v in scores.items()})


def _prune_global(targets, amount: float, ranking: str = "l1"):
    scores = None
    if _check_ranking(ranking) == "lamp":  # computed on the live (masked) weights: pruned entries score 0
        scores = {(m, n): lamp_scores(getattr(m, n)) for m, n in targets}
    _global_unstructured(targets, amount, scores)


def global_magnitude(model, scopes="all", amount: float = 0.5, ranking: str = "l1"):
    """Global unstructured pruning (masks attached) of the selected scopes: ``amount`` of
    their weights, lowest score first, ranked across all layers together (``ranking`` "l1":
    the raw magnitude, as in the paper; "lamp": the layer-normalised LAMP score)."""
    if not 0 <= amount < 1:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    _prune_global(_targets(model, scopes), amount, ranking)
    return model


def layerwise_magnitude(model, ratios: dict[str, float], scopes="all"):
    """L1 pruning with a ratio per group (see :func:`group_of`), ranked within each group."""
    by_group: dict[str, list] = {}
    for name, m in prunable(model, scopes):
        by_group.setdefault(group_of(name), []).append((m, "weight"))
    for g, params in by_group.items():
        r = float(ratios.get(g, 0.0))
        if r > 0:
            _global_unstructured(params, r)
    return model


def make_permanent(model):
    """Fold every mask into its weight (``prune.remove``): plain tensors with zeros remain."""
    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(m, hook._tensor_name)
    return model


def pruned_copy(model, scopes, amount, ranking: str = "l1"):
    m = copy.deepcopy(model)
    global_magnitude(m, scopes, amount, ranking)
    return make_permanent(m)


def sparsity_table(model, scopes=SCOPES):
    """Per layer: scope, group, weights, nonzero, sparsity (masks included if attached)."""
    import pandas as pd

    rows = []
    for name, m in prunable(model, scopes):
        w = m.weight.detach()
        rows.append({"layer": name, "scope": scope_of(name), "group": group_of(name), "weights": w.numel(),
                     "nonzero": int(torch.count_nonzero(w)), "shape": tuple(w.shape)})
    df = pd.DataFrame(rows)
    df["sparsity"] = 1 - df["nonzero"] / df["weights"]
    return df


def group_sparsity(model, scopes="all"):
    """Per group (see :func:`group_of`): weights, nonzero, sparsity."""
    g = sparsity_table(model, scopes).groupby("group")[["weights", "nonzero"]].sum()
    return g.assign(sparsity=1 - g["nonzero"] / g["weights"])


def _zero_fraction(tensors) -> float:
    tensors = [t.detach() for t in tensors]
    return 1 - sum(int(torch.count_nonzero(t)) for t in tensors) / sum(t.numel() for t in tensors)


def sparsity(model, scopes=DEFAULT_SCOPES) -> float:
    """Fraction of zeros among the prunable weights of ``scopes`` (masks included if attached)."""
    return _zero_fraction([m.weight for _, m in prunable(model, scopes)])


def state_sparsity(state: dict, model, scopes=DEFAULT_SCOPES) -> float:
    """The same fraction, read from a state dict (e.g. a saved file) instead of a live model."""
    return _zero_fraction([state[f"{n}.weight"] for n, _ in prunable(model, scopes)])


# ----------------------------------------------------------------------------- experiments
def one_shot_sweep(model, cfg, dataset: str, scopes_list, ratios, progress: bool = True, ranking: str = "l1"):
    """The paper's experiment: prune a copy of ``model`` once per (scope, ratio), no
    fine-tuning, and evaluate it.  Sparsity is also reported over all prunable weights."""
    import pandas as pd
    from tqdm.auto import tqdm

    from .evaluate import COCO_KEYS, coco

    rows = []
    grid = [(s, r) for s in scopes_list for r in ratios]
    for scopes, r in tqdm(grid, desc="one-shot sweep", disable=not progress):
        m = pruned_copy(model, scopes, r, ranking) if r > 0 else model
        met = coco(m, cfg, dataset, quiet=True)
        rows.append({"scope": scopes, "ranking": ranking, "ratio": r, "sparsity_scope": sparsity(m, scopes),
                     "sparsity_all": sparsity(m), **{k: met[k] for k in COCO_KEYS}})
    return pd.DataFrame(rows)


def sensitivity_scan(model, cfg, dataset: str, ratios, groups=None, progress: bool = True):
    """Prune one group at a time (a backbone stage, the FPN, the RPN, the box head) at each
    ratio and evaluate: which parts of the detector tolerate pruning."""
    import pandas as pd
    from tqdm.auto import tqdm

    from .evaluate import coco

    groups = groups or sorted({group_of(n) for n, _ in prunable(model, "all")})
    sizes = group_sparsity(model)["weights"]
    rows = []
    for g, r in tqdm([(g, r) for g in groups for r in ratios], desc="sensitivity", disable=not progress):
        m = copy.deepcopy(model)
        make_permanent(layerwise_magnitude(m, {g: r}))
        met = coco(m, cfg, dataset, quiet=True)
        rows.append({"group": g, "ratio": r, "weights": int(sizes[g]), "AP50": met["AP50"], "AP": met["AP"]})
    return pd.DataFrame(rows)


def ratios_from_sensitivity(scan, baseline_ap50: float, tolerance: float = 1.0) -> dict[str, float]:
    """Per group, the largest scanned ratio whose AP50 stays within ``tolerance`` of the baseline."""
    out = {}
    for g, df in scan.groupby("group"):
        ok = df[df["AP50"] >= baseline_ap50 - tolerance]
        out[g] = float(ok["ratio"].max()) if len(ok) else 0.0
    return out


# ----------------------------------------------------------------------------- schedules
def cubic_schedule(step: int, start: int, end: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3, clamped."""
    if step <= start:
        return initial
    if step >= end:
        return final
    frac = (step - start) / max(1, end - start)
    return final + (initial - final) * (1 - frac) ** 3


class GradualPruning(HookBase):
    """Raises the global sparsity of ``scopes`` on the cubic schedule while training goes on.

    Masks are attached before training (the optimizer keeps updating ``weight_orig``; the masked
    entries stay zero in the forward pass); every ``every`` iterations between ``start`` and
    ``end`` the smallest surviving weights are masked until the scheduled sparsity is reached.
    """

    def __init__(self, scopes="all", final: float = 0.8, start: int = 0, end: int = 1000, every: int = 20,
                 ranking: str = "l1"):
        self.scopes, self.final, self.start, self.end, self.every = scopes, final, start, end, max(1, every)
        self.ranking = _check_ranking(ranking)
        self.history: list[tuple[int, float]] = []

    def _model(self):
        return unwrap(self.trainer.model)

    def before_train(self):
        targets = _targets(self._model(), self.scopes)
        _global_unstructured(targets, 0.0)  # masks of ones, on contiguous tensors
        self._apply(self.trainer.start_iter)

    def _apply(self, step: int):
        model = self._model()
        target = cubic_schedule(step, self.start, self.end, self.final)
        current = sparsity(model, self.scopes)
        if target > current + 1e-6:
            amount = (target - current) / (1 - current)  # a fraction of the surviving weights
            _prune_global(_targets(model, self.scopes), amount, self.ranking)
        self.history.append((step, sparsity(model, self.scopes)))
        self.trainer.storage.put_scalar("sparsity", self.history[-1][1], smoothing_hint=False)

    def after_step(self):
        done = self.trainer.iter + 1
        if (done % self.every == 0 and done <= self.end + self.every) or done == self.trainer.max_iter:
            self._apply(done)

    def state(self) -> dict:
        """What the run hands back (also from worker processes): ``(iteration, sparsity)`` pairs."""
        return {"history": [list(h) for h in self.history]}

    def finalize(self, model) -> None:
        """Fold the masks into the weights before the trained model is saved."""
        make_permanent(model)


# ----------------------------------------------------------------------------- sparse file
def save_sparse(model, path) -> Path:
    """Write the weights with every mostly-zero tensor stored as a bitmask + its nonzero
    values (fp32), everything else dense; a plain ``.npz`` (no pickle).  Returns the path."""
    from .io import atomic_write

    arrays = {}
    for k, v in model.state_dict().items():
        a = v.detach().cpu().numpy()
        nz = np.count_nonzero(a)
        if a.dtype == np.float32 and a.size >= 64 and nz < a.size * 0.97:  # bitmask pays off
            mask = a != 0
            arrays[f"sparse/{k}/mask"] = np.packbits(mask.ravel())
            arrays[f"sparse/{k}/values"] = a[mask]
            arrays[f"sparse/{k}/shape"] = np.array(a.shape, np.int64)
        else:
            arrays[f"dense/{k}"] = a

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(path, write)


def load_sparse(path) -> dict[str, torch.Tensor]:
    """Inverse of :func:`save_sparse`: a state dict of dense tensors."""
    out = {}
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        for k in keys:
            if k.startswith("dense/"):
                out[k[6:]] = torch.from_numpy(z[k].copy())
        for k in keys:
            if k.startswith("sparse/") and k.endswith("/shape"):
                name = k[7:-6]
                shape = tuple(z[k])
                n = int(np.prod(shape))
                mask = np.unpackbits(z[f"sparse/{name}/mask"])[:n].astype(bool)
                dense = np.zeros(n, np.float32)
                dense[mask] = z[f"sparse/{name}/values"]
                out[name] = torch.from_numpy(dense.reshape(shape))
    return out
