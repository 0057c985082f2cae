"""A MobileNetV2's widths and the surgery that changes them: the model layer's half of channel
pruning (:mod:`wildlib.channels` decides *which* channels go; this module removes them, and
narrows a fresh network to the widths a pruned model's config records, so that
:mod:`wildlib.modeling` rebuilds it from config and weights alone).  Introduced in notebook
04_prune_channels."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from .config import ConfigError

NUM_BLOCKS = 17  # inverted-residual blocks of MobileNetV2: features[1] .. features[17]


# ---------------------------------------------------------------------------------------- surgery


def _slice_param(module: nn.Module, name: str, index: torch.Tensor, dim: int) -> None:
    t = getattr(module, name, None)
    if t is None:
        return
    new = t.data.index_select(dim, index).clone()
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        setattr(module, name, new)  # a buffer (FrozenBatchNorm2d keeps its affine terms as buffers)


def narrow_conv_(conv: nn.Conv2d, out: torch.Tensor | None = None, inp: torch.Tensor | None = None) -> None:
    """Keep output channels ``out`` and input channels ``inp`` of ``conv``, in place (a depthwise
    conv is narrowed through ``out`` alone: its groups follow)."""
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if conv.groups > 1 and not depthwise:
        raise NotImplementedError("grouped (not depthwise) convolutions are not channel-pruned")
    if out is not None:
        _slice_param(conv, "weight", out, 0)
        _slice_param(conv, "bias", out, 0)
        conv.out_channels = len(out)
        if depthwise:
            conv.in_channels = conv.groups = len(out)
        norm = getattr(conv, "norm", None)  # detectron2's Conv2d may carry its norm
        if norm is not None:
            narrow_norm_(norm, out)
    if inp is not None and not depthwise:
        _slice_param(conv, "weight", inp, 1)
        conv.in_channels = len(inp)


def narrow_norm_(norm: nn.Module, keep: torch.Tensor) -> None:
    if isinstance(norm, nn.GroupNorm):
        raise NotImplementedError("GroupNorm layers are not channel-pruned")
    for name in ("weight", "bias", "running_mean", "running_var"):
        _slice_param(norm, name, keep, 0)
    norm.num_features = len(keep)


def narrow_linear_(fc: nn.Linear, out: torch.Tensor | None = None, inp: torch.Tensor | None = None) -> None:
    if out is not None:
        _slice_param(fc, "weight", out, 0)
        _slice_param(fc, "bias", out, 0)
        fc.out_features = len(out)
    if inp is not None:
        _slice_param(fc, "weight", inp, 1)
        fc.in_features = len(inp)


def block_parts(block):
    """(expand conv, expand norm, depthwise conv, depthwise norm, depthwise stage, project conv) of
    an inverted-residual block with an expansion layer."""
    layers = block.conv
    if len(layers) != 4:
        raise ValueError("this block has no expansion layer: its hidden channels are its input's")
    expand, dw, proj = layers[0], layers[1], layers[2]
    return expand[0], expand[1], dw[0], dw[1], dw, proj


def narrow_block_(block, keep: torch.Tensor) -> None:
    e_conv, e_norm, d_conv, d_norm, _, proj = block_parts(block)
    narrow_conv_(e_conv, out=keep)
    narrow_norm_(e_norm, keep)
    narrow_conv_(d_conv, out=keep)
    narrow_norm_(d_norm, keep)
    narrow_conv_(proj, inp=keep)


def default_hidden_widths() -> list[int]:
    """The expansion widths of torchvision's MobileNetV2, block by block (features[1]..[17])."""
    return [hidden_width(b) for b in torchvision.models.mobilenet_v2().features[1:1 + NUM_BLOCKS]]


def hidden_width(block) -> int:
    return block.conv[-3][0].out_channels


def set_hidden_widths(features, widths) -> None:
    """Narrow torchvision MobileNetV2 ``features`` (fresh, untrained) to ``widths``: one expansion
    width per block, features[1]..features[17] (what ``MODEL.MOBILENET.HIDDEN_CHANNELS`` holds)."""
    widths = [int(w) for w in widths]
    if len(widths) != NUM_BLOCKS:
        raise ConfigError(f"MODEL.MOBILENET.HIDDEN_CHANNELS needs {NUM_BLOCKS} widths (features[1]..[17]), "
                          f"got {len(widths)}")
    for i, w in enumerate(widths, start=1):
        full = hidden_width(features[i])
        if not 1 <= w <= full or (len(features[i].conv) != 4 and w != full):
            raise ConfigError(f"MODEL.MOBILENET.HIDDEN_CHANNELS[{i - 1}] = {w}: block {i} takes 1..{full}"
                              + ("" if len(features[i].conv) == 4 else f" (exactly {full}: no expansion layer)"))
        if w < full:
            narrow_block_(features[i], torch.arange(w))
