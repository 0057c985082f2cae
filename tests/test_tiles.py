"""Tiles: the grid, the tiled training set, and sliced detection that finds objects a whole-image
pass at the same input size misses."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from wildlib import config, runner, tiles

from .conftest import threaded
from .test_own_data import grid_boxes, make_voc


def test_grid_covers_the_image_with_the_overlap_asked():
    grid = tiles.tile_grid(1200, 1600, 400, 50)
    covered = np.zeros((1200, 1600), bool)
    for x0, y0, x1, y1 in grid:
        assert x1 - x0 == 400 and y1 - y0 == 400
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs = sorted({g[0] for g in grid})
    assert xs[-1] == 1200 and all(b - a <= 350 for a, b in zip(xs, xs[1:]))  # overlap >= 50
    assert tiles.tile_grid(240, 320, 400, 50) == [(0, 0, 320, 240)]  # small image: one tile
    with pytest.raises(ValueError):
        tiles.tile_grid(10, 10, 100, 100)


def test_tiled_training_set_clips_boxes(tmp_path):
    rec = {"file_name": str(tmp_path / "a.png"), "image_id": 0, "height": 300, "width": 500,
           "annotations": [{"bbox": [190.0, 10.0, 230.0, 50.0], "category_id": 1, "bbox_mode": 0, "iscrowd": 0},
                           {"bbox": [10.0, 10.0, 30.0, 30.0], "category_id": 0, "bbox_mode": 0, "iscrowd": 0}]}
    from PIL import Image

    Image.new("RGB", (500, 300)).save(rec["file_name"])
    out = tiles.write_tiles([rec], tmp_path / "t", 250, 50)  # x starts 0, 200, 250
    first = next(r for r in out if r["voc_id"] == "0@0")
    assert [a["bbox"] for a in first["annotations"]] == [[190.0, 10.0, 230.0, 50.0], [10.0, 10.0, 30.0, 30.0]]
    second = next(r for r in out if r["voc_id"] == "0@1")  # x 200..450: the first box is 75% inside
    assert [a["bbox"] for a in second["annotations"]] == [[0.0, 10.0, 30.0, 50.0]]
    assert all(Image.open(r["file_name"]).size == (r["width"], r["height"]) for r in out)


class SquareFinder(nn.Module):
    """A stand-in detector with a fixed, known limit: it finds bright squares only when they are
    at least 8 px wide in its (resized) input, and reports them in the coordinates of the
    image it was given (``height`` x ``width``), as Detectron2's models do."""

    def forward(self, batched_inputs):
        from detectron2.structures import Boxes, Instances

        out = []
        for x in batched_inputs:
            img = (x["image"].float().mean(0) > 200).numpy().copy()
            sy, sx = x["height"] / img.shape[0], x["width"] / img.shape[1]
            boxes = []
            while img.any():
                y, xx = np.argwhere(img)[0]
                w = int(np.argmin(np.append(img[y, xx:], False)))
                h = int(np.argmin(np.append(img[y:, xx], False)))
                img[y:y + h, xx:xx + w] = False
                if min(w, h) >= 8:
                    boxes.append([xx * sx, y * sy, (xx + w) * sx, (y + h) * sy])
            inst = Instances((x["height"], x["width"]))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.ones(len(boxes))
            inst.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
            out.append({"instances": inst})
        return out


