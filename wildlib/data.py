"""The wildlife dataset: Pascal VOC parsing and validation, Detectron2 registration, COCO export.

Layout (the authors')::

    <root>/annotations/<id>.xml   Pascal VOC boxes, 1-based inclusive pixel indices
    <root>/images/<id>.jpg
    <root>/train.txt  <root>/valid.txt   one id per line
    <root>/test.txt                      optional: a held-out split that nothing is chosen on

Every problem names the file it is in.  ``on_error="raise"`` (default) stops at the first one;
``on_error="warn"`` drops only the offending box or image, warns, and writes every problem to a
JSON report so that nothing disappears silently.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import parse as parse_xml  # no entity expansion, no external entities
from PIL import Image

from .classes import ALIASES, CLASSES, PAPER_COUNTS
from .io import project_root, read_json, resolve, write_json
from . import synth

SPLITS = ("train", "valid")  # every dataset has these
TEST = "test"                # optional: choices are made on valid, results reported on test


def splits_in(root) -> tuple[str, ...]:
    """The splits a dataset folder holds: train and valid, and test when ``test.txt`` exists.

    Introduced in notebook 00_explore_data, section "Loading and validating"."""
    return SPLITS + ((TEST,) if (Path(root) / f"{TEST}.txt").is_file() else ())


def report_split(datasets: dict) -> str:
    """The split every reported number is measured on: ``test`` when the data has one, else
    ``valid`` (then results are chosen and reported on one split, and the notebooks say so).
    Introduced in notebook 01_train_baseline, section "COCO evaluation on the held-out split"."""
    return TEST if TEST in datasets else "valid"


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


def class_list(classes: Sequence[str] | None = None) -> tuple[str, ...]:
    """The class list a run uses: ``classes`` as given (names kept as written), or the paper's
    13 wildlife classes when empty.  Names must be non-empty and distinct ignoring case.
    Introduced in notebook 00_explore_data."""
    if not classes:
        return CLASSES
    if isinstance(classes, str) or not all(isinstance(c, str) and c.strip() for c in classes):
        raise DatasetError(f"CLASSES must be a list of class names, not {classes!r}")
    names = tuple(c.strip() for c in classes)
    folded = [c.lower() for c in names]
    dup = sorted({c for c in folded if folded.count(c) > 1})
    if dup:
        raise DatasetError(f"CLASSES names {dup} more than once (names are matched ignoring case)")
    return names


def alias_map(aliases: dict | None, classes: Sequence[str] = CLASSES) -> dict[str, str]:
    """Label spellings -> class names, keys lower-cased: ``aliases``, plus the authors' own
    spelling (``hyna`` -> ``hyena``) when the classes are the paper's."""
    aliases = {**(ALIASES if tuple(classes) == CLASSES else {}), **(aliases or {})}
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise DatasetError(f"ALIASES must map label spellings to class names, not {aliases!r}")
    known = {c.lower() for c in classes}
    unknown = sorted(v for v in aliases.values() if v.strip().lower() not in known)
    if unknown:
        raise DatasetError(f"ALIASES point to {unknown}, which are not in the class list ({', '.join(classes)})")
    return {k.strip().lower(): v.strip() for k, v in aliases.items()}


def canonical_name(name: str, classes: Sequence[str], aliases: dict | None = None) -> str | None:
    """The class (as written in ``classes``) that a label names, matched ignoring case and
    through ``aliases``; None if it names none."""
    lookup = {c.lower(): c for c in classes}
    n = name.strip().lower()
    n = alias_map(aliases, classes).get(n, n).lower()
    return lookup.get(n)


def _int(node, tag, path) -> int:
    el = node.find(tag)
    if el is None or el.text is None:
        raise DatasetError(f"{path}: missing <{tag}>")
    try:
        return int(round(float(el.text)))
    except (ValueError, OverflowError):  # "abc", "nan", "inf", "1e400"
        raise DatasetError(f"{path}: <{tag}> is not a finite number: {el.text[:40]!r}") from None


def normalize_id(image_id: str, split_file) -> str:
    """A split file's id as a path relative to the dataset folder (``./a`` is ``a``); ids that
    are absolute or climb out of the folder (``../x``) are refused."""
    import posixpath

    raw = image_id.replace("\\", "/")
    norm = posixpath.normpath(raw)
    if raw.startswith("/") or norm == ".." or norm.startswith("../") or "\0" in raw or norm in (".", ""):
        raise DatasetError(f"{split_file}: id {image_id!r} points outside the dataset folder")
    if any(len(part.encode()) > 200 for part in norm.split("/")):
        raise DatasetError(f"{split_file}: id {image_id[:40]!r}... is too long for a file name")
    return norm


