"""Weight sharing (Han, Mao & Dally, Deep Compression, 2016) and an int8 baseline.

Each layer's nonzero weights are clustered by 1-D k-means into ``2**bits`` shared values; the
layer then stores a small codebook plus one ``bits``-bit index per nonzero weight.  Zeros left by
pruning stay zeros.  Centroid fine-tuning keeps the assignments fixed and trains the codebook:
the gradient of every weight in a cluster is summed into its centroid.

Depthwise convolutions are not shared: their filters differ in scale from channel to channel, so
they get int8 with one scale per output channel instead.  Frozen BatchNorm layers are folded to a
scale and a shift (:func:`fold_frozen_bn`), so that the file stores two numbers per channel, not four.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .cluster import kmeans_1d
from .prune import SCOPES, prunable
from .train import short_finetune


@dataclass
class SharedLayer:
    name: str
    shape: tuple
    bits: int
    codebook: np.ndarray  # float32 (k,)
    codes: np.ndarray     # int64 per nonzero weight, in row-major order of the nonzero positions
    mask: np.ndarray      # bool, full shape: where the nonzero weights are

    def dense(self) -> np.ndarray:
        out = np.zeros(self.mask.size, np.float32)
        out[self.mask.ravel()] = self.codebook[self.codes]
        return out.reshape(self.shape)


def layer_kind(module) -> str:
    return "fc" if isinstance(module, nn.Linear) else "conv"


def is_depthwise(module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1


def shareable(model, scopes):
    """The layers that get one codebook each: every conv/linear of ``scopes`` except grouped
    (depthwise) convolutions.  MobileNetV2's depthwise filters differ in scale from channel to
    channel, so one codebook (or one int8 scale) per tensor fits them badly: they get int8 with one
    scale per channel instead (:func:`quantize_depthwise`)."""
    return [(n, m) for n, m in prunable(model, scopes) if not is_depthwise(m)]


def share_weights(model, bits=5, scopes=SCOPES,
                  init: str = "linear", iters: int = 20, seed: int = 0) -> dict[str, SharedLayer]:
    """Replace every shareable layer's nonzero weights by their k-means centroids, in place.

    ``bits`` is an int, or a dict by layer kind (``{"conv": 5, "fc": 4}``).  Returns the
    codebooks and codes per layer (what the compressed file stores).
    Introduced in notebook 03_weight_sharing, section "Centroid initialisation"."""
    shared = {}
    for name, m in shareable(model, scopes):
        b = bits[layer_kind(m)] if isinstance(bits, dict) else int(bits)
        w = m.weight.detach().cpu().numpy()
        mask = w != 0
        centroids, labels = kmeans_1d(w[mask], 2**b, init=init, iters=iters, seed=seed)
        layer = SharedLayer(name, tuple(w.shape), b, centroids, labels, mask)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(layer.dense()))
        shared[name] = layer
    return shared


def timed_share(model, **kw):
    """(:func:`share_weights`' result, its wall time in seconds).  Introduced in notebook
    03_weight_sharing, section "How fast is 1-D k-means?"."""
    t = time.perf_counter()
    shared = share_weights(model, **kw)
    return shared, time.perf_counter() - t


# ----------------------------------------------------------------------------- fine-tuning
class CentroidWeight:
    """A forward pre-hook that rebuilds ``module.weight`` from trainable centroids.

    ``weight = cat([centroids, 0])[index]`` with ``index`` pointing zeros at the appended 0, so
    autograd sums each cluster's weight gradients into its centroid, and zeros stay zeros.
    """
    def __init__(self, module, layer: SharedLayer):
        del module._parameters["weight"]
        module.centroids = nn.Parameter(torch.from_numpy(layer.codebook.copy()))
        idx = np.full(layer.mask.size, layer.codebook.size, np.int64)
        idx[layer.mask.ravel()] = layer.codes
        module.register_buffer("shared_index", torch.from_numpy(idx.reshape(layer.shape)), persistent=False)
        self.handle = module.register_forward_pre_hook(self)
        self(module, None)

    def __call__(self, module, _inputs):
        table = torch.cat([module.centroids, module.centroids.new_zeros(1)])
        module.weight = table[module.shared_index]


def attach_centroids(model, shared: dict[str, SharedLayer]) -> list[nn.Parameter]:
    modules = dict(model.named_modules())
    hooks = []
    for name, layer in shared.items():
        hooks.append(CentroidWeight(modules[name], layer))
    model._centroid_hooks = hooks
    return [modules[n].centroids for n in shared]


def detach_centroids(model, shared: dict[str, SharedLayer]) -> dict[str, SharedLayer]:
    """Fold trained centroids back into plain weights; return the updated codebooks."""
    modules = dict(model.named_modules())
    for h in getattr(model, "_centroid_hooks", []):
        h.handle.remove()
    out = {}
    for name, layer in shared.items():
        m = modules[name]
        codebook = m.centroids.detach().cpu().numpy().astype(np.float32)
        new = SharedLayer(name, layer.shape, layer.bits, codebook, layer.codes, layer.mask)
        del m._parameters["centroids"]
        del m._buffers["shared_index"]
        if "weight" in m.__dict__:
            del m.__dict__["weight"]
        m.weight = nn.Parameter(torch.from_numpy(new.dense()))
        out[name] = new
    model._centroid_hooks = []
    return out


def finetune_centroids(model, cfg, shared, iters: int = 100, lr: float = 0.001, progress: bool = True,
                       extra_hooks=()) -> dict:
    """Train only the centroids (assignments fixed) with Detectron2's SimpleTrainer on the
    config's training set.  Returns updated ``shared``, the loss history and ``hook_states`` (each
    of ``extra_hooks``' ``state()``: hook factories, as :func:`wildlib.train.train` takes them, e.g. the
    dense teacher's :class:`wildlib.distill.Distill`, whose terms then join the loss).  Seeded from
    ``cfg.SEED`` as :func:`wildlib.train.train` is (the loader's image order would otherwise come
    from the process's global RNG), and run with PyTorch's deterministic algorithms: the centroid
    gradient is a scatter-add (``table[index]``'s backward) whose threaded float sums otherwise
    differ run to run, enough to move AP50 after 100 iterations by tenths.  Bit-for-bit on CPU (on
    CUDA some kernels have no deterministic version: PyTorch warns).  Like ``train``, it leaves the
    process's global RNGs seeded.
    Introduced in notebook 03_weight_sharing, section "The chosen variant, with centroid fine-tuning, written to disk"."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = attach_centroids(model, shared)
    # fp32 whatever the training precision: the centroids the .wlc stores are what trained
    run = short_finetune(model, cfg, params, iters, lr, progress=progress, extra_hooks=extra_hooks, deterministic=True,
                         precision="fp32")
    return {"shared": detach_centroids(model, shared), **run}


# ----------------------------------------------------------------------------- int8, BatchNorm
def _int8(w: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray | float, np.ndarray]:
    """Symmetric int8: (values, scale(s), dequantized float32 weights)."""
    if per_channel:
        peak = np.abs(w.reshape(w.shape[0], -1)).max(1)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        bcast = scale.reshape((-1,) + (1,) * (w.ndim - 1))
        q = np.clip(np.round(w / bcast), -127, 127).astype(np.int8)
        return q, scale, q.astype(np.float32) * bcast
    scale = np.float32(np.abs(w).max() / 127.0) or np.float32(1.0)
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, float(scale), q.astype(np.float32) * scale


def _quantize(model, layers, per_channel: bool) -> dict:
    out = {}
    for name, m in layers:
        q, scale, deq = _int8(m.weight.detach().cpu().numpy(), per_channel)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(deq))
        out[name] = (q, scale)
    return out


def quantize_int8(model, scopes=SCOPES, per_channel: bool = True) -> dict:
    """Symmetric int8 of every conv and linear weight of ``scopes``, in place (the weights become
    the dequantized values); one scale per output channel, or per tensor.  Returns
    {layer: (int8 array, scale or scales)}: what the compressed file stores.
    Introduced in notebook 03_weight_sharing, section "int8: the paper's "8 bits", done plainly"."""
    return _quantize(model, prunable(model, scopes), per_channel)


def quantize_depthwise(model, scopes=SCOPES) -> dict:
    """Per-channel int8 of the depthwise convolutions only (the layers weight sharing skips).

    Introduced in notebook 03_weight_sharing, section "The chosen variant, with centroid fine-tuning, written to disk"."""
    return _quantize(model, [(n, m) for n, m in prunable(model, scopes) if is_depthwise(m)], True)


def fold_frozen_bn(model) -> int:
    """Rewrite every ``FrozenBatchNorm2d`` as a pure scale and shift, in place: ``weight`` <- the
    per-channel scale, ``bias`` <- the shift, ``running_mean`` <- 0, ``running_var`` <- 1 - eps.
    The layer computes the same function (to float rounding) and its statistics become constants
    that cost nothing to store.  Returns how many layers were folded.
    Introduced in notebook 03_weight_sharing, section "The chosen variant, with centroid fine-tuning, written to disk"."""
    from detectron2.layers import FrozenBatchNorm2d

    n = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                scale = m.weight * (m.running_var + m.eps).rsqrt()
                m.bias.copy_(m.bias - m.running_mean * scale)
                m.weight.copy_(scale)
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)
                n += 1
    return n