def test_sliced_detection_finds_what_the_whole_image_misses():
    from detectron2.data import transforms as T
    from detectron2.structures import Boxes, pairwise_iou

    cfg = config.get_config("mobilenet_fpn_cpu")  # input 240-320 px
    image = np.zeros((1200, 1600, 3), np.uint8)
    truth = []
    for k in range(20):  # 24-px squares: 4.8 px once the whole frame is shrunk to 240 x 320
        x, y = 60 + (k % 5) * 300, 80 + (k // 5) * 280
        image[y:y + 24, x:x + 24] = 255
        truth.append([x, y, x + 24, y + 24])
    detector = SquareFinder()
    resized = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST).get_transform(image).apply_image(image)
    whole = detector([{"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()), "height": 1200, "width": 1600}])
    assert len(whole[0]["instances"]) == 0
    sliced = tiles.SlicedDetector(detector, cfg, 320, 64)([{"image": torch.as_tensor(image.transpose(2, 0, 1).copy())}])
    inst = sliced[0]["instances"]
    assert len(inst) == 20  # every square once: duplicates from overlapping tiles merged by NMS
    iou = pairwise_iou(Boxes(torch.tensor(truth, dtype=torch.float32)), inst.pred_boxes)
    assert (iou.max(1).values > 0.7).all()


@pytest.mark.notebooks
def test_a_tiled_run_through_00_01(tmp_path):
    size = (800, 600)
    root = make_voc(tmp_path / "voc", {"a": grid_boxes("seal", 30, 14, size), "b": grid_boxes("seal", 20, 14, size),
                                       "c": grid_boxes("Seal", 10, 14, size)}, size,
                    {"train": ["a", "b"], "valid": ["c"]})
    run = tmp_path / "run"
    runner.run_all(run, only=["00"], overrides={"DATA_DIR": str(root), "CLASSES": ["seal"], "N_SAMPLES": 2})
    runner.run_all(run, only=["01"], overrides=threaded("01", {
        "MAX_ITER": 4, "IMS_PER_BATCH": 2, "EVAL_PERIOD": 2, "PROFILE_RUNS": 0, "TILE": [320, 32],
        "CFG_OVERRIDES": {"INPUT.MIN_SIZE_TEST": 240, "INPUT.MAX_SIZE_TEST": 320,
                          "INPUT.MIN_SIZE_TRAIN": [240], "INPUT.MAX_SIZE_TRAIN": 320}}))
    stage = run / "01_baseline"
    assert len(list((stage / "tiles" / "320-32").glob("*.png"))) == 2 * 3  # 3 x 2 tiles each; the boxes lie in the top row
    m = json.loads((stage / "metrics.json").read_text())
    assert [e["iter"] for e in m["evals"]] == [2, 4] and np.isfinite(m["bbox"]["AP50"])
    d2 = (stage / "config.yaml").read_text()
    assert "TILE:\n  - 320\n  - 32" in d2 or "TILE: [320, 32]" in d2
    assert "wild_train_tiles" in d2


def _cells(tmp_path, sizes):
    """Records of small images of ``sizes`` ((w, h)), each a flat colour with one box."""
    from PIL import Image

    recs = []
    for k, (w, h) in enumerate(sizes):
        path = tmp_path / f"cell{k}.png"
        Image.new("RGB", (w, h), (10 * k, 200, 30)).save(path)
        recs.append({"file_name": str(path), "image_id": k, "width": w, "height": h,
                     "annotations": [{"bbox": [2 + k, 3, 12 + k, 9], "bbox_mode": 0, "category_id": k % 2}]})
    return recs


def test_survey_mosaics_put_each_image_in_its_cell_with_its_boxes(tmp_path):
    from PIL import Image

    recs = _cells(tmp_path, [(40, 30), (40, 30), (36, 30), (40, 24), (40, 30)])
    out = tiles.survey_mosaics(recs, tmp_path / "survey", grid=2, count=3)
    assert len(out) == 1  # 5 images make one 2 x 2 mosaic
    m = out[0]
    assert (m["width"], m["height"]) == (80, 60) and m["cells"] == [r["file_name"] for r in recs[:4]]
    # cell 3 (bottom right) starts at (40, 30): its box [5, 3, 15, 9] lands at [45, 33, 55, 39]
    assert [a["bbox"] for a in m["annotations"]] == [[2, 3, 12, 9], [43, 3, 53, 9], [4, 33, 14, 39], [45, 33, 55, 39]]
    assert [a["category_id"] for a in m["annotations"]] == [0, 1, 0, 1]
    px = np.asarray(Image.open(m["file_name"]))
    assert tuple(px[31, 41]) == (30, 200, 30) and tuple(px[1, 1]) == (0, 200, 30)
    assert tuple(px[58, 78]) == tiles.SURVEY_FILL  # below the shorter last image: the fill
    assert tuple(px[45, 38]) == tiles.SURVEY_FILL and tuple(px[45, 30]) == (20, 200, 30)  # right of the narrower third
    assert tiles.survey_mosaics(recs[:3], tmp_path / "none", grid=2, count=1) == []


def test_the_command_outputs_are_scored_against_the_mosaics_boxes(tmp_path):
    from wildlib import evaluate

    recs = tiles.survey_mosaics(_cells(tmp_path, [(40, 30)] * 8), tmp_path / "survey", grid=2, count=2)
    names = ["a", "b"]

    def output(name, keep):
        dets = [{"image_id": i, "file_name": f"survey_{i:03d}.png", "category_id": a["category_id"],
                 "bbox": [a["bbox"][0], a["bbox"][1], a["bbox"][2] - a["bbox"][0], a["bbox"][3] - a["bbox"][1]],
                 "score": 0.9} for i, r in enumerate(recs) for j, a in enumerate(r["annotations"]) if keep(i, j)]
        path = tmp_path / name / "detections.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"images": [], "classes": names, "detections": dets}))
        return path.parent

    perfect, half = output("perfect", lambda i, j: True), output("half", lambda i, j: j < 2)
    rows = {r["name"]: r for r in evaluate.command_outputs(recs, names, {"whole": half, "sliced": perfect}, "whole",
                                                           tmp_path / "gt.json")}
    assert rows["sliced"]["AP50"] == pytest.approx(100.0) and rows["whole"]["AP50"] < 100.0
    assert rows["sliced"]["delta_ap50"] == pytest.approx(100.0 - rows["whole"]["AP50"])
    assert "delta_ap50" not in rows["whole"] and rows["sliced"]["images"] == 2
    with pytest.raises(ValueError, match="detections.json: detections of classes"):
        evaluate.command_outputs(recs, ["a", "c"], {"x": perfect}, "x", tmp_path / "gt.json")
    (tmp_path / "other").mkdir()
    found = json.loads((perfect / "detections.json").read_text())
    found["detections"][0]["file_name"] = "elsewhere.png"
    (tmp_path / "other" / "detections.json").write_text(json.dumps(found))
    with pytest.raises(ValueError, match="other/detections.json: elsewhere.png is not one of the 2 images"):
        evaluate.command_outputs(recs, names, {"x": tmp_path / "other"}, "x", tmp_path / "gt.json")
