"""COCO evaluation (Detectron2's COCOEvaluator over pycocotools), sizes, latency."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import intervals, tiles
from .data import ground_truth_sha256, to_coco
from .io import copy_file, read_json, write_json
from .modeling import count_parameters
from .records import Variant

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# "Within 1 AP50": every such claim in the project is against one reference, fixed before anything
# is measured (never chosen on valid): the dense control, trained as long as the compressed model.
REFERENCE = "dense control"
AP50_TOLERANCE = 1.0
RELOAD_CHECK_IMAGES = 8  # images on which a reloaded model must reproduce its stored detections
LATENCY_WARMUP = 5  # untimed passes of each model before a side-by-side latency measurement


def best_within(rows, key: str, reference: float | None = None, tolerance: float = AP50_TOLERANCE, *,
                verdict: str | None = None, lowest: bool = False, ap_key: str = "AP50", above: float | None = None):
    """The project's one picker.  Among ``rows`` (dicts, or a DataFrame) that pass — AP50 at least
    ``reference - tolerance`` (the point-estimate rule, on the split the rows were measured on), or,
    with ``verdict``, whose ``verdict`` field is true (``within_1ap50``, ``non_inferior``: verdicts
    already made against the reference, with their rule) — and, with ``above``, whose ``key`` exceeds
    it (a speedup beyond the timing noise: :func:`speed_noise`), the row with the largest ``key``
    (``lowest``: the smallest; ties: the first); None if no row passes.
    Introduced in notebook 02_prune_magnitude, section "Summary: every reported model on the report split, against the reference"."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict(orient="records")
    ok = [r for r in rows if (r.get(verdict) if verdict else r[ap_key] >= reference - tolerance)
          and r[key] == r[key] and (above is None or r[key] > above)]  # a NaN key is never the best
    return (min if lowest else max)(ok, key=lambda r: r[key]) if ok else None


def speed_noise(self_row: dict) -> float:
    """The largest speedup the timing alone gave the baseline against itself (``self_row``: its row,
    timed side by side with itself, warm and cold passes): ``max(s, 1/s)`` over both readings.  A
    variant's speedup at or below it is not told apart from noise, and no picker calls it the fastest.
    Introduced in notebook 04_prune_channels (05 uses it too)."""
    readings = [self_row.get(k) for k in ("speedup", "speedup_cold")]
    readings = [float(v) for v in readings if v is not None and v == v and v > 0]
    return max([1.0] + [max(v, 1 / v) for v in readings])


@contextlib.contextmanager
def quiet_logs(enabled: bool = True):
    """Hold Detectron2's INFO logging (per-evaluation tables) back while sweeping."""
    loggers = [logging.getLogger(n) for n in ("detectron2", "d2", "fvcore")]
    levels = [lg.level for lg in loggers]
    if enabled:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def coco(model, cfg, dataset_name: str = "wild_valid", output_dir=None, quiet: bool = False,
         max_dets_per_image: int | None = None) -> dict:
    """COCO box metrics of ``model`` on a registered dataset, as a plain dict with Detectron2's
    names (``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AP-<class>``), in percent.
    Metrics that cannot be computed (no predictions, no boxes of that size) are NaN.
    Introduced in notebook 03_weight_sharing, section "The starting point and the reference"."""
    return score(model, cfg, dataset_name, output_dir, quiet, max_dets_per_image)[0]


