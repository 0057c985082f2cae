"""The wildlife dataset: Pascal VOC parsing and validation, Detectron2 registration, COCO export.

Layout (the authors')::

    <root>/annotations/<id>.xml   Pascal VOC boxes, 1-based inclusive pixel indices
    <root>/images/<id>.jpg
    <root>/train.txt  <root>/valid.txt   one id per line

Every problem names the file it is in.  ``on_error="raise"`` (default) stops at the first one;
``on_error="warn"`` drops only the offending box or image, warns, and writes every problem to a
JSON report so that nothing disappears silently.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence
from xml.etree import ElementTree as ET

from PIL import Image

from .classes import ALIASES, CLASSES
from .io import write_json

SPLITS = ("train", "valid")


class DatasetError(ValueError):
    """A problem with the input data; the message names the file."""


@dataclass
class Problems:
    """Collects problems under ``on_error='warn'``; raises at once under ``'raise'``."""

    on_error: str = "raise"
    items: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if self.on_error not in ("raise", "warn"):
            raise ValueError(f"on_error must be 'raise' or 'warn', not {self.on_error!r}")

    def add(self, path, problem: str, action: str):
        if self.on_error == "raise":
            raise DatasetError(f"{path}: {problem}")
        self.items.append({"file": str(path), "problem": problem, "action": action})


def canonical_name(name: str, classes: Sequence[str], aliases: dict | None = None) -> str | None:
    n = name.strip().lower()
    n = (aliases if aliases is not None else ALIASES).get(n, n)
    return n if n in classes else None


def _int(node, tag, path) -> int:
    el = node.find(tag)
    if el is None or el.text is None:
        raise DatasetError(f"{path}: missing <{tag}>")
    try:
        return int(round(float(el.text)))
    except ValueError:
        raise DatasetError(f"{path}: <{tag}> is not a number: {el.text!r}") from None


def parse_voc(xml_path, classes: Sequence[str] = CLASSES, problems: Problems | None = None,
              aliases: dict | None = None) -> dict:
    """Parse one VOC file into ``{width, height, filename, objects: [(class_index, x0, y0, x1, y1)]}``.

    Boxes come back in continuous 0-based pixel coordinates: a VOC box with inclusive 1-based
    corners (xmin, ymin, xmax, ymax) covers pixels xmin-1 .. xmax-1, i.e. [xmin-1, xmax).
    """
    problems = problems or Problems()
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise DatasetError(f"{xml_path}: malformed XML ({exc})") from None
    except FileNotFoundError:
        raise DatasetError(f"{xml_path}: annotation file not found") from None
    size = root.find("size")
    if size is None:
        raise DatasetError(f"{xml_path}: missing <size>")
    width, height = _int(size, "width", xml_path), _int(size, "height", xml_path)
    if width <= 0 or height <= 0:
        raise DatasetError(f"{xml_path}: image size {width}x{height} is not positive")
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name_el = obj.find("name")
        raw = (name_el.text or "") if name_el is not None else ""
        name = canonical_name(raw, classes, aliases)
        if name is None:
            problems.add(xml_path, f"object {k}: unknown class {raw!r} (known: {', '.join(classes)})", "object dropped")
            continue
        bb = obj.find("bndbox")
        if bb is None:
            problems.add(xml_path, f"object {k} ({raw}): missing <bndbox>", "object dropped")
            continue
        xmin, ymin = _int(bb, "xmin", xml_path), _int(bb, "ymin", xml_path)
        xmax, ymax = _int(bb, "xmax", xml_path), _int(bb, "ymax", xml_path)
        x0, y0, x1, y1 = xmin - 1, ymin - 1, xmax, ymax
        if x1 <= x0 or y1 <= y0:
            problems.add(xml_path, f"object {k} ({raw}): box ({xmin},{ymin},{xmax},{ymax}) has zero area", "object dropped")
            continue
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            problems.add(
                xml_path,
                f"object {k} ({raw}): box ({xmin},{ymin},{xmax},{ymax}) lies outside the {width}x{height} image",
                "object dropped",
            )
            continue
        objects.append((classes.index(name), float(x0), float(y0), float(x1), float(y1)))
    fn = root.findtext("filename")
    return {"width": width, "height": height, "filename": fn, "objects": objects}


def read_split(root, split: str) -> list[str]:
    path = Path(root) / f"{split}.txt"
    if not path.exists():
        raise DatasetError(f"{path}: split file not found")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{path}: split file is empty")
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise DatasetError(f"{path}: id {i!r} is listed twice")
        seen.add(i)
    return ids


def load_split(root, split: str, classes: Sequence[str] = CLASSES, on_error: str = "raise",
               report_path=None, check_images: bool = True, aliases: dict | None = None) -> list[dict]:
    """Load one split as Detectron2 dataset dicts (``bbox_mode`` XYXY_ABS)."""
    from detectron2.structures import BoxMode

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    problems = Problems(on_error)
    records = []
    for image_id, name in enumerate(read_split(root, split)):
        xml_path = root / "annotations" / f"{name}.xml"
        img_path = root / "images" / f"{name}.jpg"
        if not xml_path.exists():
            problems.add(xml_path, f"annotation for id {name!r} (listed in {split}.txt) not found", "image dropped")
            continue
        if not img_path.exists():
            problems.add(img_path, f"image for id {name!r} not found", "image dropped")
            continue
        ann = parse_voc(xml_path, classes, problems, aliases)
        if check_images:
            try:
                with Image.open(img_path) as im:
                    w, h = im.size
            except Exception as exc:  # PIL raises several types for broken files
                problems.add(img_path, f"cannot be read as an image ({exc})", "image dropped")
                continue
            if (w, h) != (ann["width"], ann["height"]):
                problems.add(
                    xml_path,
                    f"size {ann['width']}x{ann['height']} in the XML does not match {img_path.name} ({w}x{h})",
                    "image dropped",
                )
                continue
        records.append({
            "file_name": str(img_path),
            "image_id": image_id,
            "voc_id": name,
            "height": ann["height"],
            "width": ann["width"],
            "annotations": [
                {"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS, "category_id": c, "iscrowd": 0}
                for c, x0, y0, x1, y1 in ann["objects"]
            ],
        })
    if problems.items:
        report = Path(report_path) if report_path else root / f"problems_{split}.json"
        write_json(report, {"split": split, "root": str(root), "problems": problems.items})
        warnings.warn(f"{root}/{split}.txt: {len(problems.items)} problem(s) found, see {report}", stacklevel=2)
    return records


def register(root, classes: Sequence[str] = CLASSES, prefix: str = "wild", splits: Iterable[str] = SPLITS,
             on_error: str = "raise", coco_dir=None) -> dict[str, str]:
    """Register ``<prefix>_<split>`` in Detectron2's catalogs (replacing earlier registrations).

    Each split is loaded once here (so bad data fails now, not inside a data-loader worker) and
    exported as COCO JSON next to the data (or in ``coco_dir``), which COCOEvaluator then uses.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = Path(root).expanduser().resolve()
    coco_dir = Path(coco_dir) if coco_dir else root / "coco"
    names = {}
    for split in splits:
        name = f"{prefix}_{split}"
        records = load_split(root, split, classes, on_error=on_error)
        json_file = coco_dir / f"{split}.json"
        write_json(json_file, to_coco(records, classes))
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda r=records: [dict(x) for x in r])
        MetadataCatalog.get(name).set(thing_classes=list(classes), json_file=str(json_file),
                                      evaluator_type="coco", dirname=str(root), split=split)
        names[split] = name
    return names


