"""Two of the float parts that stay in PyTorch, run leaner with the same results: the RPN decodes
only the anchors it keeps (:class:`TopKFirstRPN`), and anchors are computed once per feature-map
size (:class:`CachedAnchorGenerator`).  Introduced in notebook 04_prune_channels, section 4."""

from __future__ import annotations

import torch
from detectron2.layers import batched_nms
from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.structures import Boxes, Instances


class TopKFirstRPN(RPN):
    """Detectron2's RPN, except that at test time it decodes only the anchors it keeps: each
    level's logits are sorted as Detectron2 sorts them, the first ``pre_nms_topk`` are kept, and only
    their deltas are applied (Detectron2 decodes all anchors, ~19k at 240x320, then keeps the top
    k).  The rest is ``find_top_rpn_proposals``' inference path, step for step: same proposals,
    ties included.  Training is unchanged."""

    def predict_proposals(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes):
        if self.training:
            return super().predict_proposals(anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes)
        k = self.pre_nms_topk[False]
        boxes, scores, levels = [], [], []
        with torch.no_grad():
            for level, (a, lg, d) in enumerate(zip(anchors, pred_objectness_logits, pred_anchor_deltas)):
                n = min(k, lg.shape[1])
                top, idx = lg.sort(descending=True, dim=1)
                top, idx = top.narrow(1, 0, n), idx.narrow(1, 0, n)
                rows = torch.arange(lg.shape[0], device=lg.device)[:, None]
                picked = a.tensor[idx]
                b = self.box2box_transform.apply_deltas(d[rows, idx].reshape(-1, d.shape[-1]),
                                                        picked.reshape(-1, picked.shape[-1]))
                boxes.append(b.view(lg.shape[0], n, -1))
                scores.append(top)
                levels.append(torch.full((n,), level, dtype=torch.int64, device=lg.device))
            boxes, scores, levels = torch.cat(boxes, dim=1), torch.cat(scores, dim=1), torch.cat(levels)
            return [self._select(Boxes(boxes[i]), scores[i], levels, size) for i, size in enumerate(image_sizes)]

    def _select(self, boxes, scores, levels, image_size):
        valid = torch.isfinite(boxes.tensor).all(dim=1) & torch.isfinite(scores)
        if not valid.all():
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        boxes.clip(image_size)
        keep = boxes.nonempty(threshold=self.min_box_size)
        if keep.sum().item() != len(boxes):
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes.tensor, scores, levels, self.nms_thresh)[: self.post_nms_topk[False]]
        out = Instances(image_size)
        out.proposal_boxes, out.objectness_logits = boxes[keep], scores[keep]
        return out


class CachedAnchorGenerator(DefaultAnchorGenerator):
    """Detectron2's anchors, computed once per set of feature-map sizes and then reused (a fresh
    copy each call: a caller may clip them in place).  In a latency measurement the cache is warm
    after the first image of a size: what a camera's fixed-size stream sees."""

    MAX_SIZES = 32  # distinct input sizes remembered

    def forward(self, features):
        cache = self.__dict__.setdefault("_wl_cache", {})
        key = tuple(tuple(f.shape[-2:]) for f in features) + (str(features[0].device),)
        if key not in cache:
            if len(cache) >= self.MAX_SIZES:
                cache.clear()
            cache[key] = self._grid_anchors([f.shape[-2:] for f in features])
        return [Boxes(t.clone()) for t in cache[key]]


for _cls, _registry in ((TopKFirstRPN, PROPOSAL_GENERATOR_REGISTRY), (CachedAnchorGenerator, ANCHOR_GENERATOR_REGISTRY)):
    if _cls.__name__ not in _registry:
        _registry.register(_cls)

LEAN_NAMES = {"MODEL.PROPOSAL_GENERATOR.NAME": ("RPN", "TopKFirstRPN"),
              "MODEL.ANCHOR_GENERATOR.NAME": ("DefaultAnchorGenerator", "CachedAnchorGenerator")}


def lean(model):
    """``model`` (in place) with :class:`TopKFirstRPN` and :class:`CachedAnchorGenerator` in place of
    Detectron2's RPN and anchor generator (the same state: only methods change).
    Introduced in notebook 04_prune_channels, section "4 · int8 inference with real int8 kernels"."""
    pg = model.proposal_generator
    if type(pg) is RPN:
        pg.__class__ = TopKFirstRPN
    if type(pg.anchor_generator) is DefaultAnchorGenerator:
        pg.anchor_generator.__class__ = CachedAnchorGenerator
    return model


def lean_config(cfg):
    """``cfg`` naming the lean RPN and anchor generator (what :func:`load` then builds directly)."""
    cfg = cfg.clone()
    cfg.defrost()
    for key, (old, new) in LEAN_NAMES.items():
        node, last = cfg.MODEL[key.split(".")[1]], key.split(".")[2]
        if node[last] == old:
            node[last] = new
    cfg.freeze()
    return cfg
