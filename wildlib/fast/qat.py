"""Quantization-aware fine-tuning of the weights the one int8 graph quantizes (issue 33).

Post-training int8 rounds each weight to its layer's int8 grid once, after training.  Here the
fine-tuning sees that rounding: every convolution and FC weight that :func:`quantize_graph` puts in
int8 (the backbone, FPN, RPN head and box head; the predictor stays float) is replaced, for the
forward pass, by its fake-quantized value on exactly the grid ONNX Runtime will use — per output
channel, symmetric, int8 in [-127, 127], scale = the channel's largest magnitude / 127, zero point 0
(``quantize_static`` with ``per_channel=True`` and int8 weights: ``WeightSymmetric``) — and the
gradient passes straight through the rounding (``torch.fake_quantize_per_channel_affine``).  At the
end the weights are left on that grid, so the int8 graph's weights are the fine-tuned ones, not a
rounding of them.

Why the unfused weight's grid is the graph's: ONNX Runtime fuses a convolution with the frozen
BatchNorm after it (a per-channel scale c) before it quantizes; per channel, quantizing ``c * w``
with the scale ``c * max|w| / 127`` gives the integers of quantizing ``w`` with ``max|w| / 127``.

What is not simulated: the activations.  Their uint8 ranges still come from the calibration after
fine-tuning (as post-training quantization does), so the fine-tuning learns the weights' rounding
only; the notebook pairs the result with post-training quantization on `valid`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..prune import prunable
from ..train import short_finetune

QMIN, QMAX = -127, 127  # ONNX Runtime's symmetric int8 range for weights


def weight_scales(w: torch.Tensor) -> torch.Tensor:
    """Per output channel (dim 0): the largest magnitude / 127, 1.0 for an all-zero channel (as
    ONNX Runtime's ``compute_scale_zp`` gives a scale of 1 below the smallest float)."""
    peak = w.detach().abs().reshape(w.shape[0], -1).amax(1)
    return torch.where(peak > torch.finfo(w.dtype).tiny, peak / QMAX, torch.ones_like(peak))


def fake_quantize(w: torch.Tensor) -> torch.Tensor:
    """``w`` on its per-channel symmetric int8 grid; the gradient passes straight through."""
    scale = weight_scales(w).float()
    return torch.fake_quantize_per_channel_affine(w.contiguous(), scale, torch.zeros_like(scale, dtype=torch.int32), 0, QMIN, QMAX)


class WeightFakeQuant(nn.Module):
    """A parametrization (``torch.nn.utils.parametrize``): the weight as the int8 graph sees it."""

    def forward(self, w):
        return fake_quantize(w)


def quantized_layers(model) -> list[tuple[str, nn.Module]]:
    """The convolutions and FC layers the one int8 graph quantizes: backbone, FPN, RPN head, box
    head (:func:`wildlib.prune.prunable`'s default scopes; the box predictor stays float)."""
    return prunable(model)


def attach_fake_quant(model) -> int:
    """Fake-quantize the weights of :func:`quantized_layers` in every forward pass; how many."""
    layers = quantized_layers(model)
    for _, m in layers:
        parametrize.register_parametrization(m, "weight", WeightFakeQuant())
    return len(layers)


def detach_fake_quant(model) -> None:
    """Remove the parametrizations, leaving each weight on its int8 grid."""
    for _, m in quantized_layers(model):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


def on_grid(model, atol: float = 1e-6) -> bool:
    """Whether every weight of :func:`quantized_layers` lies on its own int8 grid.
    Introduced in notebook 04_prune_channels, section 6."""
    with torch.no_grad():
        return all(torch.allclose(m.weight, fake_quantize(m.weight), rtol=0, atol=atol)
                   for _, m in quantized_layers(model))


def train_at(model, cfg, setting: dict):
    """``model`` set to train at a test-time ``setting`` (``pre_nms``, ``post_nms``: the RPN's
    training top-k; ``min_size``: the training images' shorter side, in the returned copy of
    ``cfg``), so that a fine-tuning sees what the deployed graph will see, not only the
    training-time setting.  Introduced in notebook 04_prune_channels, section 6."""
    rpn = model.proposal_generator
    rpn.pre_nms_topk[True], rpn.post_nms_topk[True] = int(setting["pre_nms"]), int(setting["post_nms"])
    out = cfg.clone()
    out.defrost()
    out.INPUT.MIN_SIZE_TRAIN = (int(setting["min_size"]),)
    out.INPUT.MAX_SIZE_TRAIN = out.INPUT.MAX_SIZE_TEST
    out.freeze()
    return out


def finetune(model, cfg, iters: int, lr: float, progress: bool = True, extra_hooks=()) -> dict:
    """Quantization-aware fine-tuning of ``model`` (in place): its trainable parameters train, the
    quantized layers' weights through their int8 grid (:func:`attach_fake_quant`), for ``iters`` iterations at ``lr``
    (:func:`wildlib.train.short_finetune`: ``cfg``'s training set and seed; ``extra_hooks`` such as
    the dense teacher); the weights are left on the grid (:func:`detach_fake_quant`).  Returns the run and
    ``layers``, how many layers were fake-quantized.
    Introduced in notebook 04_prune_channels, section 6."""
    n = attach_fake_quant(model)
    try:
        # fp32 whatever the training precision: bf16 would round the int8 grid's values that ORT computes exactly
        run = short_finetune(model, cfg, [p for p in model.parameters() if p.requires_grad], iters, lr,
                             progress=progress, extra_hooks=extra_hooks, precision="fp32")
    finally:
        detach_fake_quant(model)
    return {**run, "layers": n}