def to_coco(records: list[dict], classes: Sequence[str] = CLASSES) -> dict:
    """Detectron2 dicts (XYXY_ABS) -> a COCO ground-truth dict ([x, y, w, h], 1-based category ids
    are not needed: ids are the class indices, as Detectron2's evaluator maps them)."""
    images, anns = [], []
    for r in records:
        images.append({"id": r["image_id"], "file_name": r["file_name"], "width": r["width"], "height": r["height"]})
        for a in r["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            anns.append({
                "id": len(anns) + 1, "image_id": r["image_id"], "category_id": a["category_id"],
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
            })
    return {
        "info": {"description": "wildlib export"},
        "images": images,
        "annotations": anns,
        "categories": [{"id": i, "name": c} for i, c in enumerate(classes)],
    }


def box_table(records: list[dict], classes: Sequence[str] = CLASSES, split: str | None = None):
    """One row per box: class, width, height, area, aspect ratio, relative size."""
    import pandas as pd

    rows = []
    for r in records:
        for a in r["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            w, h = x1 - x0, y1 - y0
            rows.append({
                "split": split, "image": r.get("voc_id", r["image_id"]), "class": classes[a["category_id"]],
                "x0": x0, "y0": y0, "w": w, "h": h, "area": w * h, "aspect": w / h,
                "rel_size": (w * h / (r["width"] * r["height"])) ** 0.5,
            })
    return pd.DataFrame(rows)


def class_counts(records_by_split: dict[str, list[dict]], classes: Sequence[str] = CLASSES):
    """Instances per class and split, next to the paper's table."""
    import pandas as pd

    from .classes import PAPER_COUNTS

    table = pd.DataFrame(0, index=list(classes), columns=list(records_by_split), dtype=int)
    for split, recs in records_by_split.items():
        for r in recs:
            for a in r["annotations"]:
                table.loc[classes[a["category_id"]], split] += 1
    table["total"] = table.sum(axis=1)
    table["paper"] = [PAPER_COUNTS.get(c) for c in classes]
    return table


def split_overlap(records_by_split: dict[str, list[dict]]) -> set[str]:
    """Image ids that appear in more than one split (should be empty)."""
    seen: dict[str, str] = {}
    dup = set()
    for split, recs in records_by_split.items():
        for r in recs:
            key = r.get("voc_id", r["file_name"])
            if key in seen and seen[key] != split:
                dup.add(key)
            seen[key] = split
    return dup


def resolve_data_dir(data_dir: str = "", synth_seed: int = 0, synth_scale: float = 1.0,
                     difficulty: float | None = None):
    """``data_dir`` if given (a user's VOC folder); else the embedded savanna set, rendered into
    ``<project>/data/savanna`` (or ``.../savanna_s<seed>_x<scale>_d<difficulty>`` for other knobs)
    the first time it is needed."""
    from . import synth
    from .io import project_root, resolve

    if data_dir:
        p = resolve(data_dir)
        if not p.is_dir():
            raise DatasetError(f"{p}: DATA_DIR does not exist")
        return p
    cfg = synth.SynthConfig(seed=synth_seed, scale=synth_scale,
                            difficulty=synth.SynthConfig.difficulty if difficulty is None else difficulty)
    name = "savanna"
    if cfg != synth.SynthConfig():
        name += f"_s{cfg.seed}_x{cfg.scale:g}_d{cfg.difficulty:g}"
    return synth.ensure(project_root() / "data" / name, cfg)