def score(model, cfg, dataset_name: str = "wild_valid", output_dir=None, quiet: bool = False,
          max_dets_per_image: int | None = None) -> tuple[dict, list[dict]]:
    """(:func:`coco`'s metrics, the detections as COCO result dicts): what a bootstrap interval
    (:mod:`wildlib.intervals`) is computed from.  ``max_dets_per_image``: COCO's detections per
    image, the reference's when variants are compared (default: ``cfg``'s, :func:`max_dets`)."""
    from detectron2.data import MetadataCatalog, build_detection_test_loader
    from detectron2.evaluation import COCOEvaluator, DatasetEvaluators

    collector = DetectionCollector(dataset_name)
    limit = max_dets(cfg) if max_dets_per_image is None else max_dets_per_image
    evaluator = DatasetEvaluators([
        COCOEvaluator(dataset_name, tasks=("bbox",), distributed=False, max_dets_per_image=limit,
                      output_dir=str(output_dir) if output_dir else None, use_fast_impl=False),
        collector,
    ])
    tile = tiles.tile_setting(cfg)
    loader = tiles.test_loader(cfg, dataset_name) if tile else build_detection_test_loader(cfg, dataset_name)
    results = _infer(model, cfg, loader, evaluator, quiet)
    bbox = dict(results.get("bbox", {})) if results else {}
    classes = MetadataCatalog.get(dataset_name).thing_classes
    out = {k: float(bbox.get(k, math.nan)) for k in COCO_KEYS}
    out.update({f"AP-{c}": float(bbox.get(f"AP-{c}", math.nan)) for c in classes})
    return _with_count(out, collector.detections), collector.detections


def _with_count(metrics: dict, detections: list) -> dict:
    """``metrics`` with ``num_detections``; with no detection at all, Detectron2 reports nothing,
    but precision and recall are both zero: AP, AP50, AP75 and every per-class AP are 0 (the
    size buckets stay NaN)."""
    if not detections:
        metrics.update({k: 0.0 for k in metrics if k in ("AP", "AP50", "AP75") or k.startswith("AP-")})
    return {**metrics, "num_detections": len(detections)}


def _infer(model, cfg, loader, evaluator, quiet: bool = True):
    """Detectron2's ``inference_on_dataset``, tile by tile on the original images when the config
    asks for tiles; the model's train/eval mode is restored."""
    from detectron2.evaluation import inference_on_dataset

    tile = tiles.tile_setting(cfg)
    was_training = model.training
    model.eval()
    with quiet_logs(quiet):
        results = inference_on_dataset(tiles.SlicedDetector(model, cfg, *tile) if tile else model, loader, evaluator)
    model.train(was_training)
    return results


def detections_on(model, cfg, dataset_name: str, records: list[dict]) -> list[dict]:
    """The detections of ``model`` on ``records`` (some of a registered dataset's), collected as
    :func:`score` collects them (the same mapper, tiling and COCO result dicts)."""
    from detectron2.data import DatasetMapper, build_detection_test_loader

    mapper = DatasetMapper(cfg, is_train=False, augmentations=[]) if tiles.tile_setting(cfg) else DatasetMapper(cfg, False)
    collector = DetectionCollector(dataset_name)
    _infer(model, cfg, build_detection_test_loader(list(records), mapper=mapper), collector)
    return collector.detections


def coco_metrics(dataset_name: str, detections: list[dict], max_dets_per_image: int = 100) -> dict:
    """:func:`score`'s metrics (COCO's, Detectron2's names and rules) computed from COCO result
    dicts alone, at ``max_dets_per_image``: detections a stage stored, scored without running the
    model again.  pycocotools directly, as COCOEvaluator does it (its own code for this is private;
    like it, no per-class AP for a single class)."""
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation.coco_evaluation import COCOevalMaxDets

    meta = MetadataCatalog.get(dataset_name)
    out = {k: math.nan for k in COCO_KEYS} | {f"AP-{c}": math.nan for c in meta.thing_classes}
    if detections:
        gt = ground_truth(meta.json_file)
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOevalMaxDets(gt, gt.loadRes([dict(d) for d in detections]), "bbox")  # loadRes adds keys
            ev.params.maxDets = [1, 10, int(max_dets_per_image)]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out.update({k: float(ev.stats[i] * 100) if ev.stats[i] >= 0 else math.nan for i, k in enumerate(COCO_KEYS)})
        precision = ev.eval["precision"]  # (IoU, recall, class, area range, max dets)
        for i, c in enumerate(meta.thing_classes if len(meta.thing_classes) > 1 else ()):
            p = precision[:, :, i, 0, -1]
            out[f"AP-{c}"] = float(np.mean(p[p > -1]) * 100) if (p > -1).any() else math.nan
    return _with_count(out, detections)