def parse_voc(xml_path, classes: Sequence[str] = CLASSES, problems: Problems | None = None,
              aliases: dict | None = None, max_bytes: int = 16 << 20) -> dict:
    """Parse one VOC file into ``{width, height, filename, objects: [(class_index, x0, y0, x1, y1)]}``.

    Boxes come back in continuous 0-based pixel coordinates: a VOC box with inclusive 1-based
    corners (xmin, ymin, xmax, ymax) covers pixels xmin-1 .. xmax-1, i.e. [xmin-1, xmax).
    """
    problems = problems or Problems()
    xml_path = Path(xml_path)
    try:
        if xml_path.stat().st_size > max_bytes:
            raise DatasetError(f"{xml_path}: annotation file larger than {max_bytes:,} bytes")
        root = parse_xml(xml_path, forbid_dtd=True).getroot()
    except ParseError as exc:
        raise DatasetError(f"{xml_path}: malformed XML ({exc})") from None
    except DefusedXmlException as exc:
        raise DatasetError(f"{xml_path}: XML with a DTD or entities is refused ({type(exc).__name__})") from None
    except FileNotFoundError:
        raise DatasetError(f"{xml_path}: annotation file not found") from None
    except DatasetError:
        raise
    except (OSError, ValueError) as exc:  # a folder, unreadable, bad encoding declaration
        raise DatasetError(f"{xml_path}: cannot be read ({exc})") from None
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
        try:
            xmin, ymin = _int(bb, "xmin", xml_path), _int(bb, "ymin", xml_path)
            xmax, ymax = _int(bb, "xmax", xml_path), _int(bb, "ymax", xml_path)
        except DatasetError as exc:
            problems.add(xml_path, f"object {k} ({raw}): {str(exc).split(': ', 1)[-1]}", "object dropped")
            continue
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


def read_split(root, split: str, max_bytes: int = 64 << 20) -> list[str]:
    """The ids of a split file, normalised (:func:`normalize_id`); each at most once."""
    path = Path(root) / f"{split}.txt"
    try:
        if path.stat().st_size > max_bytes:
            raise DatasetError(f"{path}: split file larger than {max_bytes:,} bytes")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: split file not found") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    ids = [normalize_id(line.strip(), path) for line in text.splitlines() if line.strip()]
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
    """Load one split as Detectron2 dataset dicts (``bbox_mode`` XYXY_ABS).

    Introduced in notebook 00_explore_data, section "Loading and validating"."""
    from detectron2.structures import BoxMode

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    problems = Problems(on_error)
    records = []
    for image_id, name in enumerate(read_split(root, split)):
        xml_path = root / "annotations" / f"{name}.xml"
        img_path = root / "images" / f"{name}.jpg"
        try:
            is_file, exists = xml_path.is_file(), xml_path.exists()
        except OSError as exc:
            problems.add(xml_path, f"cannot be looked up ({exc.strerror})", "image dropped")
            continue
        if exists and not is_file:
            problems.add(xml_path, f"annotation for id {name!r} is not a file", "image dropped")
            continue
        if not exists:
            problems.add(xml_path, f"annotation for id {name!r} (listed in {split}.txt) not found", "image dropped")
            continue
        if not img_path.exists():
            problems.add(img_path, f"image for id {name!r} not found", "image dropped")
            continue
        try:
            ann = parse_voc(xml_path, classes, problems, aliases)
        except DatasetError as exc:  # the whole file is unusable: drop its image (or stop)
            problems.add(xml_path, str(exc).split(": ", 1)[-1], "image dropped")
            continue
        if check_images:
            try:
                with Image.open(img_path) as im:
                    w, h = im.size
                    im.load()  # decode it all: a truncated file fails here, not in training
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
        first = "; ".join(f"{Path(p['file']).name}: {p['problem']}" for p in problems.items[:3])
        where = ""
        if report_path:  # never written into the data folder unless asked
            write_json(report_path, {"split": split, "root": str(root), "problems": problems.items})
            where = f", all listed in {report_path}"
        warnings.warn(f"{root}/{split}.txt: {len(problems.items)} problem(s) found ({first}){where}", stacklevel=2)
    return records


def register(root, classes: Sequence[str] = CLASSES, prefix: str = "wild", splits: Iterable[str] | None = None,
             on_error: str = "raise", coco_dir=None, aliases: dict | None = None) -> dict[str, str]:
    """Register ``<prefix>_<split>`` in Detectron2's catalogs (replacing earlier registrations),
    for ``splits`` (default: those the folder holds, :func:`splits_in`).

    Each split is loaded once here (so bad data fails now, not inside a data-loader worker) and
    exported as COCO JSON into ``coco_dir`` (the notebooks give a folder under ``RUN_DIR``; by
    default a fresh temporary folder: nothing is written into the data folder), which
    COCOEvaluator then uses.
    """
    import tempfile

    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = Path(root).expanduser().resolve()
    splits = splits_in(root) if splits is None else splits
    classes = class_list(classes)
    coco_dir = Path(coco_dir) if coco_dir else Path(tempfile.mkdtemp(prefix="wildlib-coco-"))
    loaded = {split: load_split(root, split, classes, on_error=on_error, aliases=aliases) for split in splits}
    check_disjoint(root, loaded, on_error)
    names = {}
    for split, records in loaded.items():
        name = f"{prefix}_{split}"
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


