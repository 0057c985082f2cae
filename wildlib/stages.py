"""How the stages hand over to each other through ``RUN_DIR/<NN_stage>/`` folders."""

from __future__ import annotations

from pathlib import Path

import yaml

from .io import read_json, resolve, write_json, write_text

EXPLORE, BASELINE, PRUNE, SHARE, EVALUATE = "00_explore", "01_baseline", "02_prune", "03_share", "04_evaluate"


def data_dir_for(run_dir, data_dir: str = "") -> Path:
    """The dataset a stage should use: ``data_dir`` if given, else the one stage 00 explored
    (recorded in ``RUN_DIR/00_explore/config.yaml``), else the embedded default set."""
    from .data import resolve_data_dir

    if data_dir:
        return resolve_data_dir(data_dir)
    recorded = resolve(run_dir) / EXPLORE / "config.yaml"
    if recorded.exists():
        saved = yaml.safe_load(recorded.read_text()) or {}
        if saved.get("data_dir") and Path(saved["data_dir"]).is_dir():
            return Path(saved["data_dir"])
    return resolve_data_dir("")


def write_stage(stage: Path, config: dict | str, metrics: dict) -> None:
    """``config.yaml`` (a dict, or a Detectron2 ``cfg.dump()`` string) and ``metrics.json``."""
    write_text(stage / "config.yaml", config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    write_json(stage / "metrics.json", metrics)


def baseline_overrides(stage: Path, *, device: str, max_iter: int, ims_per_batch: int, lr: float,
                       eval_period: int, seed: int, weights: str = "", lr_steps=(0.75, 0.92)) -> dict:
    """Notebook parameters -> Detectron2 config keys.  The LR drops 10x at each fraction of the
    schedule in ``lr_steps``; warm-up is the first 100 iterations (or a fifth of a short run)."""
    from .modeling import resolve_weights

    out = {
        "OUTPUT_DIR": str(stage / "train"),
        "MODEL.DEVICE": device,
        "SOLVER.MAX_ITER": int(max_iter),
        "SOLVER.IMS_PER_BATCH": int(ims_per_batch),
        "SOLVER.BASE_LR": float(lr),
        "SOLVER.STEPS": [int(max_iter * f) for f in lr_steps],
        "SOLVER.WARMUP_ITERS": int(min(100, max(1, max_iter // 5))),
        "SOLVER.CHECKPOINT_PERIOD": int(max(eval_period, 100)),
        "TEST.EVAL_PERIOD": int(eval_period),
        "SEED": int(seed),
    }
    if weights:
        out["MODEL.WEIGHTS"] = resolve_weights(weights, weights if Path(weights).exists() else None)
    return out


def _no_imagenet_init(cfg):
    """A trained checkpoint overwrites the ImageNet initialisation anyway: skip loading it."""
    if "MOBILENET" in cfg.MODEL:
        cfg.MODEL.MOBILENET.PRETRAINED = "none"
    return cfg


def load_trained(stage_dir, weights_name: str = "model_final.pth"):
    """(cfg, model) of a finished stage, rebuilt from its ``config.yaml`` and weights file."""
    from .config import get_config
    from .modeling import build_model

    import torch

    stage_dir = Path(stage_dir)
    # stage 01 saves its Detectron2 config as config.yaml; later stages keep their own
    # settings there and the model's Detectron2 config in detectron2.yaml
    d2 = stage_dir / "detectron2.yaml"
    d2 = d2 if d2.exists() else stage_dir / "config.yaml"
    for f in (d2, stage_dir / weights_name):
        if not f.exists():
            raise FileNotFoundError(f"{f}: not found (has that stage run?)")
    cfg = _no_imagenet_init(get_config(str(d2), {"MODEL.WEIGHTS": ""}, freeze=False))
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    if weights_name.endswith(".wlc"):  # the compressed format of stage 03
        from .codec import load

        model = build_model(cfg, weights="")
        model.load_state_dict(load(stage_dir / weights_name))
        return cfg, model
    return cfg, build_model(cfg, weights=str(stage_dir / weights_name))


def metrics_of(run_dir, stage: str) -> dict:
    return read_json(resolve(run_dir) / stage / "metrics.json")


def finetune_config(baseline_dir, out_dir, *, device: str, max_iter: int, ims_per_batch: int, lr: float,
                    eval_period: int, seed: int, freeze_at: int | None = 0):
    """The baseline's own config, starting from its trained weights, with a new schedule.

    ``freeze_at=0`` (default) lets every layer train: a pruned layer that stays frozen cannot
    recover from its pruning.  ``None`` keeps the baseline's setting."""
    from .config import get_config

    baseline_dir = Path(baseline_dir)
    over = baseline_overrides(Path(out_dir), device=device, max_iter=max_iter, ims_per_batch=ims_per_batch,
                              lr=lr, eval_period=eval_period, seed=seed,
                              weights=str(baseline_dir / "model_final.pth"))
    if freeze_at is not None:
        over["MODEL.BACKBONE.FREEZE_AT"] = int(freeze_at)
    cfg = _no_imagenet_init(get_config(str(baseline_dir / "config.yaml"), over, freeze=False))
    cfg.freeze()
    return cfg