def same_detections(a: list[dict], b: list[dict], box_atol: float = 0.5, score_atol: float = 1e-3) -> bool:
    """Whether two lists of COCO result dicts hold the same detections: per image and class, as
    many boxes, in score order, each score within ``score_atol`` and each box within ``box_atol``
    pixels (a reloaded model against what was stored of it; a near tie that swaps order fails)."""
    def grouped(dets):
        g = {}
        for d in dets:
            g.setdefault((d["image_id"], d["category_id"]), []).append((d["score"], *d["bbox"]))
        return {k: np.array(sorted(v, reverse=True)) for k, v in g.items()}

    ga, gb = grouped(a), grouped(b)
    return ga.keys() == gb.keys() and all(
        ga[k].shape == gb[k].shape and np.allclose(ga[k][:, 0], gb[k][:, 0], rtol=0, atol=score_atol)
        and np.allclose(ga[k][:, 1:], gb[k][:, 1:], rtol=0, atol=box_atol) for k in ga)


# What a stored detections file was made from (its ``.source.json`` beside it): the ground truth
# it was matched to, and the test-time settings that shape detections.
TEST_KEYS = ("INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "INPUT.TILE", "TEST.DETECTIONS_PER_IMAGE",
             "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.ROI_HEADS.NMS_THRESH_TEST", "MODEL.RPN.PRE_NMS_TOPK_TEST",
             "MODEL.RPN.POST_NMS_TOPK_TEST")


def source_of(cfg, dataset_name: str) -> dict:
    """What detections of a model on a registered dataset depend on besides the model's weights:
    the ground truth's SHA-256 (:func:`~wildlib.data.ground_truth_sha256`: the images' names, their
    order and boxes, wherever the data folder lies) and ``cfg``'s test-time settings."""
    from detectron2.data import MetadataCatalog

    def get(key):
        node = cfg
        for part in key.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        return list(node) if isinstance(node, (list, tuple)) else node

    return {"ground_truth_sha256": ground_truth_sha256(MetadataCatalog.get(dataset_name).json_file),
            "test_settings": {k: get(k) for k in TEST_KEYS}}


def source_file(detections_file) -> Path:
    """The ``.source.json`` beside a detections file (``gradual.json`` -> ``gradual.source.json``)."""
    return Path(detections_file).with_suffix(".source.json")


def copy_detections(src, dest) -> Path:
    """Copy a detections file and its ``.source.json`` (atomically, each)."""
    if source_file(src).is_file():
        copy_file(source_file(src), source_file(dest))
    return copy_file(src, dest)


def scored_stored(model, cfg, datasets: dict, split: str, stored_file, *, max_dets_per_image: int | None = None,
                  check_images: int = RELOAD_CHECK_IMAGES) -> Scored | None:
    """``stored_file``'s detections (an earlier stage evaluated this model on ``split`` and wrote
    them) as a :class:`Scored`, when they were made on the same ground truth with the same
    test-time settings (their ``.source.json``) and ``model``, reloaded from its file, reproduces
    them on the first ``check_images`` images and on the first ``check_images`` that have stored
    detections; None otherwise (no such file, another source, nothing to compare, or another
    model: then evaluate)."""
    from detectron2.data import DatasetCatalog

    name = datasets[split]
    if check_images < 1 or not stored_file or not Path(stored_file).is_file() or not source_file(stored_file).is_file():
        return None
    if read_json(source_file(stored_file)) != source_of(cfg, name):
        return None  # other images or boxes, or other test-time settings
    stored = read_json(stored_file)
    with_dets = {d.get("image_id") for d in stored}
    records = DatasetCatalog.get(name)
    # the first images (a reloaded model must not find boxes where none were stored) and the first
    # ones with stored boxes (something to compare): the two may be the same
    check = {r["image_id"]: r for r in records[:check_images]}
    check.update({r["image_id"]: r for r in [r for r in records if r["image_id"] in with_dets][:check_images]})
    if not with_dets & set(check):
        return None
    if not same_detections(detections_on(model, cfg, name, list(check.values())),
                           [d for d in stored if d.get("image_id") in check]):
        return None
    limit = max_dets_per_image or max_dets(cfg) or 100
    return Scored(split, coco_metrics(name, stored, limit), matched(name, stored, limit))


