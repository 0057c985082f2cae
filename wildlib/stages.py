"""How the stages hand over to each other through ``RUN_DIR/<NN_stage>/`` folders: the one
contract between notebooks.

Every stage folder holds ``config.yaml`` (the stage's own settings: what it read and chose),
``metrics.json`` (what it measured) and, for a stage that produces a model, ``detectron2.yaml``
(the model's Detectron2 config) and the model's file(s) named below.  A stage opens itself with
:func:`open_stage`, writes with :func:`save_stage`, and reads an earlier stage with
:func:`load_stage` (or its parts :func:`load_trained` / :func:`metrics_of` / :func:`config_of`); file
names are the constants here, never literals in a notebook.  A stage reads only the earlier stages
of its own run: the data is given to stage 00, the seed to stage 01.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog

from . import contention
from .config import get_config
from .data import alias_map, class_list, ground_truth_sha256, register, resolve_data_dir
from .evaluate import LATENCY_WARMUP, against, on_splits, scored_from_file, source_file
from .fit import training_iterations
# the stages' folders and inputs live in wildlib.layout (the runner reads them without torch); the
# notebooks name them wl.stages.X
from .layout import (BASELINE, CHANNELS, EVALUATE, EXPLORE, METRICS_FILE, PRUNE, SHARE, STAGE_FOLDERS,  # noqa: F401
                     STAGE_INPUTS)
from .io import copy_file, read_json, resolve, slug, stage_dir, write_json, write_text
from .modeling import (D2_CONFIG_FILE, MODEL_FILE, count_parameters, load_trained, no_imagenet_init, resolve_weights,
                       save_weights, sha256_file)
from .records import (BaselineMetrics, ChannelsMetrics, DenseControl, EvaluateMetrics, ExploreMetrics, PruneMetrics,
                      RecordError, ShareMetrics, StageMetrics)
from .fast import load as load_deployable
from .speed import LATENCY_IMAGES, twin_of
from .tiles import ensure_registered, tile_setting
from .distill import Distill
from .train import final_eval, resolve_precision, train, train_together, unwrap

# what each stage's metrics.json holds (wildlib.records)
STAGE_RECORDS = {EXPLORE: ExploreMetrics, BASELINE: BaselineMetrics, PRUNE: PruneMetrics, SHARE: ShareMetrics,
                 CHANNELS: ChannelsMetrics, EVALUATE: EvaluateMetrics}

CONFIG_FILE = "config.yaml"  # METRICS_FILE: wildlib.layout
# D2_CONFIG_FILE (each stage's model config) and MODEL_FILE (01 and 04: the stage's trained dense
# model) are a model folder's files: wildlib.modeling names them
DENSE_CONTROL_FILE = "model_dense_control.pth"  # 02: the baseline fine-tuned like the pruned model
PRUNED_FILE = "model_pruned.pth"                # 02: the gradually pruned model, dense tensors
PRUNED_SPARSE_FILE = "model_pruned.sparse.npz"  # 02: the same, stored sparsely
ONESHOT_SPARSE_FILE = "model_oneshot.sparse.npz"  # 05: the paper's one-shot model, re-made
SHARED_FILE, INT8_FILE = "model_shared.wlc", "model_int8.wlc"  # 03: the compressed files
DEPLOY_DIR = "deploy"                           # 04: the deployable folder (wildlib.fast)


class Stage(NamedTuple):
    """What a notebook works with: its run, its own folder, and the data every stage shares."""
    run: Path
    dir: Path
    data_dir: Path
    classes: tuple
    aliases: dict
    datasets: dict


def begin_stage(run_dir, name: str, threads: int | None = None) -> Path:
    """``RUN_DIR/<name>/`` (made if missing), its previous ``metrics.json`` removed (a re-run that stops
    half-way leaves no stale record for later stages), and the machine watched from now until
    :func:`save_stage` (:mod:`wildlib.contention`: load, steal, other processes, its trainings).
    Introduced in notebook 00_explore_data."""
    folder = stage_dir(resolve(run_dir), name)
    _reruns[str(folder)] = _finished_before(folder)
    (folder / METRICS_FILE).unlink(missing_ok=True)
    contention.begin(folder, threads)
    return folder


_reruns: dict = {}  # stage folder -> times it had finished before this run of it (begin_stage)


def _finished_before(folder: Path) -> int:
    """How many times the stage in ``folder`` had finished before: its record's ``reruns`` + 1, or 0."""
    path = folder / METRICS_FILE
    if not path.is_file():
        return 0
    try:
        return int(read_json(path).get("reruns") or 0) + 1
    except (ValueError, OSError):
        return 1