def check_disjoint(root, records_by_split: dict[str, list[dict]], on_error: str = "raise") -> None:
    """No image may be in two splits (validation on training images measures nothing).  Under
    ``on_error="warn"`` every split after the first drops (in place) the images it shares."""
    shared = split_overlap(records_by_split)
    if not shared:
        return
    first, *later = list(records_by_split)
    ex = sorted(shared)[0]
    where = [s for s, recs in records_by_split.items() if any(_image_key(r) == ex for r in recs)]
    msg = (f"{Path(root) / f'{where[1]}.txt'}: id {ex!r} is also listed in {where[0]}.txt"
           + (f" ({len(shared)} ids are in more than one split)" if len(shared) > 1 else ""))
    if on_error == "raise":
        raise DatasetError(msg)
    warnings.warn(msg + f"; dropped from {', '.join(later)}", stacklevel=3)
    for split in later:
        records_by_split[split][:] = [r for r in records_by_split[split] if _image_key(r) not in shared]


def ground_truth_sha256(json_file) -> str:
    """SHA-256 of a COCO ground-truth file's content with each image reduced to its file's name:
    the images (names, ids, order, sizes), their boxes and the classes, wherever the data folder
    lies.  Its exports name images by absolute path, so a hash of the file's bytes changes when the
    same data is moved or read from another checkout.  (The pixels are not hashed: a data set is
    its names and boxes here, as in the COCO file.)"""
    gt = read_json(json_file)
    images = [{**im, "file_name": Path(str(im.get("file_name", ""))).name} for im in gt.get("images", [])]
    canonical = {k: gt.get(k) for k in ("annotations", "categories")} | {"images": images}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
    """One row per box: class, width, height, area, aspect ratio, relative size.

    Introduced in notebook 00_explore_data, section "Boxes: how big, what shape, how many per image"."""
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
    """Instances per class and split, next to the paper's table; ``total`` counts train + valid
    (the paper's table), a ``test`` column stands beside it.
    Introduced in notebook 00_explore_data, section "Class counts (against the paper's, for the paper's classes)"."""
    import pandas as pd


    table = pd.DataFrame(0, index=list(classes), columns=list(records_by_split), dtype=int)
    for split, recs in records_by_split.items():
        for r in recs:
            for a in r["annotations"]:
                table.loc[classes[a["category_id"]], split] += 1
    table["total"] = table[[s for s in SPLITS if s in table]].sum(axis=1)
    if tuple(classes) == tuple(PAPER_COUNTS):  # the paper's table only beside the paper's classes
        table["paper"] = [PAPER_COUNTS[c] for c in classes]
    return table


def _image_key(record: dict) -> str:
    return record.get("voc_id", record["file_name"])


def split_overlap(records_by_split: dict[str, list[dict]]) -> set[str]:
    """Image ids that appear in more than one split (should be empty).

    Introduced in notebook 00_explore_data, section "The split"."""
    seen: dict[str, str] = {}
    dup = set()
    for split, recs in records_by_split.items():
        for r in recs:
            key = _image_key(r)
            if key in seen and seen[key] != split:
                dup.add(key)
            seen[key] = split
    return dup


def resolve_data_dir(data_dir: str = "", synth_seed: int = 0, synth_scale: float = 1.0,
                     difficulty: float | None = None, scene: str = "savanna"):
    """``data_dir`` if given (a user's VOC folder); else the embedded set of ``scene`` (the
    savanna scenes, or the aerial herd surveys), rendered into ``<project>/data/<scene>`` (or
    ``.../<scene>_s<seed>_x<scale>_d<difficulty>`` for other knobs) the first time it is needed.
    Introduced in notebook 00_explore_data."""
    if data_dir:
        p = resolve(data_dir)
        if not p.is_dir():
            raise DatasetError(f"{p}: DATA_DIR does not exist")
        return p
    cfg = synth.SynthConfig(seed=synth_seed, scale=synth_scale, scene=scene,
                            difficulty=synth.SynthConfig.difficulty if difficulty is None else difficulty)
    name = scene
    if cfg != synth.SynthConfig(scene=scene):
        name += f"_s{cfg.seed}_x{cfg.scale:g}_d{cfg.difficulty:g}"
    return synth.ensure(project_root() / "data" / name, cfg)