def stored_or_scored(model, cfg, datasets: dict, split: str, stored_detections, detections_file=None,
                     max_dets_per_image: int | None = None, output_dir=None) -> tuple[Scored, str]:
    """(:class:`Scored` of ``model`` on ``split``, where it came from): the stored detections when
    :func:`scored_stored` takes them (copied to ``detections_file``), else a fresh evaluation."""
    s = scored_stored(model, cfg, datasets, split, stored_detections, max_dets_per_image=max_dets_per_image)
    if s is None:
        return scored(model, cfg, datasets, split, max_dets_per_image=max_dets_per_image, output_dir=output_dir,
                      detections_file=detections_file), "evaluated"
    if detections_file:
        copy_detections(stored_detections, detections_file)
    return s, "stored, reload checked"


def coco_max_dets(cfg) -> int:
    """COCO's detections per image for comparing variants: the reference's (``cfg``), at least 100.

    Introduced in notebook 04_prune_channels, section "5 · Combined, saved, reloaded in a fresh process"."""
    return max(100, int(cfg.TEST.DETECTIONS_PER_IMAGE))


def coco_with_interval(model, cfg, dataset_name: str, max_dets_per_image: int | None = None) -> dict:
    """:func:`coco`'s metrics plus ``AP50_ci95``, AP50's image-level bootstrap 95% interval: what
    a figure comparing variants draws (notebooks 02 and 04)."""
    m, dets = score(model, cfg, dataset_name, quiet=True, max_dets_per_image=max_dets_per_image)
    iv = intervals.interval(matched(dataset_name, dets, max_dets_per_image or max_dets(cfg)))
    return {**m, "AP50_ci95": iv["ci95"]}


def max_dets(cfg) -> int | None:
    """COCO evaluation's detections per image: its standard 100, or more when the model keeps
    more (``TEST.DETECTIONS_PER_IMAGE``, raised for crowded images)."""
    n = int(cfg.TEST.DETECTIONS_PER_IMAGE)
    return n if n > 100 else None


class DetectionCollector:
    """A DatasetEvaluator that keeps every predicted box as a COCO result dict (category ids
    mapped as COCOEvaluator maps them)."""
    def __init__(self, dataset_name: str):
        from detectron2.data import MetadataCatalog

        meta = MetadataCatalog.get(dataset_name)
        mapping = getattr(meta, "thing_dataset_id_to_contiguous_id", None)
        self.to_dataset_id = {v: k for k, v in mapping.items()} if mapping else None

    def reset(self):
        self.detections = []

    def process(self, inputs, outputs):
        from detectron2.evaluation.coco_evaluation import instances_to_coco_json

        for x, o in zip(inputs, outputs):
            if "instances" not in o:
                continue
            for d in instances_to_coco_json(o["instances"].to("cpu"), x["image_id"]):
                if self.to_dataset_id:
                    d["category_id"] = self.to_dataset_id[d["category_id"]]
                self.detections.append(d)

    def evaluate(self):
        return {}


@dataclass
class Scored:
    """A model's COCO metrics on one split, with its detections matched once for intervals."""
    split: str
    metrics: dict
    matched: intervals.Matched

    @property
    def ap50(self) -> float:
        return self.metrics["AP50"]


