"""Frozen Detectron2 configs built from the project's named config files plus overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

CONFIG_DIR = Path(__file__).with_name("configs")


class ConfigError(ValueError):
    pass


def available() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def add_wildlib_config(cfg) -> None:
    """Keys that Detectron2 does not have: the MobileNetV2 backbone's options, the memory format, the
    training precision."""
    from detectron2.config import CfgNode as CN

    if "MOBILENET" not in cfg.MODEL:
        cfg.MODEL.MOBILENET = CN()
        cfg.MODEL.MOBILENET.PRETRAINED = "imagenet"
        cfg.MODEL.MOBILENET.NORM = "FrozenBN"
        cfg.MODEL.MOBILENET.OUT_FEATURES = ["m2", "m3", "m4", "m5"]
    if "HIDDEN_CHANNELS" not in cfg.MODEL.MOBILENET:
        # channel pruning (wildlib.channels, notebook 04): the expansion width of each inverted
        # residual block, features[1]..features[17]; empty = torchvision's widths
        cfg.MODEL.MOBILENET.HIDDEN_CHANNELS = []
    if "TILE" not in cfg.INPUT:
        cfg.INPUT.TILE = []  # [size, overlap]: train on tiles, detect slice by slice (wildlib.tiles)
    if "CHANNELS_LAST" not in cfg.MODEL:
        # NHWC weights and activations: oneDNN's CPU convolutions (MobileNet's depthwise ones
        # above all) run faster so; measured in notebook 01, "Where the time goes"
        cfg.MODEL.CHANNELS_LAST = False
    if "PRECISION" not in cfg.SOLVER:
        # "bf16": each training step's forward (losses included) under autocast at bfloat16, weights,
        # gradients and the SGD step in fp32 (wildlib.train.AutocastTrainer); "fp32": none
        cfg.SOLVER.PRECISION = "fp32"


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


def input_geometry(cfg) -> dict:
    """What the data checks of notebook 00 compare the data with: test-time input size, the
    smallest anchor, the detections kept per image."""
    return {"min_size_test": int(cfg.INPUT.MIN_SIZE_TEST), "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
            "smallest_anchor": float(min(min(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES)),
            "detections_per_image": int(cfg.TEST.DETECTIONS_PER_IMAGE)}


def get_config(name_or_path: str = "mobilenet_fpn_cpu", overrides=None, freeze: bool = True):
    """``get_cfg()`` + our keys + a named config (or a YAML path) + ``overrides``, frozen.

    Introduced in notebook 00_explore_data, section "Checks: what would fail quietly later"."""
    from detectron2.config import get_cfg

    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such config (named configs: {', '.join(available())})")
    import yaml

    cfg = get_cfg()
    add_wildlib_config(cfg)
    try:  # safe YAML only: a !!python tag in a config file is refused, never run
        cfg.merge_from_file(str(path), allow_unsafe=False)
    except (yaml.YAMLError, KeyError, ValueError, TypeError, AssertionError) as exc:
        raise ConfigError(f"{path}: not a valid config ({type(exc).__name__}: {exc})") from None
    cfg.merge_from_list(_as_list(overrides))
    if freeze:
        cfg.freeze()
    return cfg