def default_classes(data_dir) -> tuple[str, ...]:
    """The classes of an embedded set's scene (its ``synth.json``: the aerial scene's five); for
    any other folder, nothing (:func:`class_list` then gives the paper's 13).
    Introduced in notebook 00_explore_data."""
    meta = Path(data_dir) / "synth.json"
    if meta.is_file():
        scene = (read_json(meta).get("config") or {}).get("scene", "savanna")
        if scene == "aerial":
            return synth.AERIAL_CLASSES
    return ()


SMALL_OBJECT_PX = 32  # a median object under this at the model's input has lost resolution that matters


def input_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """The factor Detectron2's ``ResizeShortestEdge`` scales an image by at test time."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return scale


def sizes_at_input(records, min_size: int, max_size: int):
    """Every box's size, sqrt(w * h) in pixels, once its image is resized to the model's input."""
    import numpy as np

    return np.asarray([input_scale(r["height"], r["width"], min_size, max_size)
                       * ((a["bbox"][2] - a["bbox"][0]) * (a["bbox"][3] - a["bbox"][1])) ** 0.5
                       for r in records for a in r["annotations"]])


def dataset_warnings(records_by_split: dict[str, list[dict]], classes: Sequence[str], *, min_size_test: int,
                     max_size_test: int, smallest_anchor: float, detections_per_image: int,
                     coco_max_dets: int = 100) -> list[dict]:
    """What could make training or evaluation on this data fail quietly, each as
    ``{"check", "message", ...numbers}``.  Introduced in notebook 00, "Checks"."""
    import numpy as np

    out = []
    counts = {s: np.zeros(len(classes), int) for s in records_by_split}
    for s, recs in records_by_split.items():
        for r in recs:
            for a in r["annotations"]:
                counts[s][a["category_id"]] += 1
    for s, c in counts.items():
        missing = [classes[i] for i in np.flatnonzero(c == 0)]
        if missing:
            effect = "the model never learns them" if s == "train" else "their AP cannot be measured"
            out.append({"check": f"classes_missing_in_{s}", "classes": missing,
                        "message": f"no {s} instance of {missing}: {effect}"})
    both = sorted(split_overlap(records_by_split))
    if both:
        out.append({"check": "ids_in_both_splits", "ids": both[:20], "count": len(both),
                    "message": f"{len(both)} image(s) in more than one split, e.g. {both[:3]}"})
    recs = [r for rs in records_by_split.values() for r in rs]
    big = [1 / input_scale(r["height"], r["width"], min_size_test, max_size_test) for r in recs]
    per_image = [len(r["annotations"]) for r in recs]
    sizes = sizes_at_input(recs, min_size_test, max_size_test)
    if sizes.size:
        below = float((sizes < smallest_anchor / 2).mean())
        if below > 0.1 or np.median(sizes) < smallest_anchor:
            out.append({"check": "objects_below_smallest_anchor", "median_px": float(np.median(sizes)),
                        "share_below_half_anchor": below, "smallest_anchor": smallest_anchor,
                        "message": f"at the model's input scale the median object is {np.median(sizes):.1f} px and "
                                   f"{below:.0%} are under half the smallest anchor ({smallest_anchor:g} px): "
                                   "raise the input size, use smaller anchors, or tile the images"})
    if per_image and max(per_image) > min(detections_per_image, coco_max_dets):
        cap = min(detections_per_image, coco_max_dets)
        out.append({"check": "boxes_per_image_over_cap", "max_boxes": int(max(per_image)), "cap": cap,
                    "message": f"an image has {max(per_image)} boxes but at most {cap} detections per image are kept "
                               f"(model and COCO evaluation): recall there is at most {cap / max(per_image):.0%}"})
    lost = float(np.median(big)) if big else 1.0
    if sizes.size and lost > 1.25 and np.median(sizes) < SMALL_OBJECT_PX:
        out.append({"check": "resolution_lost_at_input", "median_downscale": lost, "median_px": float(np.median(sizes)),
                    "message": f"images are shrunk {lost:.1f}x (median) to the {min_size_test}-{max_size_test} px input, "
                               f"leaving the median object {np.median(sizes):.1f} px ({np.median(sizes) * lost:.0f} px "
                               "in the image): keep the native resolution (stage 00 suggests it where the images' short side is "
                               "larger than the input) or tile the images"})
    if big and max(big) > 2:
        out.append({"check": "images_much_larger_than_input", "max_downscale": float(max(big)),
                    "message": f"images are shrunk up to {max(big):.1f}x to the {min_size_test}-{max_size_test} px "
                               "input: small objects may vanish; raise the input size or tile the images"})
    return out