def ground_truth(json_file):
    """pycocotools' ``COCO`` of a ground-truth file, quietly."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(json_file))


def matched(dataset_name: str, detections: list[dict], max_dets_per_image: int | None = None) -> intervals.Matched:
    """``detections`` on a registered dataset, matched once to its ground truth."""
    from detectron2.data import MetadataCatalog

    gt = ground_truth(MetadataCatalog.get(dataset_name).json_file)
    return intervals.match(gt, detections, max_dets_per_image or 100)


def command_outputs(records: list[dict], classes, outputs: dict, reference: str, coco_file,
                    max_dets_per_image: int = 1000) -> list[dict]:
    """Score what :mod:`wildlib.detect` wrote: each of ``outputs`` (name -> its output folder, or its
    ``detections.json``) against the boxes of ``records`` (the images it ran on, matched by file
    name; their COCO ground truth is written to ``coco_file``), as one row each: AP50 with its
    image-level bootstrap interval and, for every output but ``reference``, the paired difference to
    it (the same resampled images).  ``max_dets_per_image``: COCO's cap, the same for every output
    (a sliced image may hold more boxes than one graph call returns; the default caps none of them).
    Errors name the file: classes other than ``classes``, or an image that is not in ``records``.
    Introduced in notebook 05_evaluate, section "Large survey images: slices against the whole"."""
    ids = {}
    for r in records:
        key = Path(r["file_name"]).name
        if key in ids:
            raise ValueError(f"{r['file_name']}: two images scored here share the file name {key}")
        ids[key] = r["image_id"]
    write_json(coco_file, to_coco(records, classes))
    gt = ground_truth(coco_file)
    matched = {}
    for name, path in outputs.items():
        path = Path(path) / "detections.json" if Path(path).is_dir() else Path(path)
        found = read_json(path)
        if list(found["classes"]) != list(classes):
            raise ValueError(f"{path}: detections of classes {found['classes']}, not {list(classes)}")
        dets = []
        for d in found["detections"]:
            key = Path(d["file_name"]).name
            if key not in ids:
                raise ValueError(f"{path}: {d['file_name']} is not one of the {len(ids)} images scored here")
            dets.append({"image_id": ids[key], "category_id": int(d["category_id"]), "bbox": d["bbox"], "score": d["score"]})
        matched[name] = intervals.match(gt, dets, max_dets_per_image)
    rows = []
    for name, m in matched.items():
        iv = intervals.interval(m)
        row = {"name": name, "AP50": iv["AP50"], "AP50_ci95": iv["ci95"], "images": m.num_images}
        if name != reference:
            d = intervals.paired(m, matched[reference])
            row.update(delta_ap50=d["delta"], delta_ap50_ci95=d["ci95"])
        rows.append(row)
    return rows


def scored(model, cfg, datasets: dict, split: str, *, max_dets_per_image: int | None = None, output_dir=None,
           detections_file=None, quiet: bool = True) -> Scored:
    """Evaluate ``model`` on ``datasets[split]`` and keep what intervals need; ``detections_file``:
    also write the detections there (a later stage or a sweep pairs other models with them).
    Introduced in notebook 01_train_baseline, section "COCO evaluation on the held-out split"."""
    metrics, dets = score(model, cfg, datasets[split], output_dir, quiet, max_dets_per_image)
    if detections_file:
        write_json(detections_file, dets)
        write_json(source_file(detections_file), source_of(cfg, datasets[split]))
    return Scored(split, metrics, matched(datasets[split], dets, max_dets_per_image or max_dets(cfg)))


def scored_from_file(datasets: dict, split: str, metrics: dict, detections_file,
                     max_dets_per_image: int | None = None) -> Scored:
    """A :class:`Scored` rebuilt from a detections file another stage wrote."""
    return Scored(split, metrics, matched(datasets[split], read_json(detections_file), max_dets_per_image))


def on_splits(model, cfg, datasets: dict, split: str, detections_file=None, max_dets_per_image: int | None = None,
              output_dir=None, valid: dict | None = None, stored_detections=None) -> tuple[dict, Scored]:
    """(COCO metrics on ``valid``, to choose with; :class:`Scored` on ``split``, to report):
    one evaluation when the two splits are one (own data without a test split).  ``valid``: the
    model's metrics on valid, already measured (the final evaluation of its training): taken.
    ``stored_detections``: this model's detections on ``split`` from the run that made it, taken
    when :func:`scored_stored` accepts them (a sweep's shared dense control).
    Introduced in notebook 02_prune_magnitude, section "The baseline, re-measured here, and the reference"."""
    s, _ = stored_or_scored(model, cfg, datasets, split, stored_detections, detections_file, max_dets_per_image,
                            output_dir)
    if split == "valid":
        return s.metrics, s
    return valid or coco(model, cfg, datasets["valid"], quiet=True, max_dets_per_image=max_dets_per_image), s


def with_interval(s: Scored) -> dict:
    """``{"split", "AP50", "AP50_ci95", "AP50_se"}``: AP50 with its image-level bootstrap interval.

    Introduced in notebook 01_train_baseline, section "COCO evaluation on the held-out split"."""
    iv = intervals.interval(s.matched)
    return {"split": s.split, "AP50": s.ap50, "AP50_ci95": iv["ci95"], "AP50_se": iv["se"]}


def against(variant: Scored, reference: Scored, tolerance: float = AP50_TOLERANCE, baseline: Scored | None = None) -> dict:
    """A variant against the reference on the same split: its AP50 with interval, the paired
    ``delta_ap50`` (variant - reference) with interval, and both verdicts (``within_1ap50``:
    point estimate of the drop <= tolerance; ``non_inferior``: the drop's 95% upper end <= it, with
    as many bootstrap samples as it takes to clear the draws' own noise,
    :func:`wildlib.intervals.non_inferiority`: ``delta_ap50_samples``, ``delta_ap50_bound_mcse``;
    ``non_inferior_clear`` False where even the most samples left the bound that near the line).
    With ``baseline``, the paired difference to it too (``baseline_delta_ap50`` with its interval):
    shown beside the verdict, never a verdict (the baseline had less training than the variant).
    Introduced in notebook 02_prune_magnitude, section "4 · Gradual pruning while fine-tuning"."""
    if variant.split != reference.split:
        raise ValueError(f"a variant on {variant.split} cannot be compared with a reference on {reference.split}")
    v = intervals.non_inferiority(lambda n: intervals.paired(variant.matched, reference.matched, samples=n), tolerance)
    return {**with_interval(variant), "reference_ap50": reference.ap50, "delta_ap50": v["delta"],
            "delta_ap50_ci95": v["ci95"], "delta_ap50_se": v["se"], "delta_ap50_bound_mcse": v["ci95_mcse"][0],
            "delta_ap50_samples": v["samples"], "within_1ap50": v["within_tolerance"],
            "non_inferior": v["non_inferior"], "non_inferior_clear": v["bound_clear"], "tolerance": tolerance,
            **(beside_baseline(variant, baseline) if baseline is not None else {})}


def beside_baseline(variant: Scored, baseline: Scored) -> dict:
    """``baseline_delta_ap50`` (variant - baseline, on the same images) with its paired 95% interval.
    Introduced in notebook 02_prune_magnitude, section "The baseline, re-measured here, and the reference"."""
    if variant.split != baseline.split:
        raise ValueError(f"a variant on {variant.split} cannot be compared with a baseline on {baseline.split}")
    d = intervals.paired(variant.matched, baseline.matched)
    return {"baseline_delta_ap50": d["delta"], "baseline_delta_ap50_ci95": d["ci95"]}


def per_class(metrics: dict):
    """The ``AP-<class>`` entries as a sorted table.

    Introduced in notebook 01_train_baseline, section "COCO evaluation on the held-out split"."""
    import pandas as pd

    rows = [(k[3:], v) for k, v in metrics.items() if k.startswith("AP-")]
    return pd.DataFrame(rows, columns=["class", "AP"]).set_index("class").sort_values("AP", ascending=False)


def file_size(path) -> int:
    """Bytes on disk of ``path``.  Introduced in notebook 01_train_baseline, section "Size and speed"."""
    return os.path.getsize(path)


@torch.no_grad()
def latency(model, images: list[dict], warmup: int = 3, runs: int = 20, threads: int | None = None) -> dict:
    """Batch-1 wall time per image: ``warmup`` untimed passes, then ``runs`` timed ones.  Introduced
    in notebook 01_train_baseline, section "Size and speed"."""
    if threads:
        torch.set_num_threads(threads)
    model.eval()
    for i in range(warmup):
        model([images[i % len(images)]])
    times = []
    for i in range(runs):
        t = time.perf_counter()
        model([images[i % len(images)]])
        times.append(time.perf_counter() - t)
    t = np.array(times)
    return {"median_s": float(np.median(t)), "p90_s": float(np.percentile(t, 90)), "runs": runs,
            "threads": torch.get_num_threads()}


@torch.no_grad()
def side_by_side(baseline, variant, inputs: list[dict], variant_inputs: list[dict] | None = None, runs: int = 30,
                 warmup: int = LATENCY_WARMUP, threads: int | None = None) -> dict:
    """Batch-1 latency of ``variant`` against ``baseline``, measured in turns in this process, same
    threads, after ``warmup`` untimed passes of each: median and p90 of ``runs`` timed passes, and
    ``speedup`` = baseline median / variant median.

    Each turn runs the baseline twice, then the variant twice, on two consecutive images: the
    second pass is the timed one (``*_ms_median``, ``speedup``), with the model's own weights and
    buffers in the caches, as on a stream of frames.  The first pass, which always follows the
    other model's (the order within a turn is fixed for that), is kept too
    (``*_cold_ms_median``, ``speedup_cold``): the cost of running right after another model falls
    on a small model more than on a large one (docs/speed.md).
    Introduced in notebook 04_prune_channels (every speed table: notebooks 04 and 05)."""
    if threads:
        torch.set_num_threads(threads)
    vin = variant_inputs or inputs
    baseline.eval(), variant.eval()
    for i in range(warmup):
        baseline([inputs[i % len(inputs)]])
        variant([vin[i % len(vin)]])
    times = {"baseline": [], "variant": [], "baseline_cold": [], "variant_cold": []}
    for i in range(runs):
        for name, model, xs in (("baseline", baseline, inputs), ("variant", variant, vin)):
            for j, key in ((i, f"{name}_cold"), (i + 1, name)):
                t = time.perf_counter()
                model([xs[j % len(xs)]])
                times[key].append(time.perf_counter() - t)
    out = {"runs": runs, "warmup": warmup, "threads": torch.get_num_threads()}
    for name, ts in times.items():
        t = np.array(ts) * 1000
        out[f"{name}_ms_median"], out[f"{name}_ms_p90"] = float(np.median(t)), float(np.percentile(t, 90))
    out["speedup"] = out["baseline_ms_median"] / out["variant_ms_median"]
    out["speedup_cold"] = out["baseline_cold_ms_median"] / out["variant_cold_ms_median"]
    for name in ("baseline", "variant"):  # every timed (warm) pass, in turn order: the strip plots' points
        out[f"{name}_ms_runs"] = [round(t * 1000, 3) for t in times[name]]
    return out


def load_inputs(cfg, records: list[dict]) -> list[dict]:
    """Model inputs for dataset records, preprocessed as at test time (resize, channel order).

    Introduced in notebook 01_train_baseline, section "Size and speed"."""
    from detectron2.data import detection_utils as utils
    from detectron2.data import transforms as T

    aug = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    out = []
    for r in records:
        img = utils.read_image(r["file_name"], format=cfg.INPUT.FORMAT)
        h, w = img.shape[:2]
        t = aug.get_transform(img)
        img = t.apply_image(img)
        out.append({"image": torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1))), "height": h, "width": w,
                    "file_name": r["file_name"]})
    return out


@torch.no_grad()
def predict(model, inputs: list[dict], score_thresh: float = 0.0) -> list[dict]:
    """Boxes, scores and classes per input image as numpy arrays.  Introduced in notebook
    01_train_baseline, section "Does the saved file give back the same model?"."""
    model.eval()
    out = []
    for x in inputs:
        inst = model([x])[0]["instances"].to("cpu")
        keep = inst.scores >= score_thresh
        out.append({"boxes": inst.pred_boxes.tensor[keep].numpy(), "scores": inst.scores[keep].numpy(),
                    "classes": inst.pred_classes[keep].numpy()})
    return out


def predictions_to_json(preds: list[dict], inputs: list[dict]) -> list[dict]:
    """:func:`predict`'s output as JSON-ready rows (file name, boxes, scores, classes), rounded.
    Introduced in notebook 01_train_baseline, section "Does the saved file give back the same model?"."""
    return [{"file_name": Path(x["file_name"]).name, "boxes": p["boxes"].round(4).tolist(),
             "scores": p["scores"].round(6).tolist(), "classes": p["classes"].tolist()}
            for p, x in zip(preds, inputs)]


def variant_row(name: str, model, cfg, datasets: dict, split: str, path, baseline, inputs: list[dict], reference: Scored,
                *, twin=None, variant_inputs: list[dict] | None = None, runs: int = 20, warmup: int = LATENCY_WARMUP,
                dense_bytes=None, file_bytes: int | None = None, max_dets_per_image: int | None = None,
                detections_file=None, stored_detections=None) -> dict:
    """One row of the evaluation table (notebook 05): COCO metrics on ``datasets[split]`` with AP50's
    bootstrap interval and the paired delta to ``reference`` (:func:`against`; COCO's detections
    per image are the reference's, ``max_dets_per_image``, for every variant), per-class AP,
    parameters (nonzero too) of ``twin`` (default ``model``), bytes on disk of ``path`` (or
    ``file_bytes``, for a deployable folder) and the compression ratio against ``dense_bytes``' file, latency
    side by side with ``baseline`` (each row's own baseline median beside it).  ``stored_detections``:
    what the stage that made the model wrote of it on ``split``, taken when the reloaded model
    reproduces it (:func:`scored_stored`; ``scored_from`` says which)."""
    s, source = stored_or_scored(model, cfg, datasets, split, stored_detections, detections_file, max_dets_per_image)
    t = side_by_side(baseline, model, inputs, variant_inputs, runs=runs, warmup=warmup)
    counts = count_parameters(twin if twin is not None else model)
    path = Path(path)
    size = file_size(path) if file_bytes is None else int(file_bytes)
    dense = file_size(dense_bytes) if dense_bytes is not None else size
    m = s.metrics
    return Variant(name, **against(s, reference), AP=m["AP"], AP75=m["AP75"], params=counts["params"],
                   nonzero=counts["nonzero"], file=path.name, file_bytes=size, ratio=dense / size,
                   bits_per_weight=8 * size / counts["params"], latency_median_ms=t["variant_ms_median"],
                   latency_p90_ms=t["variant_ms_p90"], baseline_ms_median=t["baseline_ms_median"],
                   speedup=t["speedup"], speedup_cold=t["speedup_cold"], threads=t["threads"], scored_from=source,
                   per_class={k[3:]: v for k, v in m.items() if k.startswith("AP-")}).row()


def file_row(name: str, metrics: dict, path, dense_bytes: int, n_params: int, root) -> dict:
    """One row of a size table: COCO metrics, the file (relative to ``root``), its bytes, the ratio
    to the dense fp32 file and bits per parameter. Introduced in notebook 03."""
    size = file_size(path)
    return Variant(name, AP=metrics["AP"], AP50=metrics["AP50"], AP75=metrics["AP75"],
                   file=os.path.relpath(Path(path).absolute(), Path(root).absolute()),  # links kept (a sweep point's)
                   dense_fp32_bytes=dense_bytes, file_bytes=size, ratio=dense_bytes / size,
                   bits_per_weight=8 * size / n_params).row()
