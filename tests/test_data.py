import json
import shutil

import pytest
from PIL import Image

from wildlib import data
from wildlib.modeling import sha256_file
from wildlib.classes import CLASSES

from .conftest import voc_xml


def test_loads_valid_folder_and_converts_voc_boxes(voc_dir):
    recs = data.load_split(voc_dir, "train")
    assert [r["voc_id"] for r in recs] == ["img1", "img2"]
    ann = recs[0]["annotations"][0]
    # VOC (5, 6, 30, 40) is 1-based inclusive: pixels 4..29 x 5..39 -> [4, 30) x [5, 40)
    assert ann["bbox"] == [4.0, 5.0, 30.0, 40.0]
    assert ann["category_id"] == CLASSES.index("zebra")
    assert (recs[0]["width"], recs[0]["height"]) == (64, 48)


def test_full_image_box_stays_inside(voc_dir):
    (voc_dir / "annotations" / "img1.xml").write_text(voc_xml(objects=[("lion", (1, 1, 64, 48))]))
    ann = data.load_split(voc_dir, "train")[0]["annotations"][0]
    assert ann["bbox"] == [0.0, 0.0, 64.0, 48.0]


def test_coco_export_uses_xywh(voc_dir):
    coco = data.to_coco(data.load_split(voc_dir, "train"))
    assert coco["annotations"][0]["bbox"] == [4.0, 5.0, 26.0, 35.0]
    assert coco["annotations"][0]["area"] == 26.0 * 35.0
    assert [c["name"] for c in coco["categories"]] == list(CLASSES)
    assert {a["image_id"] for a in coco["annotations"]} == {i["id"] for i in coco["images"]}


def test_authors_spelling_hyna_is_hyena(voc_dir):
    (voc_dir / "annotations" / "img1.xml").write_text(voc_xml(objects=[("hyna", (2, 2, 20, 20))]))
    ann = data.load_split(voc_dir, "train")[0]["annotations"][0]
    assert CLASSES[ann["category_id"]] == "hyena"


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda r: (r / "annotations" / "img1.xml").write_text("<annotation><size>"), "malformed XML"),
        (lambda r: (r / "annotations" / "img1.xml").write_text(voc_xml(objects=[("unicorn", (1, 1, 9, 9))])),
         "unknown class 'unicorn'"),
        (lambda r: (r / "images" / "img1.jpg").unlink(), "image for id 'img1' not found"),
        (lambda r: (r / "annotations" / "img1.xml").write_text(voc_xml(objects=[("zebra", (10, 10, 9, 20))])),
         "zero area"),
        (lambda r: (r / "annotations" / "img1.xml").write_text(voc_xml(objects=[("zebra", (10, 10, 70, 20))])),
         "outside the 64x48 image"),
        (lambda r: (r / "train.txt").write_text("img1\nimg2\nimg1\n"), "listed twice"),
        (lambda r: (r / "train.txt").write_text("\n\n"), "split file is empty"),
        (lambda r: Image.new("RGB", (80, 48)).save(r / "images" / "img1.jpg"),
         "does not match img1.jpg (80x48)"),
        (lambda r: (r / "annotations" / "img2.xml").unlink(), "annotation for id 'img2'"),
        (lambda r: (r / "train.txt").unlink(), "split file not found"),
    ],
    ids=["malformed", "unknown-class", "missing-image", "zero-area", "outside", "duplicate-id",
         "empty-split", "size-mismatch", "missing-xml", "missing-split"],
)
def test_bad_input_names_file_and_problem(voc_dir, mutate, fragment):
    mutate(voc_dir)
    with pytest.raises(data.DatasetError) as err:
        data.load_split(voc_dir, "train")
    msg = str(err.value)
    assert fragment in msg
    assert str(voc_dir) in msg  # the message names the file


def test_warn_mode_drops_only_the_bad_box_and_writes_a_report(voc_dir, tmp_path):
    (voc_dir / "annotations" / "img1.xml").write_text(
        voc_xml(objects=[("zebra", (5, 6, 30, 40)), ("zebra", (10, 10, 70, 20)), ("dragon", (1, 1, 5, 5))]))
    report = tmp_path / "report.json"
    with pytest.warns(UserWarning, match="2 problem"):
        recs = data.load_split(voc_dir, "train", on_error="warn", report_path=report)
    assert len(recs) == 2 and len(recs[0]["annotations"]) == 1
    items = json.loads(report.read_text())["problems"]
    assert len(items) == 2
    assert all(i["file"].endswith("img1.xml") and i["action"] == "object dropped" for i in items)


def test_register_makes_catalog_entries_and_coco_files(voc_dir, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = data.register(voc_dir, prefix="unit", coco_dir=tmp_path / "coco")
    assert names == {"train": "unit_train", "valid": "unit_valid"}
    assert len(DatasetCatalog.get("unit_train")) == 2
    meta = MetadataCatalog.get("unit_valid")
    assert meta.thing_classes == list(CLASSES)
    assert json.loads(open(meta.json_file).read())["images"][0]["width"] == 64
    # registering again replaces, not fails
    data.register(voc_dir, prefix="unit", coco_dir=tmp_path / "coco")


def test_ground_truth_hash_follows_names_and_boxes_not_the_data_folders_place(voc_dir, tmp_path):
    moved = tmp_path / "elsewhere" / "voc"
    shutil.copytree(voc_dir, moved)
    data.register(voc_dir, prefix="unit", coco_dir=tmp_path / "a", splits=["valid"])
    data.register(moved, prefix="unit2", coco_dir=tmp_path / "b", splits=["valid"])
    a, b = (tmp_path / d / "valid.json" for d in ("a", "b"))
    assert sha256_file(a) != sha256_file(b)  # the COCO file names images by absolute path
    assert data.ground_truth_sha256(a) == data.ground_truth_sha256(b)
    (moved / "annotations" / "img3.xml").write_text(voc_xml("img3.jpg", objects=[("zebra", (3, 3, 30, 30))]))
    data.register(moved, prefix="unit2", coco_dir=tmp_path / "b", splits=["valid"])
    assert data.ground_truth_sha256(a) != data.ground_truth_sha256(b)  # another box: other ground truth


def test_custom_class_list(voc_dir):
    (voc_dir / "annotations" / "img1.xml").write_text(voc_xml(objects=[("Cat", (2, 2, 20, 20))]))
    (voc_dir / "annotations" / "img2.xml").write_text(voc_xml(objects=[("dog", (2, 2, 20, 20))]))
    recs = data.load_split(voc_dir, "train", classes=("cat", "dog"))
    assert [r["annotations"][0]["category_id"] for r in recs] == [0, 1]


def test_missing_data_dir_is_clear(tmp_path):
    with pytest.raises(data.DatasetError, match="DATA_DIR does not exist"):
        data.resolve_data_dir(str(tmp_path / "nope"))
