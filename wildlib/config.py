"""Frozen Detectron2 configs built from the project's named config files plus overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

CONFIG_DIR = Path(__file__).with_name("configs")


def available() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def add_wildlib_config(cfg) -> None:
    """Keys that Detectron2 does not have: the MobileNetV2 backbone's options, the memory format."""
    from detectron2.config import CfgNode as CN

    if "MOBILENET" not in cfg.MODEL:
        cfg.MODEL.MOBILENET = CN()
        cfg.MODEL.MOBILENET.PRETRAINED = "imagenet"
        cfg.MODEL.MOBILENET.NORM = "FrozenBN"
        cfg.MODEL.MOBILENET.OUT_FEATURES = ["m2", "m3", "m4", "m5"]
    if "CHANNELS_LAST" not in cfg.MODEL:
        # NHWC weights and activations: oneDNN's CPU convolutions (MobileNet's depthwise ones
        # above all) run faster so; measured in notebook 01, "Where the time goes"
        cfg.MODEL.CHANNELS_LAST = False


def _as_list(overrides) -> list:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        out = []
        for k, v in overrides.items():
            out += [k, v]
        return out
    if isinstance(overrides, Sequence) and not isinstance(overrides, str):
        if len(overrides) % 2:
            raise ValueError(f"overrides must be KEY VALUE pairs, got an odd number: {list(overrides)}")
        return list(overrides)
    raise TypeError(f"overrides must be a dict or a KEY VALUE list, not {type(overrides).__name__}")


def get_config(name_or_path: str = "mobilenet_fpn_cpu", overrides=None, freeze: bool = True):
    """``get_cfg()`` + our keys + a named config (or a YAML path) + ``overrides``, frozen."""
    from detectron2.config import get_cfg

    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such config (named configs: {', '.join(available())})")
    cfg = get_cfg()
    add_wildlib_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(_as_list(overrides))
    if freeze:
        cfg.freeze()
    return cfg