def open_stage(run_dir, name: str, data_dir: str = "", classes=(), aliases=None, threads: int | None = None) -> Stage:
    """Begin the stage (:func:`begin_stage`), register the data stage 00 explored (or ``data_dir``,
    ``classes``, ``aliases`` if given) with Detectron2, and set PyTorch's thread count.
    Introduced in notebook 01_train_baseline."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    run = resolve(run_dir)
    folder = begin_stage(run, name, threads)
    data = data_dir_for(run, data_dir)
    names, alias = classes_for(run, classes, aliases)
    return Stage(run, folder, data, names, alias, register(data, names, aliases=alias, coco_dir=folder / "coco"))


def config_of(stage_path) -> dict:
    """A stage's own settings (``config.yaml``, safe YAML); {} if it has none."""
    path = Path(stage_path) / CONFIG_FILE
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def explore_record(run_dir) -> dict:
    """What stage 00 recorded for later stages (``RUN_DIR/00_explore/config.yaml``), or {}."""
    return config_of(resolve(run_dir) / EXPLORE)


def data_dir_for(run_dir, data_dir: str = "") -> Path:
    """The dataset a stage should use: ``data_dir`` if given, else the one stage 00 explored
    (recorded in ``RUN_DIR/00_explore/config.yaml``), else the embedded default set."""
    if data_dir:
        return resolve_data_dir(data_dir)
    saved = explore_record(run_dir)
    if saved.get("data_dir") and Path(saved["data_dir"]).is_dir():
        return Path(saved["data_dir"])
    return resolve_data_dir("")


def classes_for(run_dir, classes=(), aliases=None) -> tuple[tuple[str, ...], dict]:
    """The class list and label aliases a stage should use: as given, else what stage 00
    recorded in ``RUN_DIR/00_explore/config.yaml``, else the paper's 13 classes."""
    saved = explore_record(run_dir)
    names = class_list(classes or saved.get("classes") or ())
    aliases = aliases or saved.get("aliases") or {}
    alias_map(aliases, names)  # checked now, with the file named if it is wrong
    return names, dict(aliases)


def data_settings(run_dir, user: dict | None = None, fitted: bool = True) -> dict:
    """Detectron2 settings for this data: what stage 00's check suggested
    (``suggested_settings`` in its metrics; left out when not ``fitted``: the config's own
    values), with the user's own ``user`` keys winning.  Prints each choice and where it came from."""
    path = resolve(run_dir) / EXPLORE / METRICS_FILE
    suggested = (read_metrics(path, EXPLORE).suggested_settings or {}) if path.exists() else {}
    if not fitted and suggested.get("overrides"):
        print("FIT_TO_DATA = False: stage 00's suggestions left out:", suggested["overrides"])
        suggested = {}
    out = dict(suggested.get("overrides", {}))
    for reason in suggested.get("reasons", []):
        print("from stage 00's data check:", reason)
    for k, v in (user or {}).items():
        print(f"set by you: {k} = {v!r}" + (f" (stage 00 suggested {out[k]!r})" if k in out else ""))
    out.update(user or {})
    if not out:
        print("the config's input size, anchors and detections per image fit this data")
    return out


def check_num_classes(cfg, classes) -> None:
    """The model's class outputs must match the class list (else training and evaluation run
    silently with the wrong number of outputs).
    Introduced in notebook 02_prune_magnitude."""
    n = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if n != len(classes):
        raise ValueError(f"the model has {n} class outputs (MODEL.ROI_HEADS.NUM_CLASSES) but the class list has "
                         f"{len(classes)}: {list(classes)}")


AP50_FLOOR = 5.0  # below it a baseline has learned next to nothing: no compression claim is made


def require_baseline(ap50: float, floor: float = AP50_FLOOR, where: str = "the baseline") -> None:
    """Stop a later stage on a failed baseline rather than report compression 'within 1 AP50'
    of nothing.
    Introduced in notebook 02_prune_magnitude, section "The baseline, re-measured here, and the reference"."""
    if not ap50 >= floor:
        raise RuntimeError(f"{where} reached AP50 {ap50:.2f}, under the floor of {floor:g}: it has not learned to "
                           "detect, so compressing it says nothing. Fix the baseline first (stage 00's warnings, "
                           "more iterations, input size, NUM_CLASSES), or lower AP50_FLOOR for a smoke run.")


