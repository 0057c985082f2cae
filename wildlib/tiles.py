"""Large images as tiles: train on crops, detect slice by slice, merge the tiles' boxes, evaluate on the
original images — the usual way drone and camera-trap surveys find small animals in big frames.
Introduced in notebook 01 (parameter ``TILE``); set as ``INPUT.TILE: [size, overlap]``.

* :func:`tile_grid` cuts an image into ``size`` x ``size`` tiles overlapping by ``overlap``
  pixels (the last row and column aligned to the image's edges).
* :func:`write_tiles` crops every training image once into PNG tiles under the run folder
  (decoded once, lossless) and returns Detectron2 records for them; a box is kept in a tile when
  at least ``min_visible`` of its area lies inside, clipped to the tile.
* :class:`SlicedDetector` wraps a trained model: each tile is resized as at test time, detected,
  its boxes shifted back, and all tiles' boxes merged (:func:`wildlib.slices.merge_slices`: a box cut
  by a tile's edge joins the whole one from the next tile; the config's ``NMS_THRESH_TEST`` is the
  share of the smaller box that must be covered).  Stages evaluate a model
  whose config has ``INPUT.TILE`` through it (:func:`wildlib.evaluate.coco`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .io import atomic_write
from .slices import merge_slices, tile_grid  # torch-free, so that wildlib.detect shares them


def _clip(ann: dict, tile, min_visible: float) -> dict | None:
    x0, y0, x1, y1 = ann["bbox"]
    tx0, ty0, tx1, ty1 = tile
    cx0, cy0, cx1, cy1 = max(x0, tx0), max(y0, ty0), min(x1, tx1), min(y1, ty1)
    if cx1 <= cx0 or cy1 <= cy0 or (cx1 - cx0) * (cy1 - cy0) < min_visible * (x1 - x0) * (y1 - y0):
        return None
    return {**ann, "bbox": [cx0 - tx0, cy0 - ty0, cx1 - tx0, cy1 - ty0]}


def write_tiles(records: list[dict], folder, size: int, overlap: int, min_visible: float = 0.5) -> list[dict]:
    """Crop each record's image into tiles saved under ``folder`` (PNG); records for the tiles
    that hold at least one box."""
    folder = Path(folder) / f"{size}-{overlap}"  # another TILE setting never reuses these crops
    out = []
    for r in records:
        tiles = tile_grid(r["height"], r["width"], size, overlap)
        with Image.open(r["file_name"]) as im:
            image = im.convert("RGB")
        for k, tile in enumerate(tiles):
            anns = [a for a in (_clip(a, tile, min_visible) for a in r["annotations"]) if a]
            if not anns:
                continue
            source = hashlib.sha1(str(r["file_name"]).encode()).hexdigest()[:10]  # nor another image
            path = folder / f"{source}_{k:03d}.png"
            if not path.exists():
                crop = image.crop(tile)
                atomic_write(path, lambda tmp, crop=crop: crop.save(tmp, format="PNG"))
            out.append({"file_name": str(path), "image_id": len(out), "height": tile[3] - tile[1],
                        "width": tile[2] - tile[0], "voc_id": f"{r.get('voc_id', r['image_id'])}@{k}",
                        "tile_of": r["file_name"], "annotations": anns})
    return out


SURVEY_FILL = (124, 116, 104)  # RGB: Detectron2's pixel mean, where a mosaic's cells leave a gap


def survey_mosaics(records: list[dict], folder, grid: int, count: int) -> list[dict]:
    """Large survey images with known boxes: ``count`` mosaics, each ``grid`` x ``grid`` of
    ``records``' images side by side (in order, each used once; cells as large as the largest image
    of the mosaic, gaps filled with :data:`SURVEY_FILL`), their boxes shifted along.  Saved as PNG
    (lossless) under ``folder`` (``survey_000.png``, ...), atomically; returns their Detectron2
    records.  Fewer mosaics where the records run out; none if there are fewer than ``grid``^2.
    Introduced in notebook 05_evaluate, section "Large survey images: slices against the whole"."""
    if grid < 1 or count < 0:
        raise ValueError(f"a survey mosaic needs grid >= 1 and count >= 0, got grid={grid}, count={count}")
    folder = Path(folder)
    n = grid * grid
    out = []
    for k in range(min(count, len(records) // n)):
        cells = records[k * n:(k + 1) * n]
        ch, cw = max(r["height"] for r in cells), max(r["width"] for r in cells)
        canvas = Image.new("RGB", (grid * cw, grid * ch), SURVEY_FILL)
        anns = []
        for j, r in enumerate(cells):
            x, y = (j % grid) * cw, (j // grid) * ch
            with Image.open(r["file_name"]) as im:
                canvas.paste(im.convert("RGB"), (x, y))
            anns += [{**a, "bbox": [a["bbox"][0] + x, a["bbox"][1] + y, a["bbox"][2] + x, a["bbox"][3] + y]}
                     for a in r["annotations"]]
        path = folder / f"survey_{k:03d}.png"
        atomic_write(path, lambda tmp, im=canvas: im.save(tmp, format="PNG"))
        out.append({"file_name": str(path), "image_id": k, "height": grid * ch, "width": grid * cw,
                    "voc_id": path.stem, "cells": [r["file_name"] for r in cells], "annotations": anns})
    return out


class SlicedDetector(nn.Module):
    """Detection on tiles of full-resolution images: ``forward`` takes Detectron2 inputs whose
    ``image`` is the original image (not resized) and returns instances in its coordinates."""
    def __init__(self, model, cfg, size: int, overlap: int):
        super().__init__()
        from detectron2.data import transforms as T

        self.model, self.size, self.overlap = model, int(size), int(overlap)
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.merge = float(cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST)  # merge_slices' share of the smaller box
        self.keep = int(cfg.TEST.DETECTIONS_PER_IMAGE)

    @torch.no_grad()
    def forward(self, batched_inputs):
        return [{"instances": self.detect(x["image"])} for x in batched_inputs]

    def detect(self, image: torch.Tensor):
        from detectron2.structures import Boxes, Instances

        _, h, w = image.shape
        boxes, scores, classes = [], [], []
        for x0, y0, x1, y1 in tile_grid(h, w, self.size, self.overlap):
            crop = image[:, y0:y1, x0:x1].permute(1, 2, 0).numpy()
            resized = self.resize.get_transform(crop).apply_image(crop)
            x = {"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))),
                 "height": y1 - y0, "width": x1 - x0}
            inst = self.model([x])[0]["instances"].to("cpu")
            boxes.append(inst.pred_boxes.tensor + torch.tensor([x0, y0, x0, y0], dtype=torch.float32))
            scores.append(inst.scores)
            classes.append(inst.pred_classes)
        boxes, scores, classes = merge_slices(torch.cat(boxes).numpy(), torch.cat(scores).numpy(),
                                              torch.cat(classes).numpy(), self.merge)
        out = Instances((h, w))
        out.pred_boxes = Boxes(torch.from_numpy(boxes[: self.keep]))
        out.scores, out.pred_classes = torch.from_numpy(scores[: self.keep]), torch.from_numpy(classes[: self.keep])
        return out


def tile_setting(cfg) -> tuple[int, int] | None:
    """``(size, overlap)`` when the config asks for tiles (``INPUT.TILE``), else None."""
    t = list(cfg.INPUT.get("TILE", []) or [])
    if not t:
        return None
    if len(t) != 2:
        raise ValueError(f"INPUT.TILE must be [size, overlap], got {t}")
    tile_grid(1, 1, int(t[0]), int(t[1]))  # checks the values
    return int(t[0]), int(t[1])


def test_loader(cfg, dataset_name: str):
    """Validation images at full resolution (no resizing): the sliced detector resizes tiles."""
    from detectron2.data import DatasetMapper, build_detection_test_loader

    return build_detection_test_loader(cfg, dataset_name, mapper=DatasetMapper(cfg, is_train=False, augmentations=[]))


def register_tiles(dataset_name: str, folder, size: int, overlap: int) -> str:
    """Register ``<dataset_name>_tiles``: the tiles of a registered training set (written once
    under ``folder``), with the same classes.
    Introduced in notebook 01_train_baseline."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    records = write_tiles(DatasetCatalog.get(dataset_name), folder, size, overlap)
    name = f"{dataset_name}_tiles"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda r=records: [dict(x) for x in r])
    MetadataCatalog.get(name).set(thing_classes=MetadataCatalog.get(dataset_name).thing_classes)
    return name


def ensure_registered(cfg, folder) -> None:
    """Register the tiled training sets a config names (``<name>_tiles``) if this process has
    not yet: later stages fine-tune on the tiles stage 01 wrote to ``folder``."""
    from detectron2.data import DatasetCatalog

    tile = tile_setting(cfg)
    for name in cfg.DATASETS.TRAIN:
        if tile and name.endswith("_tiles") and name not in DatasetCatalog.list():
            register_tiles(name[: -len("_tiles")], folder, *tile)
