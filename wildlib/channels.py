"""Structured (channel) pruning: whole channels and units are removed, so that the pruned detector is
a genuinely smaller *dense* network that runs faster on the same kernels.  Introduced in notebook
04_prune_channels.

Why not Torch-Pruning: its dependency graph (DepGraph) is the field's tool for this, but it traces
the model with an example input, and a Detectron2 ``GeneralizedRCNN`` takes a list of dicts and
returns ``Instances``: tracing stops in the proposal generator (docs/speed.md).  This detector's
coupled channels are few and fixed, so they are written out here as *groups*; each group is a set of
channels that must be removed together:

``block<i>``   the expansion channels of MobileNetV2's inverted-residual block ``features[i]``
               (expand 1x1 conv + BN, depthwise 3x3 conv + BN, and the inputs of the project 1x1 conv);
               they never leave the block, so every block is its own group (block 1 has no expansion).
``fpn_inner``  the FPN's lateral-conv outputs: the top-down pathway adds them level to level, so one
               channel set for all levels, read by every output conv.
``fpn_out``    the FPN's outputs: one RPN head and one box head read every level (and p6 is p5
               max-pooled), so again one channel set, read by the RPN conv and by the box head's
               first FC layer (7x7 inputs per channel).
``rpn``        the RPN's hidden conv channels, read by the objectness and box-delta convs.
``box_fc<k>``  the units of the box head's k-th FC layer, read by the next FC layer or the predictor.

A channel's importance is its magnitude, the paper's criterion applied to whole filters: the L1
norm of the weights that write it (for a BatchNorm'd channel, the BN's scale gamma/sigma) times the
L1 norm of the weights that read it, each normalised by its layer's mean.

Families (``m2`` .. ``m5``: the blocks of a backbone stage; ``fpn``; ``rpn``; ``box_head``) share one
pruning ratio.  The pruned widths are ordinary config keys (``MODEL.MOBILENET.HIDDEN_CHANNELS``,
``MODEL.FPN.OUT_CHANNELS``, ``MODEL.RPN.CONV_DIMS``, ``MODEL.ROI_BOX_HEAD.FC_DIM``), so a pruned model
is rebuilt from its config and weights file alone: no pickled modules.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from .evaluate import best_within, coco, side_by_side
from .io import progress
from .parts import BACKBONE_STAGES
from .profile import macs
from .widths import NUM_BLOCKS, block_parts, default_hidden_widths, hidden_width, narrow_block_, narrow_conv_, narrow_linear_

FAMILIES = ("m2", "m3", "m4", "m5", "fpn", "rpn", "box_head")
ROUND_TO = 8  # kept widths are multiples of 8: what SIMD kernels like


@dataclass(frozen=True)
class Group:
    name: str
    family: str
    width: int


# ------------------------------------------------------------------------------- the model's groups


def _blocks(model) -> dict[int, nn.Module]:
    bottom_up = model.backbone.bottom_up
    out = {}
    for stage in bottom_up.stage_names:
        a, _, _, _ = BACKBONE_STAGES[stage]
        for j, block in enumerate(getattr(bottom_up, stage)):
            if hasattr(block, "conv") and len(block.conv) == 4:
                out[a + j] = block
    return out


def _stage_of(index: int) -> str:
    for name, (a, b, _, _) in BACKBONE_STAGES.items():
        if a <= index < b:
            return "m2" if name == "stem" else name  # the stem's one expanding block counts with m2
    raise ValueError(index)


def _fcs(model) -> list[nn.Linear]:
    head = model.roi_heads.box_head
    if getattr(head, "conv_norm_relus", None):
        raise NotImplementedError("box heads with conv layers are not channel-pruned")
    return [getattr(head, f"fc{k + 1}") for k in range(len(head.fcs))]


def groups(model) -> list[Group]:
    """Every prunable channel group of a MobileNetV2-FPN Faster R-CNN, with its current width."""
    out = [Group(f"block{i}", _stage_of(i), hidden_width(b)) for i, b in _blocks(model).items()]
    fpn = model.backbone
    out += [Group("fpn_inner", "fpn", fpn.lateral_convs[0].out_channels),
            Group("fpn_out", "fpn", fpn.output_convs[0].out_channels),
            Group("rpn", "rpn", model.proposal_generator.rpn_head.conv.out_channels)]
    out += [Group(f"box_fc{k + 1}", "box_head", fc.out_features) for k, fc in enumerate(_fcs(model))]
    return out


def _pooled_cols(fc: nn.Linear, channels: int) -> torch.Tensor:
    """fc's weight as (out, channels, positions): the box head reads channel-major 7x7 blocks."""
    return fc.weight.detach().view(fc.out_features, channels, -1)


