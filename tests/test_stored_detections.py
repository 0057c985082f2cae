"""Scoring from stored detections (stage 05 takes what stages 02-04 wrote): the COCO metrics
computed from detections alone equal COCOEvaluator's, and stored detections are taken only from a
model that reproduces them."""

import json
import math
import shutil
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from wildlib import config, data, evaluate

from .test_own_data import grid_boxes, make_voc


class NoisyOracle(nn.Module):
    """A stand-in detector with known, image-dependent output: jittered copies of most
    ground-truth boxes (some with the wrong class), plus false positives, with scores drawn from
    a generator seeded by the image id and ``seed`` (another seed: another model)."""

    def __init__(self, records, seed=0):
        super().__init__()
        self.truth = {r["image_id"]: r["annotations"] for r in records}
        self.seed = seed

    def forward(self, batched_inputs):
        from detectron2.structures import Boxes, BoxMode, Instances

        out = []
        for x in batched_inputs:
            rng = np.random.default_rng([self.seed, zlib.crc32(str(x["image_id"]).encode())])
            boxes, classes = [], []
            for a in self.truth[x["image_id"]]:
                if rng.random() < 0.2:
                    continue
                b = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
                boxes.append(np.array(b) + rng.normal(0, 3, 4))
                classes.append(a["category_id"] if rng.random() > 0.2 else 1 - a["category_id"])
            for _ in range(3):
                x0, y0 = rng.uniform(0, x["width"] - 40), rng.uniform(0, x["height"] - 40)
                boxes.append([x0, y0, x0 + rng.uniform(10, 40), y0 + rng.uniform(10, 40)])
                classes.append(int(rng.integers(2)))
            inst = Instances((x["height"], x["width"]))
            inst.pred_boxes = Boxes(torch.tensor(np.array(boxes), dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.tensor(rng.uniform(0.05, 1.0, len(boxes)), dtype=torch.float32)
            inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
            out.append({"instances": inst})
        return out


def seals_and_rocks(tmp, prefix: str):
    """A registered VOC set of 14 images (seals in a grid, one rock each; 12 in test): the config,
    ``{"test": name}`` and the test records."""
    from detectron2.data import DatasetCatalog

    size = (320, 240)
    images = {f"i{k}": grid_boxes("seal", 3 + k % 4, 16, size) + [("rock", (200, 150, 240 + k, 200))]
              for k in range(14)}
    root = make_voc(tmp / "voc", images, size, {"train": ["i0"], "valid": ["i1"], "test": list(images)[2:]})
    names = data.register(root, ["seal", "rock"], prefix=prefix, coco_dir=tmp / "coco")
    return config.get_config("mobilenet_fpn_cpu"), {"test": names["test"]}, DatasetCatalog.get(names["test"])


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stored")
    return (*seals_and_rocks(tmp, "stored"), tmp)


def _same_metrics(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((math.isnan(a[k]) and math.isnan(b[k])) or abs(a[k] - b[k]) < 1e-9 for k in a)


@pytest.mark.parametrize("limit", [100, 2])
def test_metrics_from_detections_alone_equal_the_evaluators(registered, limit):
    cfg, datasets, records, _ = registered
    metrics, dets = evaluate.score(NoisyOracle(records), cfg, datasets["test"], quiet=True, max_dets_per_image=limit)
    assert 0 < metrics["AP50"] < 100 and len(dets) > 12  # a model with something to get wrong
    # the limit 2 is below this model's boxes per image: COCO's own cut, applied the same way
    assert _same_metrics(evaluate.coco_metrics(datasets["test"], dets, limit), metrics)


class Blind(NoisyOracle):
    """Detects nothing on the images listed in ``blind_to`` (all of them by default)."""

    def __init__(self, records, blind_to=None):
        super().__init__(records)
        self.blind_to = blind_to

    def forward(self, batched_inputs):
        out = super().forward(batched_inputs)
        for x, o in zip(batched_inputs, out):
            if self.blind_to is None or x["image_id"] in self.blind_to:
                o["instances"] = o["instances"][:0]
        return out


def test_no_detection_at_all_scores_as_the_evaluator_does(registered):
    cfg, datasets, records, _ = registered
    metrics, dets = evaluate.score(Blind(records), cfg, datasets["test"], quiet=True)
    assert dets == [] and metrics["AP50"] == 0.0 and math.isnan(metrics["APl"])
    assert _same_metrics(evaluate.coco_metrics(datasets["test"], [], 100), metrics)


def test_one_class_has_no_per_class_ap_as_in_the_evaluator(registered):
    cfg, _, _, tmp = registered
    from detectron2.data import DatasetCatalog

    size = (320, 240)
    root = make_voc(tmp / "voc1", {f"s{k}": grid_boxes("seal", 2 + k % 3, 16, size) for k in range(6)}, size,
                    {"train": ["s0"], "valid": ["s1"], "test": [f"s{k}" for k in range(2, 6)]})
    name = data.register(root, ["seal"], prefix="stored1", coco_dir=tmp / "coco1")["test"]
    metrics, dets = evaluate.score(NoisyOracle(DatasetCatalog.get(name)), cfg, name, quiet=True)
    assert math.isnan(metrics["AP-seal"]) and metrics["AP50"] > 0
    assert _same_metrics(evaluate.coco_metrics(name, dets, 100), metrics)


def test_same_detections_is_strict_on_counts_classes_and_tolerant_of_rounding():
    d = [{"image_id": 1, "category_id": 0, "bbox": [10.0, 10.0, 20.0, 20.0], "score": 0.9},
         {"image_id": 1, "category_id": 0, "bbox": [50.0, 10.0, 20.0, 20.0], "score": 0.5},
         {"image_id": 2, "category_id": 1, "bbox": [5.0, 5.0, 8.0, 8.0], "score": 0.7}]
    shifted = [dict(x, bbox=[v + 0.3 for v in x["bbox"]], score=x["score"] + 5e-4) for x in d]
    assert evaluate.same_detections(d, list(reversed(shifted)))  # order across images does not matter
    assert not evaluate.same_detections(d, d[:2])  # one box fewer
    assert not evaluate.same_detections(d, [dict(d[0], category_id=1)] + d[1:])  # another class
    assert not evaluate.same_detections(d, [dict(d[0], bbox=[12.0, 10.0, 20.0, 20.0])] + d[1:])  # 2 px off
    assert not evaluate.same_detections(d, [dict(d[0], score=0.8)] + d[1:])


def test_stored_detections_are_taken_only_from_a_model_that_reproduces_them(registered):
    cfg, datasets, records, tmp = registered
    model = NoisyOracle(records, seed=0)
    fresh = evaluate.scored(model, cfg, datasets, "test", detections_file=tmp / "stored.json")
    assert json.loads((tmp / "stored.source.json").read_text()) == evaluate.source_of(cfg, datasets["test"])
    taken = evaluate.scored_stored(model, cfg, datasets, "test", tmp / "stored.json", check_images=4)
    assert taken is not None and _same_metrics(taken.metrics, fresh.metrics)
    assert evaluate.with_interval(taken) == evaluate.with_interval(fresh)  # the same matching, the same bootstrap
    assert evaluate.scored_stored(NoisyOracle(records, seed=1), cfg, datasets, "test", tmp / "stored.json") is None
    assert evaluate.scored_stored(model, cfg, datasets, "test", tmp / "missing.json") is None
    assert evaluate.scored_stored(model, cfg, datasets, "test", tmp / "stored.json", check_images=0) is None
    # other test-time settings, or no record of what the detections were made with: evaluated again
    other = config.get_config("mobilenet_fpn_cpu", {"TEST.DETECTIONS_PER_IMAGE": 50})
    assert evaluate.scored_stored(model, other, datasets, "test", tmp / "stored.json") is None
    evaluate.copy_detections(tmp / "stored.json", tmp / "copy.json")
    assert evaluate.scored_stored(model, cfg, datasets, "test", tmp / "copy.json") is not None
    (tmp / "copy.source.json").unlink()
    assert evaluate.scored_stored(model, cfg, datasets, "test", tmp / "copy.json") is None


def test_stored_detections_of_a_changed_test_split_are_not_taken(registered, tmp_path):
    """Images are numbered by their line in test.txt: a split whose last image is replaced (or
    that gains images) keeps the first ids, and only the ground truth's checksum tells the stored
    detections are of another split."""
    cfg, datasets, records, tmp = registered
    evaluate.scored(NoisyOracle(records), cfg, datasets, "test", detections_file=tmp_path / "stored.json")
    from detectron2.data import DatasetCatalog

    voc = shutil.copytree(tmp / "voc", tmp_path / "voc")
    (voc / "test.txt").write_text("\n".join([f"i{k}" for k in range(2, 13)] + ["i1"]) + "\n")  # last one replaced
    (voc / "valid.txt").write_text("i13\n")
    grown = data.register(voc, ["seal", "rock"], prefix="grown", coco_dir=tmp_path / "coco")

    model = NoisyOracle(DatasetCatalog.get(grown["test"]))
    assert evaluate.scored_stored(model, cfg, {"test": grown["test"]}, "test", tmp_path / "stored.json") is None


def test_the_check_compares_images_that_have_detections(registered, tmp_path):
    cfg, datasets, records, _ = registered
    first = [r["image_id"] for r in records[:3]]
    blind = Blind(records, blind_to=set(first))  # nothing on the first images: they prove nothing
    evaluate.scored(blind, cfg, datasets, "test", detections_file=tmp_path / "stored.json")
    assert evaluate.scored_stored(blind, cfg, datasets, "test", tmp_path / "stored.json", check_images=3) is not None
    lying = NoisyOracle(records, seed=5)  # another model, blind or not on the first images
    assert evaluate.scored_stored(lying, cfg, datasets, "test", tmp_path / "stored.json", check_images=3) is None
    evaluate.scored(Blind(records), cfg, datasets, "test", detections_file=tmp_path / "none.json")
    assert evaluate.scored_stored(Blind(records), cfg, datasets, "test", tmp_path / "none.json") is None  # nothing to compare
