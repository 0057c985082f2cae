"""A user's own VOC data through the notebooks: any class list (any case), aliases, the checks of
notebook 00, nothing written into the data folder, and no compression claims on a failed baseline."""
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from wildlib import data, runner

from .conftest import threaded, voc_xml


def make_voc(root, images: dict[str, list[tuple[str, tuple]]], size=(320, 240), splits=None):
    """A VOC folder: ``images`` maps id -> [(label, (xmin, ymin, xmax, ymax)), ...], each box
    drawn as a filled rectangle (one colour per label) on a noisy background."""
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    colours = {}
    for name, objects in images.items():
        img = Image.fromarray(rng.integers(60, 120, (size[1], size[0], 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        for label, (x0, y0, x1, y1) in objects:
            colours.setdefault(label.lower(), tuple(int(c) for c in rng.integers(150, 255, 3)))
            draw.rectangle((x0 - 1, y0 - 1, x1 - 1, y1 - 1), fill=colours[label.lower()])
        img.save(root / "images" / f"{name}.jpg", quality=92)
        (root / "annotations" / f"{name}.xml").write_text(voc_xml(f"{name}.jpg", size, objects))
    for split, ids in (splits or {}).items():
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def grid_boxes(label, n, box, size):
    """``n`` boxes of ``box`` px on a grid inside an image of ``size``."""
    cols = size[0] // (box * 2)
    return [(label, (1 + (k % cols) * box * 2, 1 + (k // cols) * box * 2,
                     (k % cols) * box * 2 + box, (k // cols) * box * 2 + box)) for k in range(n)]


def test_class_lists_any_case_and_aliases():
    assert data.class_list([]) == data.CLASSES
    assert data.class_list(["Tree", " rock "]) == ("Tree", "rock")
    with pytest.raises(data.DatasetError, match="more than once"):
        data.class_list(["Tree", "tree"])
    assert data.canonical_name("TREE", ("Tree", "Rock")) == "Tree"
    assert data.canonical_name("boulder", ("Tree", "Rock"), {"Boulder": "rock"}) == "Rock"
    assert data.canonical_name("hyna", data.CLASSES) == "hyena"  # the paper's spelling stays built in
    assert data.canonical_name("hyna", ("Tree",)) is None
    with pytest.raises(data.DatasetError, match="not in the class list"):
        data.alias_map({"x": "cactus"}, ("Tree",))


def test_register_writes_nothing_into_the_data_folder(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": [("Tree", (5, 5, 40, 40))], "b": [("tree", (9, 9, 50, 30))]},
                    splits={"train": ["a"], "valid": ["b"]})
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    names = data.register(root, ["TREE"], prefix="own")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    from detectron2.data import DatasetCatalog, MetadataCatalog

    assert MetadataCatalog.get(names["train"]).thing_classes == ["TREE"]
    assert DatasetCatalog.get(names["train"])[0]["annotations"][0]["category_id"] == 0


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """Large aerial-like frames with many small objects of two classes, one of them ("Rock")
    never in the training split; labels written in mixed case."""
    root = tmp_path_factory.mktemp("own") / "survey"
    size = (1600, 1200)
    images = {}
    for k in range(4):
        images[f"t{k}"] = grid_boxes("tree" if k % 2 else "TREE", 110, 24, size)
    for k in range(2):
        images[f"v{k}"] = grid_boxes("Tree", 40, 24, size) + grid_boxes("rock", 20, 30, size)[-20:]
    return make_voc(root, images, size, {"train": [f"t{k}" for k in range(4)], "valid": ["v0", "v1"]})


@pytest.mark.notebooks
def test_own_data_through_00_01_02(survey, tmp_path):
    run = tmp_path / "run"
    before = sorted(p.relative_to(survey) for p in survey.rglob("*"))
    runner.main(["--run-dir", str(run), "--only", "00", "-p", "DATA_DIR", str(survey),
                 "-p", "CLASSES", '["Tree", "Rock"]', "-p", "N_SAMPLES", "2"])
    m = json.loads((run / "00_explore" / "metrics.json").read_text())
    assert m["classes"] == ["Tree", "Rock"] and m["instances_total"] == 4 * 110 + 2 * 60
    assert m["per_class"]["Rock"] == {"train": 0, "valid": 40, "total": 40}  # no paper column
    checks = {w["check"]: w for w in m["warnings"]}
    assert checks["classes_missing_in_train"]["classes"] == ["Rock"]
    assert checks["boxes_per_image_over_cap"]["max_boxes"] == 110
    assert checks["images_much_larger_than_input"]["max_downscale"] == pytest.approx(5.0)
    assert checks["objects_below_smallest_anchor"]["median_px"] == pytest.approx(24 / 5.0, rel=0.01)
    # dataset-aware settings: more detections for 110-box images, a larger input for 5-px objects
    over = m["suggested_settings"]["overrides"]
    assert over["TEST.DETECTIONS_PER_IMAGE"] == 150 and over["INPUT.MIN_SIZE_TEST"] == 800

    # 01 and 02 pick up the data and the class list that 00 recorded
    # (a 4-iteration model scores most proposals near 1/3 for each class: a score threshold of 0.4 keeps
    # its evaluations from sending thousands of boxes per image through NMS, which took most of this test)
    runner.run_all(run, only=["01"], overrides=threaded("01", {"MAX_ITER": 4, "IMS_PER_BATCH": 2, "EVAL_PERIOD": 0,
                                                 "PROFILE_RUNS": 0, "CFG_OVERRIDES": {
        "INPUT.MIN_SIZE_TEST": 480, "INPUT.MAX_SIZE_TEST": 640, "INPUT.MIN_SIZE_TRAIN": [480], "INPUT.MAX_SIZE_TRAIN": 640,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.4}}))
    b = json.loads((run / "01_baseline" / "metrics.json").read_text())
    assert {k for k in b["bbox"] if k.startswith("AP-")} == {"AP-Tree", "AP-Rock"}
    d2 = (run / "01_baseline" / "config.yaml").read_text()
    assert "NUM_CLASSES: 2" in d2 and "DETECTIONS_PER_IMAGE: 150" in d2  # stage 00's suggestion
    assert "MIN_SIZE_TEST: 480" in d2  # the user's own setting wins over the suggested 800
    # a baseline under the floor stops 02 before anything is compressed (4 iterations on these
    # bright boxes already give some AP50, so the floor is raised above it here)
    with pytest.raises(RuntimeError, match="02_prune_magnitude.ipynb failed"):
        runner.run_all(run, only=["02"], overrides=threaded("02", {"AP50_FLOOR": 99.0}))
    assert "under the floor" in (run / "notebooks" / "02_prune_magnitude.ipynb").read_text()
    runner.run_all(run, only=["02"], overrides=threaded("02", {
        "SWEEP_SCOPES": ["all"], "SWEEP_RATIOS": [0.5], "SENS_RATIOS": [], "TARGET_SPARSITY": 0.5, "FT_ITER": 2,
        "IMS_PER_BATCH": 2, "AP50_FLOOR": 0.0}))
    p = json.loads((run / "02_prune" / "metrics.json").read_text())
    assert p["paper_one_shot_ap50"] is None and [r["ratio"] for r in p["one_shot"]] == [0.5]
    assert sorted(x.relative_to(survey) for x in survey.rglob("*")) == before  # the data folder is untouched