def _normed(x: torch.Tensor) -> torch.Tensor:
    return x / x.mean().clamp_min(1e-12)


def _rows(w: torch.Tensor) -> torch.Tensor:  # L1 of each output row / filter
    return w.detach().abs().flatten(1).sum(1)


def _cols(w: torch.Tensor) -> torch.Tensor:  # L1 of each input column
    return w.detach().abs().transpose(0, 1).flatten(1).sum(1)


def importance(model, group: Group) -> torch.Tensor:
    """Per channel of ``group``: (normalised L1 of what writes it) x (normalised L1 of what reads it)."""
    name = group.name
    if name.startswith("block"):
        _, _, _, d_norm, _, proj = block_parts(_blocks(model)[int(name[5:])])
        scale = d_norm.weight.detach().abs() / torch.sqrt(d_norm.running_var + d_norm.eps)
        return _normed(scale) * _normed(_cols(proj.weight))
    fpn, rpn_head = model.backbone, model.proposal_generator.rpn_head
    fcs = _fcs(model)
    if name == "fpn_inner":
        write = sum(_normed(_rows(c.weight)) for c in fpn.lateral_convs)
        read = sum(_normed(_cols(c.weight)) for c in fpn.output_convs)
    elif name == "fpn_out":
        write = sum(_normed(_rows(c.weight)) for c in fpn.output_convs)
        pooled = _pooled_cols(fcs[0], group.width).abs().sum(dim=(0, 2))
        read = _normed(_cols(rpn_head.conv.weight)) + _normed(pooled)
    elif name == "rpn":
        write = _normed(_rows(rpn_head.conv.weight))
        read = _normed(_cols(rpn_head.objectness_logits.weight)) + _normed(_cols(rpn_head.anchor_deltas.weight))
    elif name.startswith("box_fc"):
        k = int(name[6:]) - 1
        write = _normed(_rows(fcs[k].weight))
        if k + 1 < len(fcs):
            read = _normed(_cols(fcs[k + 1].weight))
        else:
            pred = model.roi_heads.box_predictor
            read = _normed(_cols(pred.cls_score.weight)) + _normed(_cols(pred.bbox_pred.weight))
    else:
        raise KeyError(name)
    return write * read


def narrow_group_(model, group: Group, keep: torch.Tensor) -> None:
    """Remove every channel of ``group`` but ``keep`` (sorted indices), in place."""
    keep = torch.as_tensor(sorted(int(i) for i in keep), dtype=torch.long)
    name = group.name
    fpn, rpn_head = model.backbone, model.proposal_generator.rpn_head
    if name.startswith("block"):
        narrow_block_(_blocks(model)[int(name[5:])], keep)
    elif name == "fpn_inner":
        for c in fpn.lateral_convs:
            narrow_conv_(c, out=keep)
        for c in fpn.output_convs:
            narrow_conv_(c, inp=keep)
    elif name == "fpn_out":
        for c in fpn.output_convs:
            narrow_conv_(c, out=keep)
        fpn._out_feature_channels = {k: len(keep) for k in fpn._out_feature_channels}
        narrow_conv_(rpn_head.conv, inp=keep)
        fc1 = _fcs(model)[0]
        per = fc1.in_features // group.width
        narrow_linear_(fc1, inp=(keep[:, None] * per + torch.arange(per)).flatten())
    elif name == "rpn":
        narrow_conv_(rpn_head.conv, out=keep)
        narrow_conv_(rpn_head.objectness_logits, inp=keep)
        narrow_conv_(rpn_head.anchor_deltas, inp=keep)
    elif name.startswith("box_fc"):
        fcs = _fcs(model)
        k = int(name[6:]) - 1
        narrow_linear_(fcs[k], out=keep)
        if k + 1 < len(fcs):
            narrow_linear_(fcs[k + 1], inp=keep)
        else:
            pred = model.roi_heads.box_predictor
            narrow_linear_(pred.cls_score, inp=keep)
            narrow_linear_(pred.bbox_pred, inp=keep)
            model.roi_heads.box_head._output_size = len(keep)
    else:
        raise KeyError(name)


