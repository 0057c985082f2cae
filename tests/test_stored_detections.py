"""Scoring from stored detections (stage 05 takes what stages 02-04 wrote): the COCO metrics
computed from detections alone equal COCOEvaluator's, and stored detections are taken only from a
model that reproduces them."""

import json
import math
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


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    from detectron2.data import DatasetCatalog

    tmp = tmp_path_factory.mktemp("stored")
    size = (320, 240)
    images = {f"i{k}": grid_boxes("seal", 3 + k % 4, 16, size) + [("rock", (200, 150, 240 + k, 200))]
              for k in range(14)}
    root = make_voc(tmp / "voc", images, size, {"train": ["i0"], "valid": ["i1"], "test": list(images)[2:]})
    names = data.register(root, ["seal", "rock"], prefix="stored", coco_dir=tmp / "coco")
    cfg = config.get_config("mobilenet_fpn_cpu")
    return cfg, {"test": names["test"]}, DatasetCatalog.get(names["test"]), tmp


def _same_metrics(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((math.isnan(a[k]) and math.isnan(b[k])) or abs(a[k] - b[k]) < 1e-9 for k in a)


@pytest.mark.parametrize("limit", [100, 2])
def test_metrics_from_detections_alone_equal_the_evaluators(registered, limit):
    cfg, datasets, records, _ = registered
    metrics, dets = evaluate.score(NoisyOracle(records), cfg, datasets["test"], quiet=True, max_dets_per_image=limit)
    assert 0 < metrics["AP50"] < 100 and len(dets) > 12  # a model with something to get wrong
    # the limit 2 is below this model's boxes per image: COCO's own cut, applied the same way
    assert _same_metrics(evaluate.coco_metrics(datasets["test"], dets, limit), metrics)


def test_no_detection_at_all_scores_zero_as_the_evaluator_does(registered):
    _, datasets, _, _ = registered
    m = evaluate.coco_metrics(datasets["test"], [], 100)
    assert m["AP50"] == 0.0 and m["AP-seal"] == 0.0 and math.isnan(m["APl"]) and m["num_detections"] == 0


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
    taken = evaluate.scored_stored(model, cfg, datasets, "test", tmp / "stored.json", check_images=4)
    assert taken is not None and _same_metrics(taken.metrics, fresh.metrics)
    assert evaluate.with_interval(taken) == evaluate.with_interval(fresh)  # the same matching, the same bootstrap
    assert evaluate.scored_stored(NoisyOracle(records, seed=1), cfg, datasets, "test", tmp / "stored.json") is None
    assert evaluate.scored_stored(model, cfg, datasets, "test", tmp / "missing.json") is None
    foreign = [dict(d, image_id=10_000) for d in json.loads((tmp / "stored.json").read_text())]
    (tmp / "foreign.json").write_text(json.dumps(foreign))
    assert evaluate.scored_stored(model, cfg, datasets, "test", tmp / "foreign.json") is None