def save_stage(stage: Path, config: dict | str, metrics: StageMetrics, cfg=None) -> None:
    """``config.yaml`` (a dict, or a Detectron2 ``cfg.dump()`` string), ``metrics.json`` (the
    stage's record, :mod:`wildlib.records`, with its schema version, ``machine``: how busy the
    machine was since :func:`begin_stage`, and ``reruns``: how often the stage had finished here before) and, with ``cfg``, the model's Detectron2 config ``detectron2.yaml``.
    Introduced in notebook 00_explore_data, section "The split"."""
    stage = Path(stage)
    want = STAGE_RECORDS.get(stage.name)
    if want is not None and not isinstance(metrics, want):
        raise TypeError(f"{stage / METRICS_FILE}: stage {stage.name} writes a wildlib.records.{want.__name__}, "
                        f"not a {type(metrics).__name__}")
    if metrics.machine is None:
        metrics = dataclasses.replace(metrics, machine=contention.end(stage))
    if metrics.reruns is None and str(stage) in _reruns:
        metrics = dataclasses.replace(metrics, reruns=_reruns[str(stage)])
    if cfg is not None:
        write_text(stage / D2_CONFIG_FILE, cfg.dump())
    write_text(stage / CONFIG_FILE, config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    write_json(stage / METRICS_FILE, metrics.to_json())



def baseline_overrides(stage: Path, *, device: str, max_iter: int, ims_per_batch: int, lr: float,
                       eval_period: int, seed: int | None = None, weights: str = "", lr_steps=(0.75, 0.92),
                       num_classes: int | None = None, tile=(), train_dataset: str | None = None) -> dict:
    """Notebook parameters -> Detectron2 config keys.  The LR drops 10x at each fraction of the
    schedule in ``lr_steps``; warm-up is the first 100 iterations (or a fifth of a short run).
    ``seed=None`` keeps the config's own ``SEED`` (a fine-tuning run keeps the baseline's)."""
    out = {
        "OUTPUT_DIR": str(stage / "train"),
        "MODEL.DEVICE": device,
        "SOLVER.MAX_ITER": int(max_iter),
        "SOLVER.IMS_PER_BATCH": int(ims_per_batch),
        "SOLVER.BASE_LR": float(lr),
        "SOLVER.STEPS": sorted({int(max_iter * f) for f in lr_steps} - {0}),  # increasing, as Detectron2 needs
        "SOLVER.WARMUP_ITERS": int(min(100, max(1, max_iter // 5))),
        "SOLVER.CHECKPOINT_PERIOD": int(max(eval_period, 100)),
        "TEST.EVAL_PERIOD": int(eval_period),
    }
    if seed is not None:
        out["SEED"] = int(seed)
    if weights:
        out["MODEL.WEIGHTS"] = resolve_weights(weights)
    if num_classes is not None:
        out["MODEL.ROI_HEADS.NUM_CLASSES"] = int(num_classes)
    if tile:  # train on the tiles of the training set, evaluate slice by slice (wildlib.tiles)
        out["INPUT.TILE"] = [int(t) for t in tile]
    if train_dataset:
        out["DATASETS.TRAIN"] = [train_dataset]
    return out


def baseline_iterations(train_dataset: str, ims_per_batch: int, max_iter: int = 0) -> int:
    """Stage 01's iterations: ``max_iter`` when given, else the training set's size in passes
    (:func:`wildlib.fit.training_iterations`), printed with its reason.
    Introduced in notebook 01_train_baseline (its set-up cell)."""
    if max_iter:
        return int(max_iter)
    n = len(DatasetCatalog.get(train_dataset))
    it = training_iterations(n, ims_per_batch)
    print(f"MAX_ITER = 0: {n} training images ({train_dataset}) at batch {ims_per_batch} -> {it} iterations "
          f"(about {it * ims_per_batch / max(n, 1):.0f} passes; wildlib.fit.training_iterations)")
    return it


def baseline_config(run_dir, stage: Path, config_name: str, user: dict, classes, fitted: bool = True, **schedule):
    """Stage 01's Detectron2 config: ``config_name`` (a shipped config or a YAML file), the
    schedule of :func:`baseline_overrides`, stage 00's suggested settings (unless not ``fitted``),
    then the user's own keys ``user`` (they win; a ``MODEL.WEIGHTS`` there is a model-zoo URL or a
    local checkpoint).  Introduced in notebook 01 (its set-up cell)."""
    keys = {**baseline_overrides(stage, num_classes=len(classes), **schedule),
            **data_settings(run_dir, user, fitted=fitted)}
    cfg = get_config(config_name, keys, freeze=False)
    if cfg.MODEL.WEIGHTS:  # the config's own model-zoo URL too: $WILDLIB_COCO_WEIGHTS stands in for it
        cfg.MODEL.WEIGHTS = resolve_weights(cfg.MODEL.WEIGHTS)
    # "auto" decided here, on this machine, and written down: later stages fine-tune as 01 trained
    cfg.SOLVER.PRECISION = resolve_precision(cfg.SOLVER.PRECISION, cfg.MODEL.DEVICE)
    cfg.freeze()
    check_num_classes(cfg, classes)
    return cfg


def read_metrics(path, stage: str) -> StageMetrics:
    """A ``metrics.json`` as the record ``stage`` writes (:data:`STAGE_RECORDS`); a file that is
    not one is refused with its name."""
    if stage not in STAGE_RECORDS:
        raise RecordError(f"{path}: {stage!r} is not a stage folder (one of {', '.join(STAGE_RECORDS)})")
    data = read_json(path)
    try:
        return STAGE_RECORDS[stage].from_json(data, str(path))
    except TypeError as e:  # a field of the wrong shape
        raise RecordError(f"{path}: not a {STAGE_RECORDS[stage].__name__} ({e})") from e


def metrics_of(run_dir, stage: str) -> StageMetrics:
    """What stage ``stage`` of the run measured: its ``metrics.json`` as its record.

    Introduced in notebook 05_evaluate."""
    path = resolve(run_dir) / stage / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found (has that stage run?)")
    return read_metrics(path, stage)


class Record(NamedTuple):
    """A finished stage as a later one reads it: its folder, settings, measurements and (when asked
    for) its model with the model's Detectron2 config."""
    dir: Path
    config: dict
    metrics: StageMetrics
    cfg: object = None
    model: object = None


def load_stage(stage_path, model_file: str | None = None) -> Record:
    """Read a finished stage: ``config.yaml``, ``metrics.json`` and, with ``model_file``, its model
    rebuilt from ``detectron2.yaml`` (see :func:`load_trained`).  The reading side of
    :func:`save_stage`.  Introduced in notebook 03 (its set-up cell reads stage 02's record)."""
    stage_path = resolve(stage_path)
    metrics_file = stage_path / METRICS_FILE
    if not metrics_file.exists():
        raise FileNotFoundError(f"{metrics_file}: not found (has that stage run?)")
    cfg = model = None
    if model_file:
        cfg, model = load_trained(stage_path, model_file)
    return Record(stage_path, config_of(stage_path), read_metrics(metrics_file, stage_path.name), cfg, model)


DEPLOYED_NAME = "channel-pruned + int8 + test-time (04)"  # 05's name for 04's deployable
NON_INFERIOR_NAME = "04's pick (non-inferior on valid), one graph"  # 05's name for 04's goal variant, where it is one
NON_INFERIOR_DETECTIONS = "non_inferior"  # ... and its detections on the report split (04/detections/)
DETECTIONS_DIR = "detections"  # a stage's reported models' detections on the report split (paired intervals)
REFERENCE_DETECTIONS = {"baseline": "baseline.json", "dense control": "dense_control.json"}


def stored_detections(run, oneshot_name: str | None = None) -> dict[str, Path]:
    """Where stages 02-04 wrote each reported model's detections on the report split, by the
    name stage 05 gives the model: 05 takes them where the reloaded model reproduces them
    (:func:`wildlib.evaluate.scored_stored`) instead of evaluating it again.
    Introduced in notebook 05_evaluate, section "The variants and their files"."""
    def at(stage: str, name: str) -> Path:
        return Path(run) / stage / DETECTIONS_DIR / f"{name}.json"

    reference = {name: at(PRUNE, Path(f).stem) for name, f in REFERENCE_DETECTIONS.items()}
    out = {**reference,
           "gradual pruning + FT": at(PRUNE, "gradual"), "pruned + shared + FT": at(SHARE, "shared"),
           "int8": at(SHARE, "int8"), DEPLOYED_NAME: at(CHANNELS, "combined"),
           NON_INFERIOR_NAME: at(CHANNELS, NON_INFERIOR_DETECTIONS)}
    if oneshot_name:
        out[oneshot_name] = at(PRUNE, slug(oneshot_name))
    return out


def deployables(run_dir, threads: int) -> dict[str, tuple]:
    """Stage 04's deployable folders by the names stage 05 gives them -> (cfg, model, folder, twin),
    each loaded and checked file by file (:func:`wildlib.fast.load`): the deployable and, where it
    has a folder of its own, 04's goal variant.  ``twin``: the trained PyTorch model whose
    architecture the folder's config builds (04's channel-pruned model or stage 02's reference),
    what 05 counts parameters on.
    Introduced in notebook 05_evaluate, section "The variants and their files"."""
    m = metrics_of(run_dir, CHANNELS)
    candidates = [load_trained(Path(run_dir) / CHANNELS)[1], load_reference(run_dir)[1]]
    count = lambda model: count_parameters(model)["params"]  # noqa: E731

    def entry(folder):
        cfg, model = load_deployable(folder, threads=threads)
        n = count(twin_of(cfg))
        return cfg, model, folder, next((c for c in candidates if count(c) == n), candidates[-1])

    out = {DEPLOYED_NAME: entry(Path(run_dir) / m.deploy_dir)}
    if m.best_deploy_dir not in (None, m.deploy_dir):
        out[NON_INFERIOR_NAME] = entry(Path(run_dir) / m.best_deploy_dir)
    return out


def reference_scored(prune_dir, datasets: dict):
    """Stage 02's reference (the dense control; in runs before it was fixed, the better of it and
    the baseline on valid) on the
    report split, rebuilt from the detections stage 02 wrote: later stages pair their variants
    with it (:func:`wildlib.evaluate.against`) without evaluating it again.
    Introduced in notebook 03_weight_sharing, section "int8: the paper's "8 bits", done plainly"."""
    m = load_stage(prune_dir).metrics
    metrics = m.baseline if m.reference == "baseline" else m.dense_control.bbox
    return scored_from_file(datasets, m.evaluation_split, metrics,
                            Path(prune_dir) / DETECTIONS_DIR / REFERENCE_DETECTIONS[m.reference], coco_max_dets_of(prune_dir))


def load_reference(run_dir) -> tuple[str, object]:
    """(name, model) of stage 02's reference (the dense control; in older runs possibly the
    baseline), rebuilt from its weights: what every row of 04 is paired with on valid, and what a
    variant that must lose nothing starts from.
    Introduced in notebook 04_prune_channels (its set-up cell; section 6 makes it fast)."""
    m = load_stage(Path(run_dir) / PRUNE).metrics
    if m.reference == "baseline":
        return m.reference, load_trained(Path(run_dir) / BASELINE)[1]
    return m.reference, load_trained(Path(run_dir) / PRUNE, DENSE_CONTROL_FILE)[1]


def baseline_on_splits(baseline_dir, model, cfg, datasets: dict, split: str, detections_file):
    """Stage 02's baseline: (COCO metrics on valid, :class:`~wildlib.evaluate.Scored` on the
    report split), from what stage 01 wrote where it still holds, without evaluating the same model
    again: its final evaluation on valid (when 01 evaluated the same valid ground truth in training) and its detections on
    the report split, taken as every stored model's are (:func:`wildlib.evaluate.scored_stored`:
    same ground truth and test-time settings, the reloaded model reproduces them) and copied to
    ``detections_file``; evaluated where they do not (another split or data, an older run).
    Introduced in notebook 02_prune_magnitude, section "The baseline, re-measured here, and the reference"."""
    m = read_metrics(Path(baseline_dir) / METRICS_FILE, BASELINE)
    in_training = tuple(cfg.DATASETS.TEST) == (datasets["valid"],)  # 01's periodic evaluations were on valid
    then = Path(baseline_dir) / "coco" / "valid.json"  # the valid ground truth 01 evaluated on
    same_valid = then.is_file() and ground_truth_sha256(then) == ground_truth_sha256(MetadataCatalog.get(datasets["valid"]).json_file)
    valid = final_eval(m.evals or [], int(cfg.SOLVER.MAX_ITER)) if in_training and same_valid else None
    stored = Path(baseline_dir) / DETECTIONS_DIR / REFERENCE_DETECTIONS["baseline"]
    return on_splits(model, cfg, datasets, split, detections_file, valid=valid, stored_detections=stored)


def baseline_scored(run_dir, prefix: str = "wild"):
    """Stage 01's model on the split it reported, from the detections 01 wrote there (no model is
    run), its data registered as ``<prefix>_<split>``: ``(Scored, SHA-256 of the ground truth)``.
    Detections whose ``.source.json`` names other ground truth than the run's data now holds are
    refused by name (an older run without one is taken as it is)."""
    run = resolve(run_dir)
    base = run / BASELINE
    m = read_metrics(base / METRICS_FILE, BASELINE)
    split = m.evaluation_split or "valid"
    dets = base / DETECTIONS_DIR / REFERENCE_DETECTIONS["baseline"]
    if not dets.is_file():
        raise FileNotFoundError(f"{dets}: not found (stage 01 of {run} wrote no detections)")
    names, alias = classes_for(run)
    data = data_dir_for(run)
    datasets = register(data, names, prefix=prefix, splits=[split], aliases=alias)
    json_file = MetadataCatalog.get(datasets[split]).json_file
    gt = ground_truth_sha256(json_file)
    # runs before the hash ignored the data folder's place recorded the COCO file's bytes: taken too
    if source_file(dets).is_file() and read_json(source_file(dets)).get("ground_truth_sha256") not in (gt, sha256_file(json_file)):
        raise ValueError(f"{dets}: made on other ground truth than {split} of {data} holds now")
    return scored_from_file(datasets, split, m.bbox, dets, coco_max_dets_of(base)), gt


def paired_baselines(run_a, run_b) -> dict:
    """Two runs' stage-01 models on the same images (e.g. two settings of one data set): A's AP50
    with its interval and the paired difference A - B with its interval
    (:func:`wildlib.evaluate.against`, B the reference), from the detections each run wrote.
    ``python -m wildlib.report --paired RUN_A RUN_B`` prints it."""
    a, gt_a = baseline_scored(run_a, "wild_a")
    b, gt_b = baseline_scored(run_b, "wild_b")
    if gt_a != gt_b:
        raise ValueError(f"{run_a} and {run_b} were scored on different ground truth: no paired comparison")
    return {**against(a, b), "split": a.split}


def coco_max_dets_of(stage_path) -> int:
    """COCO's detections per image for the model of a stage (its ``detectron2.yaml``), at least
    100: every variant compared with that stage's reference is matched with the same limit."""
    d2 = yaml.safe_load((Path(stage_path) / D2_CONFIG_FILE).read_text()) or {}
    return max(100, int((d2.get("TEST") or {}).get("DETECTIONS_PER_IMAGE", 100)))


def finetune_schedule(baseline_dir, cfg, *, max_iter: int, ims_per_batch: int, lr: float, seed: int | None,
                      lr_schedule: str = "step", **_) -> dict:
    """What makes two dense controls the same model: iterations, LR and its schedule, batch, seed,
    and the baseline's weights (SHA-256).  Recorded as stage 02's ``finetune`` settings.
    Introduced in notebook 02_prune_magnitude, section "The baseline, re-measured here, and the reference"."""
    return {"iterations": int(max_iter), "lr": float(lr), "lr_schedule": str(lr_schedule),
            "ims_per_batch": int(ims_per_batch), "seed": int(cfg.SEED if seed is None else seed),
            "baseline_sha256": sha256_file(Path(baseline_dir) / MODEL_FILE)}


def dense_control(baseline_dir, stage: Path, schedule: dict, ft_args: dict, num_gpus: int = 1, control_dir=""):
    """(model, record) of stage 02's dense control: the baseline fine-tuned with exactly the
    pruning run's schedule, no pruning.  Trained here (and saved into ``stage``), or, with
    ``control_dir``, taken from the run that trained it with the same ``schedule``
    (:func:`reuse_dense_control`; its record then names the detections that run stored).
    Introduced in notebook 02, "The baseline ... and the reference"."""
    if control_dir:
        record = reuse_dense_control(control_dir, stage, schedule)
        return load_trained(control_dir, DENSE_CONTROL_FILE)[1], record
    run = train(finetune_config(baseline_dir, Path(stage) / "dense_control", **ft_args), num_gpus=num_gpus)
    model = unwrap(run["model"]).eval()
    save_weights(model, Path(stage) / DENSE_CONTROL_FILE)
    return model, _control_record(run, schedule)


PRUNED_RUN = "gradual"  # 02: the folder of the fine-tuning that prunes, beside "dense_control"


def distillation(baseline_dir, teacher_weights, cls: float = 0.0, rpn: float = 0.0, fpn: float = 0.0,
                 temperature: float = 2.0, near_objects: bool = False):
    """The hook factory that distils the teacher (``baseline_dir``'s model with ``teacher_weights``)
    into a fine-tuning (:class:`wildlib.distill.Distill`), or None when every weight is 0.
    Introduced in notebook 02_prune_magnitude, section "4 · Gradual pruning while fine-tuning"."""
    if not any((cls, rpn, fpn)):
        return None
    return partial(Distill, str(Path(baseline_dir) / D2_CONFIG_FILE), str(teacher_weights), cls=cls, rpn=rpn, fpn=fpn,
                   temperature=temperature, near_objects=near_objects)


def distill_settings(recorded: dict | None, student_cfg, teacher_cfg) -> tuple[dict, str | None]:
    """``(keywords of :func:`distillation`, why the FPN term is off or None)``: stage 02's terms
    (``recorded``: its ``gradual.distillation``, the hook's state; None: labels alone, ``{}``) for a
    later fine-tuning of another student, with the FPN term off where the student's FPN outputs
    are narrower than the teacher's (channel pruning: feature imitation needs the same channels).
    Introduced in notebook 04_prune_channels, section 3."""
    if not recorded:
        return {}, None
    out = {**recorded["weights"], "temperature": recorded["temperature"], "near_objects": recorded["near_objects"]}
    if out.get("fpn") and int(student_cfg.MODEL.FPN.OUT_CHANNELS) != int(teacher_cfg.MODEL.FPN.OUT_CHANNELS):
        return {**out, "fpn": 0.0}, (f"the student's FPN outputs have {student_cfg.MODEL.FPN.OUT_CHANNELS} channels, "
                                     f"the teacher's {teacher_cfg.MODEL.FPN.OUT_CHANNELS}")
    return out, None


def fine_tunings(baseline_dir, stage: Path, schedule: dict, ft_args: dict, pruning, num_gpus: int = 1,
                 control_dir="", side_by_side: bool = False, distill: dict | None = None):
    """Stage 02's two fine-tunings on one schedule: the dense control (trained here, or taken from
    ``control_dir``, :func:`dense_control`) and the run that prunes while it trains (``pruning``: a
    hook factory).  With ``side_by_side`` (on a CPU, 2+ stage threads, no shared control, no tiles) both
    train at once, each in its own 1-thread process (:func:`wildlib.train.train_together`: 1.55x the
    steps per second on a 2-core AMD EPYC (AVX2); their probes run side by side as their steps did,
    so neither looks slower than its probe for sharing the machine with its sibling); else one after
    the other with the stage's threads.  Notebook 02 asks for it (``SIDE_BY_SIDE``).
    ``distill``: the keyword arguments of :func:`distillation`; with a weight above 0 the pruning run
    learns from the dense control too (its teacher), so the control trains first.
    Returns ``(control model, its record, the pruning run's result)``.
    Introduced in notebook 02_prune_magnitude, section "The baseline, re-measured here, and the reference"."""
    stage = Path(stage)
    pruned_cfg = finetune_config(baseline_dir, stage / PRUNED_RUN, **ft_args)
    teacher = distillation(baseline_dir, Path(control_dir or stage) / DENSE_CONTROL_FILE, **(distill or {}))
    side_by_side = (side_by_side and teacher is None and not control_dir and num_gpus <= 1 and ft_args.get("device", "cpu") == "cpu"
                    and torch.get_num_threads() >= 2 and not tile_setting(pruned_cfg))
    if not side_by_side:
        model, record = dense_control(baseline_dir, stage, schedule, ft_args, num_gpus, control_dir)
        hooks = [pruning] if teacher is None else [pruning, teacher]
        return model, record, train(pruned_cfg, hooks=hooks, num_gpus=num_gpus)
    control_cfg = finetune_config(baseline_dir, stage / "dense_control", **ft_args)
    names, aliases = classes_for(stage.parent)
    setup = partial(register, data_dir_for(stage.parent), names, aliases=aliases, coco_dir=stage / "coco",
                    splits=("train", "valid"))  # what a fine-tuning reads: its batches and its evaluations
    control, pruned = train_together([(control_cfg, []), (pruned_cfg, [pruning])], threads_each=1, setup=setup)
    model = unwrap(control["model"]).eval()
    save_weights(model, stage / DENSE_CONTROL_FILE)
    return model, _control_record(control, schedule), pruned


def _control_record(run: dict, schedule: dict) -> DenseControl:
    return DenseControl(iterations=run["iterations_run"], ims_per_batch=schedule["ims_per_batch"],
                        lr=schedule["lr"], seed=schedule["seed"], seconds=run["train_seconds"], evals=run["evals"])


def reuse_dense_control(control_dir, stage: Path, schedule: dict) -> DenseControl:
    """Take the dense control that another run's stage 02 (``control_dir``) trained, when its
    schedule (``finetune`` in its ``config.yaml``: iterations, LR, batch, seed) and its baseline's
    weights (SHA-256) are this stage's: a sweep trains each control once.  The weights file is
    copied into ``stage``; returns that stage's ``dense_control`` record, with where it came from."""
    other = load_stage(control_dir)
    theirs = other.config.get("finetune", {})
    wrong = {k: (theirs.get(k), v) for k, v in schedule.items() if theirs.get(k) != v}
    if wrong:
        raise ValueError(f"{Path(control_dir) / CONFIG_FILE}: its dense control had another schedule "
                         f"(theirs, ours): {wrong}")
    src = Path(control_dir) / DENSE_CONTROL_FILE
    if not src.is_file():
        raise FileNotFoundError(f"{src}: not found (has that stage finished?)")
    copy_file(src, Path(stage) / DENSE_CONTROL_FILE)
    stored = Path(control_dir) / DETECTIONS_DIR / REFERENCE_DETECTIONS["dense control"]
    return dataclasses.replace(other.metrics.dense_control, trained_in=str(Path(control_dir)),
                               stored_detections=str(stored))


FINETUNE_SCHEDULES = ("step", "cosine", "rewind")  # a fine-tuning's LR schedule (finetune_config)


def finetune_config(baseline_dir, out_dir, *, device: str, max_iter: int, ims_per_batch: int, lr: float,
                    eval_period: int, seed: int | None = None, freeze_at: int | None = 0, config_file=None, weights=None,
                    lr_schedule: str = "step"):
    """The baseline's own config, starting from its trained weights, with a new schedule.

    ``lr_schedule``: ``"step"`` (default) warms up over the first fifth (at most 100 iterations),
    then drops the LR 10x at 75% and 92%; ``"cosine"``: the same warm-up, then a cosine decay to 0
    (Detectron2's ``WarmupCosineLR``); ``"rewind"``: learning-rate rewinding (Renda et al. 2020),
    the last ``max_iter`` iterations of the baseline's own schedule replayed (its LR drops at the
    same places, no warm-up), at ``lr`` where the baseline ran at its base LR (``lr`` carries the
    batch size's scaling; a drop before the replayed tail lowers the start).

    ``freeze_at=0`` (default) lets every layer train: a pruned layer that stays frozen cannot
    recover from its pruning.  ``None`` keeps the baseline's setting.  ``config_file`` and
    ``weights`` start from another model of the baseline's data (a channel-pruned one, say).
    ``seed=None`` (default) keeps the baseline's seed: one seed per run, set in stage 01.
    Introduced in notebook 02_prune_magnitude, section "4 · Gradual pruning while fine-tuning"."""
    baseline_dir = Path(baseline_dir)
    over = baseline_overrides(Path(out_dir), device=device, max_iter=max_iter, ims_per_batch=ims_per_batch,
                              lr=lr, eval_period=eval_period, seed=seed,
                              weights=str(weights or baseline_dir / MODEL_FILE))
    if freeze_at is not None:
        over["MODEL.BACKBONE.FREEZE_AT"] = int(freeze_at)
    over.update(_lr_schedule_keys(baseline_dir, lr_schedule, max_iter, lr))
    cfg = no_imagenet_init(get_config(str(config_file or baseline_dir / D2_CONFIG_FILE), over, freeze=False))
    cfg.freeze()

    ensure_registered(cfg, baseline_dir / "tiles")
    return cfg


def _lr_schedule_keys(baseline_dir, lr_schedule: str, max_iter: int, lr: float) -> dict:
    """The Detectron2 keys of :func:`finetune_config`'s ``lr_schedule`` (none for ``"step"``)."""
    if lr_schedule == "step":
        return {}
    if lr_schedule == "cosine":
        return {"SOLVER.LR_SCHEDULER_NAME": "WarmupCosineLR"}
    if lr_schedule != "rewind":
        raise ValueError(f"lr_schedule must be one of {FINETUNE_SCHEDULES}, not {lr_schedule!r}")
    base = get_config(str(Path(baseline_dir) / D2_CONFIG_FILE), freeze=False).SOLVER
    start = int(base.MAX_ITER) - int(max_iter)
    if start < int(base.WARMUP_ITERS) or base.LR_SCHEDULER_NAME != "WarmupMultiStepLR":
        raise ValueError(f"rewinding replays the baseline's last {max_iter} iterations after its warm-up "
                         f"({base.WARMUP_ITERS}) of a step schedule: its {base.MAX_ITER} iterations "
                         f"({base.LR_SCHEDULER_NAME}) do not allow it")
    passed = sum(1 for s in base.STEPS if s <= start)
    return {"SOLVER.STEPS": [int(s) - start for s in base.STEPS if s > start], "SOLVER.WARMUP_ITERS": 0,
            "SOLVER.BASE_LR": float(lr) * float(base.GAMMA) ** passed}


def reload_spec(deploy, run_dir, *, threads: int, runs: int, warmup: int = LATENCY_WARMUP,
                images: int = LATENCY_IMAGES) -> dict:
    """What :func:`wildlib.speed.in_fresh_process` needs to reload ``deploy`` and measure it beside the run's
    baseline on the run's data (as stage 00 recorded it), ``runs`` timed passes at ``threads``.
    Introduced in notebook 04, section 5."""
    run = Path(run_dir)
    classes, aliases = classes_for(run)
    return {"deploy": str(deploy), "baseline_dir": str(run / BASELINE), "data_dir": str(data_dir_for(run)),
            "classes": list(classes), "aliases": aliases, "threads": int(threads), "runs": int(runs),
            "warmup": int(warmup), "images": int(images)}