def _zero_points(model, group: Group) -> list[nn.Module]:
    """Modules whose outputs carry ``group``'s channels (dim 1): zeroing them there is what removing
    the channels does."""
    name = group.name
    if name.startswith("block"):
        return [block_parts(_blocks(model)[int(name[5:])])[4]]
    if name == "fpn_inner":
        return list(model.backbone.lateral_convs)
    if name == "fpn_out":
        return list(model.backbone.output_convs)
    if name == "rpn":
        return [model.proposal_generator.rpn_head.conv]
    if name.startswith("box_fc"):
        return [_fcs(model)[int(name[6:]) - 1]]
    raise KeyError(name)


@contextlib.contextmanager
def zeroed(model, group: Group, drop):
    """While open, ``group``'s channels ``drop`` output zeros: the reference that channel surgery
    must reproduce exactly (tests)."""
    drop = torch.as_tensor(list(drop), dtype=torch.long)

    def hook(_module, _inp, out):
        out = out.clone()
        out.index_fill_(1, drop, 0.0)
        return out

    handles = [m.register_forward_hook(hook) for m in _zero_points(model, group)]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


# ------------------------------------------------------------------------------ pruning a model


def kept_width(width: int, ratio: float, multiple: int = ROUND_TO) -> int:
    """Channels kept when ``ratio`` of ``width`` is removed: rounded to a multiple of ``multiple``,
    at least ``multiple`` (or the whole width, if smaller)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"a pruning ratio must be in [0, 1), got {ratio}")
    if width <= multiple:
        return width
    return int(min(width, max(multiple, round(width * (1.0 - ratio) / multiple) * multiple)))


def plan(model, ratios: dict[str, float]) -> dict[str, torch.Tensor]:
    """Channels to keep per group: the most important ``1 - ratio`` of each group of a family in
    ``ratios`` (family -> ratio; families left out are not pruned)."""
    unknown = set(ratios) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown families {sorted(unknown)}; families are {list(FAMILIES)}")
    keep = {}
    for g in groups(model):
        r = float(ratios.get(g.family, 0.0))
        n = kept_width(g.width, r)
        if n < g.width:
            keep[g.name] = torch.sort(torch.topk(importance(model, g), n).indices).values
    return keep


def prune(model, ratios: dict[str, float], inplace: bool = False):
    """The model with each family's ``ratio`` of channels removed (least important first): a
    smaller dense network.  Families sharing a config width (fpn: inner and out; box_head: every FC)
    keep equal counts, so the widths fit the config keys.
    Introduced in notebook 04_prune_channels, section "3 · Channel pruning: a smaller dense network"."""
    model = model if inplace else copy.deepcopy(model)
    w = model.backbone.output_convs[0].weight  # keep the memory format the weights had
    channels_last = w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    by_name = {g.name: g for g in groups(model)}
    for name, keep in plan(model, ratios).items():
        narrow_group_(model, by_name[name], keep)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def widths(model) -> dict:
    """The config keys that rebuild ``model``'s shapes.

    Introduced in notebook 04_prune_channels, section "Summary"."""
    blocks = _blocks(model)
    defaults = default_hidden_widths()
    hidden = [hidden_width(blocks[i]) if i in blocks else defaults[i - 1] for i in range(1, NUM_BLOCKS + 1)]
    fpn = model.backbone
    inner, out = fpn.lateral_convs[0].out_channels, fpn.output_convs[0].out_channels
    if inner != out:
        raise ValueError(f"FPN inner ({inner}) and output ({out}) widths differ: MODEL.FPN.OUT_CHANNELS holds one")
    fc = {fc.out_features for fc in _fcs(model)}
    if len(fc) != 1:
        raise ValueError(f"box head FC widths differ ({sorted(fc)}): MODEL.ROI_BOX_HEAD.FC_DIM holds one")
    return {"MODEL.MOBILENET.HIDDEN_CHANNELS": [] if hidden == defaults else hidden,
            "MODEL.FPN.OUT_CHANNELS": out,
            "MODEL.RPN.CONV_DIMS": [model.proposal_generator.rpn_head.conv.out_channels],
            "MODEL.ROI_BOX_HEAD.FC_DIM": fc.pop()}


def config_for(cfg, model):
    """``cfg`` with ``model``'s widths, and no ImageNet initialisation (a pruned model always loads
    its own weights).
    Introduced in notebook 04_prune_channels, section "3 · Channel pruning: a smaller dense network"."""
    cfg = cfg.clone()
    cfg.defrost()
    for key, value in widths(model).items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    cfg.MODEL.MOBILENET.PRETRAINED = "none"
    cfg.freeze()
    return cfg


def width_table(before, after):
    """Per group: channels before and after, and the fraction removed.

    Introduced in notebook 04_prune_channels, section "3 · Channel pruning: a smaller dense network"."""
    import pandas as pd

    b = {g.name: g for g in groups(before)}
    rows = [{"group": g.name, "family": g.family, "before": b[g.name].width, "after": g.width,
             "removed": 1 - g.width / b[g.name].width} for g in groups(after)]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------- sensitivity, latency


def sensitivity_scan(model, cfg, dataset: str, ratios, image: dict, families=FAMILIES, max_drop: float | None = None,
                     reference_ap50: float | None = None, speed_inputs: list[dict] | None = None,
                     speed_runs: int = 10):
    """One family pruned at a time (no fine-tuning): AP50, parameters and MACs (on ``image``), and
    with ``speed_inputs`` the ``speedup`` over ``model``, side by side (``speed_runs`` turns of two
    passes each, the second timed: :func:`wildlib.evaluate.side_by_side`; PyTorch fp32: a guide to
    where time is, not the final measurement).  Ratios run from small to
    large; with ``max_drop`` and ``reference_ap50``, a family's larger ratios are skipped once one
    falls below ``reference_ap50 - max_drop``: a clear failure stops the family early (larger
    ratios would only fall further).
    Introduced in notebook 04_prune_channels, section "3 · Channel pruning: a smaller dense network"."""
    import pandas as pd

    rows = []
    for fam in progress(families, "channel families"):
        for r in sorted(ratios):
            pruned = prune(model, {fam: r})
            m = coco(pruned, cfg, dataset, quiet=True)
            row = {"family": fam, "ratio": r, "AP50": m["AP50"], "AP": m["AP"],
                   "params": sum(p.numel() for p in pruned.parameters()), "macs": macs(pruned, image)}
            if speed_inputs:
                row["speedup"] = side_by_side(model, pruned, speed_inputs, runs=speed_runs, warmup=2)["speedup"]
            rows.append(row)
            if max_drop is not None and reference_ap50 is not None and m["AP50"] < reference_ap50 - max_drop:
                break
    return pd.DataFrame(rows)


def ratios_from_scan(scan, reference_ap50: float, max_drop: float, min_speedup: float | None = None) -> dict[str, float]:
    """Per family, the largest scanned ratio whose AP50 (before fine-tuning) stays within
    ``max_drop`` of ``reference_ap50`` (notebook 04: the unpruned model's own AP50, so that the
    scan measures what pruning costs); 0 if none does.  Latency-aware, with ``min_speedup`` (and
    a ``speedup`` column): a ratio must also buy at least that speedup, else the family is not
    worth its accuracy and stays whole."""
    out = {}
    for fam, df in scan.groupby("family", sort=False):
        if min_speedup is not None and "speedup" in df:
            df = df[df["speedup"] >= min_speedup]
        out[fam] = float((best_within(df, "ratio", reference_ap50, max_drop) or {"ratio": 0.0})["ratio"])
    return out
