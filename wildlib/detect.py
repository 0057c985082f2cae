"""Run the compressed detector on your own photos, with ONNX Runtime alone.

    python -m wildlib.detect SOURCE... --model runs/default/04_prune_channels/deploy --out detections/
    wildlib-detect photos/ --model deploy/ --out out/ --draw --score 0.5 --classes zebra giraffe

SOURCE is an image, a folder (searched recursively for common image types) or a text file listing
image paths, one per line.  The model is a one-graph deployable folder (notebook 04's ``deploy/``:
``detector.onnx``, its config and ``manifest.json`` with each file's size and SHA-256 and what this
command needs to feed it: the test-time resize, channel order, pixel mean, class names).  Writes to
``--out``: ``detections.csv`` (image, class, score, box in the image's pixels), ``detections.json``
(COCO results, 0-based ``category_id`` = the class's index in the manifest), ``counts.csv`` (detections
per image and class; the last row the totals: what a survey wants), ``summary.json`` (images,
skipped files and why, detections per class, median and p90 ms per image on this CPU), and with
``--draw`` each image with its boxes under ``drawn/``.

Each image is read as Detectron2 reads it (EXIF orientation applied, RGB, the model's channel order)
and resized as its test-time augmentation does (shortest edge to the manifest's ``min_size``, longest
at most ``max_size``, Pillow's bilinear), so its detections are those notebook 05 scores for the
deployable.  A portrait image that would not fit the graph's landscape canvas is scaled down further
to fit (the summary counts them).  Images larger than the model's input are detected by slices
(``--tile``): overlapping tiles at full resolution, each detected at the model's test size, the boxes
shifted back and merged (the notebooks' own tiling and merge, :mod:`wildlib.slices`).

Nothing here imports torch or Detectron2: ``pip install wildlib[detect]`` (onnxruntime, numpy,
Pillow) is enough.  Bad input is reported by name and skipped (unreadable, truncated, not an image,
more than ``--max-pixels`` pixels: decompression bombs are refused from the header, before decoding);
a deployable whose manifest does not match its files is refused.  Outputs are written atomically.
``--benchmark`` times the graph alone; with ``--baseline DIR`` (stage 01's folder) it also times the
PyTorch baseline side by side with it, in a process of its own that imports torch and Detectron2
(``python -m wildlib.speed photos``, the notebooks' protocol); this one still never does.
Exit status: 0 every image processed, 1 some skipped, 2 nothing could run (model or arguments).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort  # the one engine of this command
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from .io import atomic_write, cpu_model, progress as progress_bar, write_json, write_text
from .slices import merge_slices, tile_grid

IMAGE_TYPES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 150_000_000        # an image above this many pixels is refused from its header (below Pillow's own bomb error, 179M)
MAX_MANIFEST_BYTES = 1 << 20
MAX_GRAPH_BYTES = 1 << 30
MERGE_OVERLAP = 0.5             # tiles' boxes of one class covering half the smaller one merge (slices.merge_slices)
GRAPH_FILE, MANIFEST = "detector.onnx", "manifest.json"


class ModelError(RuntimeError):
    """A deployable folder that cannot be used (named in the message)."""


class BadImage(ValueError):
    """An input image that cannot be used (named in the message)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Deployable:
    """A one-graph deployable folder, checked against its manifest, in one ONNX Runtime session."""

    def __init__(self, folder, threads: int | None = None):
        self.folder = folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise ModelError(f"{path}: not found (not a deployable folder; notebook 04 writes one as deploy/)")
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ModelError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes, not a deployable manifest")
        try:
            m = json.loads(path.read_bytes())
            files, canvas, spec = m["files"], m["canvas"], m["input"]
            assert m.get("kind") == "one-graph" and isinstance(files, dict)
            self.canvas = (int(canvas[0]), int(canvas[1]))
            assert all(32 <= v <= 8192 for v in self.canvas)
            self.min_size, self.max_size = int(spec["min_size"]), int(spec["max_size"])
            assert 16 <= self.min_size <= self.max_size <= 8192
            self.bgr = {"BGR": True, "RGB": False}[spec["format"]]
            self.mean = np.asarray(spec["pixel_mean"], dtype=np.float32).reshape(3, 1, 1)
            self.classes = [str(c) for c in spec["classes"]]
            self.score_threshold = float(spec.get("score_threshold", 0.05))
            runtime = m.get("runtime", {})
        except (ValueError, KeyError, TypeError, IndexError, AssertionError):
            raise ModelError(f"{path}: not a one-graph deployable manifest with its input spec (written by "
                             f"wildlib.fast.save_graph; a folder from before the spec: run notebook 04 again)") from None
        for name, entry in files.items():
            f = folder / str(name)
            if not f.is_file() or f.stat().st_size != entry.get("bytes"):
                raise ModelError(f"{f}: missing, or not the {entry.get('bytes')} bytes {path} lists (truncated or altered?)")
        graph = folder / GRAPH_FILE
        if GRAPH_FILE not in files or graph.stat().st_size > MAX_GRAPH_BYTES:
            raise ModelError(f"{graph}: not listed in {path}, or larger than {MAX_GRAPH_BYTES} bytes")
        data = graph.read_bytes()
        if _sha256(data) != files[GRAPH_FILE].get("sha256"):
            raise ModelError(f"{graph}: its SHA-256 does not match {path} (altered or damaged?)")
        self.threads = int(threads or runtime.get("threads", 2))
        try:
            self.session = ort.InferenceSession(data, _session_options(runtime, self.threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"{graph}: ONNX Runtime cannot load it ({type(exc).__name__}: {str(exc)[:200]})") from None
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != (["image", "image_size"], ["boxes", "scores", "classes"]):
            raise ModelError(f"{graph}: takes {names[0]} and gives {names[1]}: not a one-graph detector")

    def resize_size(self, height: int, width: int) -> tuple[int, int]:
        """The size Detectron2's test-time ``ResizeShortestEdge`` gives an image."""
        scale = self.min_size / min(height, width)
        h, w = height * scale, width * scale
        if max(h, w) > self.max_size:
            shrink = self.max_size / max(h, w)
            h, w = h * shrink, w * shrink
        return int(h + 0.5), int(w + 0.5)

    def test_size(self, height: int, width: int) -> tuple[int, int]:
        """:meth:`resize_size`, made smaller if it still would not fit the canvas (a portrait image on
        a landscape canvas)."""
        h, w = self.resize_size(height, width)
        if h > self.canvas[0] or w > self.canvas[1]:
            fit = min(self.canvas[0] / h, self.canvas[1] / w)
            h, w = max(1, int(h * fit)), max(1, int(w * fit))
        return h, w

    def detect_whole(self, rgb: np.ndarray):
        """(boxes (n, 4) XYXY, scores, classes) of one RGB uint8 image, in its pixels."""
        height, width = rgb.shape[:2]
        h, w = self.test_size(height, width)
        resized = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
        if self.bgr:
            resized = resized[:, :, ::-1]
        canvas = np.empty((1, 3, *self.canvas), dtype=np.float32)
        canvas[0] = self.mean
        canvas[0, :, :h, :w] = resized.transpose(2, 0, 1)
        boxes, scores, classes = self.session.run(None, {"image": canvas,
                                                         "image_size": np.array([h, w], dtype=np.float32)})
        boxes = boxes * np.array([width / w, height / h, width / w, height / h], dtype=np.float32)
        np.clip(boxes, 0, np.array([width, height, width, height], dtype=np.float32), out=boxes)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes[keep], scores[keep], classes[keep].astype(np.int64)

    def detect(self, rgb: np.ndarray, tile: int = 0, overlap: int = 0):
        """Detections of one image: whole, or with ``tile`` > 0 slice by slice (``tile`` x ``tile``
        tiles overlapping by ``overlap`` pixels, merged by :func:`wildlib.slices.merge_slices`)."""
        height, width = rgb.shape[:2]
        if tile <= 0 or (height <= tile and width <= tile):
            return self.detect_whole(rgb)
        parts = []
        for x0, y0, x1, y1 in tile_grid(height, width, tile, overlap):
            b, s, c = self.detect_whole(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
            parts.append((b + np.array([x0, y0, x0, y0], dtype=np.float32), s, c))
        return merge_slices(*(np.concatenate(p) for p in zip(*parts)), MERGE_OVERLAP)

    def auto_tile(self, height: int, width: int) -> tuple[int, int]:
        """``--tile auto``: tiles twice the model's test size, overlapping by an eighth, for an image
        whose shorter side is more than twice the test size (whole, it would be shrunk more than 2x
        and small animals lost); else (0, 0), whole."""
        size = 2 * self.min_size
        return (size, size // 8) if min(height, width) > size else (0, 0)


def _session_options(runtime: dict, threads: int):
    """ONNX Runtime's options from the manifest's runtime settings (wildlib.fast.RuntimeSettings),
    its threads never spinning between images."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = int(runtime.get("inter_threads", 1))
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if runtime.get("execution") == "parallel"
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}.get(
        runtime.get("optimization"), ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def find_images(sources) -> tuple[list[Path], list[tuple[str, str]]]:
    """The images of ``sources`` (files, folders searched recursively, ``.txt`` lists of paths), in
    order, each once; and the sources that named nothing usable, with why."""
    out, bad, seen = [], [], set()

    def add(p: Path):
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)

    for s in sources:
        p = Path(s)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_TYPES:
                    add(f)
        elif p.is_file() and p.suffix.lower() in (".txt", ".lst"):
            for line in p.read_text(errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line) if Path(line).is_absolute() else p.parent / line
                    add(q) if q.is_file() else bad.append((str(q), "listed but not found"))
        elif p.is_file():
            add(p)
        else:
            bad.append((str(p), "not found"))
    return out, bad


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An RGB uint8 array of the image at ``path``, EXIF orientation applied (as Detectron2's
    ``read_image``); :class:`BadImage` naming the file when it is not a readable image or has more
    than ``max_pixels`` pixels (checked from the header, before decoding)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise BadImage(f"{path}: {w}x{h} pixels, more than the {max_pixels} allowed (--max-pixels)")
            im.load()
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except BadImage:
        raise
    except Image.DecompressionBombError:
        raise BadImage(f"{path}: refused by Pillow as a decompression bomb") from None
    except UnidentifiedImageError:
        raise BadImage(f"{path}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or damaged data
        raise BadImage(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def draw(rgb: np.ndarray, boxes, scores, classes, names) -> Image.Image:
    im = Image.fromarray(rgb)
    pen = ImageDraw.Draw(im)
    width = max(1, round(max(im.size) / 300))
    for (x0, y0, x1, y1), s, c in zip(boxes.tolist(), scores.tolist(), classes.tolist()):
        pen.rectangle((x0, y0, x1, y1), outline=(255, 220, 0), width=width)
        label = f"{names[c]} {s:.2f}"
        tx, ty = x0, max(0, y0 - 12)
        pen.rectangle(pen.textbbox((tx, ty), label), fill=(255, 220, 0))
        pen.text((tx, ty), label, fill=(0, 0, 0))
    return im


def _label(path: Path, roots: list[Path], taken: set) -> str:
    """An image's name in the outputs, unique, and a relative path with no ``..`` (a drawn image goes
    to ``OUT/drawn/<name>``, never outside it): its path within the source folder it came from, else
    its file name (numbered where two share one)."""
    name = path.name
    for r in roots:
        try:
            name = str(path.resolve().relative_to(r))
            break
        except ValueError:
            pass
    base, k = name, 1
    while name in taken:
        k += 1
        name = str(Path(base).with_name(f"{k}_{Path(base).name}"))
    taken.add(name)
    return name


def _csv_text(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def run(sources, model_dir, out_dir, *, score: float | None = None, classes=None, threads: int | None = None,
        tile: str = "auto", overlap: int | None = None, draw_images: bool = False, max_pixels: int = MAX_PIXELS,
        progress: bool = True, benchmark: bool = False, baseline=None, benchmark_runs: int = 20) -> dict:
    """Detect on ``sources`` with the deployable ``model_dir`` and write the outputs to ``out_dir``
    (module docstring); returns the summary.  :class:`ModelError` if the model cannot be used.
    Introduced in notebook 05_evaluate, section "The deployable on photos"."""
    model = Deployable(model_dir, threads)
    names = model.classes
    wanted = None
    if classes:
        unknown = sorted(set(classes) - set(names))
        if unknown:
            raise ModelError(f"--classes {unknown}: not classes of this model ({', '.join(names)})")
        wanted = np.array([names.index(c) for c in classes])
    threshold = model.score_threshold if score is None else float(score)
    images, skipped = find_images(sources)
    skipped = [{"file": f, "reason": why} for f, why in skipped]
    roots = [Path(s).resolve() for s in sources if Path(s).is_dir()]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    det_rows, coco, counts, times, drawn, taken, shrunk, tiled = [], [], [], [], [], set(), 0, 0
    fitting = []  # images read whose test size fits the canvas: what --baseline can time
    bar = progress_bar(images, "detect", unit="img", enabled=progress)
    for image_id, path in enumerate(bar):
        name = _label(path, roots, taken)
        try:
            rgb = read_image(path, max_pixels)
        except BadImage as exc:
            skipped.append({"file": str(path), "reason": str(exc)})
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        h, w = rgb.shape[:2]
        size, over = (model.auto_tile(h, w) if tile == "auto" else (int(tile), 0) if tile != "off" else (0, 0))
        if size and overlap is not None:
            over = int(overlap)
        if size and over >= size:
            raise ModelError(f"--overlap {over} must be smaller than the tile size {size}")
        t0 = time.perf_counter()
        boxes, scores, cls = model.detect(rgb, size, over)
        times.append((time.perf_counter() - t0) * 1000)
        tiled += bool(size and max(h, w) > size)
        fits = model.test_size(h, w) == model.resize_size(h, w)
        shrunk += (not size) and not fits
        if fits:
            fitting.append(str(path))
        keep = scores >= threshold
        if wanted is not None:
            keep &= np.isin(cls, wanted)
        boxes, scores, cls = boxes[keep], scores[keep], cls[keep]
        for b, s, c in zip(boxes.tolist(), scores.tolist(), cls.tolist()):
            det_rows.append([name, names[c], f"{s:.5f}", *(f"{v:.2f}" for v in b)])
            coco.append({"image_id": image_id, "file_name": name, "category_id": int(c),
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)})
        counts.append([name, *np.bincount(cls, minlength=len(names)).tolist(), int(len(cls))])
        if draw_images:
            target = out / "drawn" / Path(name).with_suffix(".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            im = draw(rgb, boxes, scores, cls, names)
            atomic_write(target, lambda tmp, im=im: im.save(tmp, format="JPEG", quality=90))
            drawn.append(str(target.relative_to(out)))
        if hasattr(bar, "set_postfix") and len(times) > 1:
            bar.set_postfix(img_s=f"{1000 / np.median(times):.1f}")
    totals = np.sum([r[1:-1] for r in counts], axis=0).tolist() if counts else [0] * len(names)
    write_text(out / "detections.csv", _csv_text([["image", "class", "score", "x0", "y0", "x1", "y1"], *det_rows]))
    write_json(out / "detections.json", {"images": [r[0] for r in counts], "classes": names, "detections": coco})
    write_text(out / "counts.csv", _csv_text([["image", *names, "total"], *counts, ["TOTAL", *totals, sum(totals)]]))
    summary = {"model": str(Path(model_dir)), "images": len(counts), "skipped": skipped,
               "detections": int(sum(totals)), "per_class": dict(zip(names, totals)),
               "score_threshold": threshold, "threads": model.threads, "tiled_images": int(tiled),
               "shrunk_to_fit": int(shrunk), "cpu": cpu_model(), "drawn": drawn,
               "ms_per_image": {"median": float(np.median(times)), "p90": float(np.percentile(times, 90)),
                                "n": len(times)} if times else None}
    if benchmark:
        summary["benchmark"] = benchmark_model(model, images, max_pixels, runs=benchmark_runs)
        if baseline:
            summary["benchmark_vs_pytorch"] = beside_pytorch(model, fitting[:8], baseline, runs=benchmark_runs)
    write_json(out / "summary.json", summary)
    return summary


def benchmark_model(model: Deployable, images: list[Path], max_pixels: int, warmup: int = 3, runs: int = 20) -> dict:
    """Median and p90 ms of the graph alone at batch 1 on up to 8 of the images (decoded once),
    after ``warmup`` passes, ``runs`` timed passes over them, on this CPU at the model's threads."""
    arrays = []
    for p in images[:8]:
        try:
            arrays.append(read_image(p, max_pixels))
        except BadImage:
            continue
    if not arrays:
        return {}
    for rgb in arrays[:warmup]:
        model.detect_whole(rgb)
    times = []
    for _ in range(max(1, runs // len(arrays))):
        for rgb in arrays:
            t0 = time.perf_counter()
            model.detect_whole(rgb)
            times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "runs": len(times),
            "threads": model.threads, "cpu": cpu_model(), "load_avg_1min": os.getloadavg()[0]}


def beside_pytorch(model: Deployable, fits: list[str], baseline, runs: int = 20, timeout: float = 1800) -> dict:
    """The deployable and the PyTorch baseline (``baseline``: a stage-01 folder) timed side by side
    on ``fits`` (images :func:`run` read whose test size fits the graph's canvas; it passes up to 8),
    in one process at the model's threads, as the notebooks' speed tables are (``python -m
    wildlib.speed photos``: :func:`wildlib.speed.photo_benchmark`).  That process needs torch and
    Detectron2; this one never imports them.  Where it cannot run, ``{"error": why}`` (the
    detections are written all the same)."""
    if not fits:
        return {"error": "no image fits the graph's canvas at its test size"}
    with tempfile.TemporaryDirectory(prefix="wildlib-bench-") as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "wildlib.speed", "photos", *fits, "--model", str(model.folder),
               "--baseline", str(baseline), "--threads", str(model.threads), "--runs", str(runs), "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["no message"]
            need = (" (it needs torch and Detectron2: the notebooks' environment)"
                    if "ImportError" in proc.stderr or "ModuleNotFoundError" in proc.stderr else "")
            return {"error": f"the PyTorch baseline could not be timed{need}: {tail[0]}"}
        return json.loads(out.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="wildlib-detect", description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+", help="images, folders (recursive) or .txt lists of image paths")
    ap.add_argument("--model", required=True, help="a one-graph deployable folder (notebook 04's deploy/)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--score", type=float, default=None, help="keep detections scoring at least this "
                    "(default: the model's own test-time threshold)")
    ap.add_argument("--classes", nargs="+", default=None, help="keep only these classes")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: the manifest's)")
    ap.add_argument("--batch", type=int, default=1, help="images per call; the graph takes one image per call, "
                    "so only 1 is supported")
    ap.add_argument("--tile", default="auto", help="auto (default), off, or a tile size in pixels")
    ap.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (auto: an eighth of the tile)")
    ap.add_argument("--draw", action="store_true", help="also write each image with its boxes under OUT/drawn/")
    ap.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="refuse larger images (decompression bombs)")
    ap.add_argument("--benchmark", action="store_true", help="also time the graph alone: median/p90 ms per image")
    ap.add_argument("--baseline", default=None, help="with --benchmark: the PyTorch baseline's folder (stage 01, "
                    "e.g. runs/default/01_baseline), timed side by side with the deployable in a process that needs "
                    "torch and Detectron2")
    ap.add_argument("--benchmark-runs", type=int, default=20, help="timed passes of --benchmark (default 20)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    if a.baseline and not a.benchmark:
        ap.error("--baseline is timed only with --benchmark")
    if a.benchmark_runs < 1:
        ap.error("--benchmark-runs must be at least 1")
    if a.batch != 1:
        ap.error("--batch: the one-graph deployable takes one image per call; only 1 is supported")
    if a.tile not in ("auto", "off") and not (a.tile.isdigit() and int(a.tile) >= 32):
        ap.error(f"--tile must be auto, off or a size of at least 32 pixels, not {a.tile!r}")
    try:
        s = run(a.sources, a.model, a.out, score=a.score, classes=a.classes, threads=a.threads, tile=a.tile,
                overlap=a.overlap, draw_images=a.draw, max_pixels=a.max_pixels, progress=not a.quiet,
                benchmark=a.benchmark, baseline=a.baseline, benchmark_runs=a.benchmark_runs)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    per_class = ", ".join(f"{k} {v}" for k, v in s["per_class"].items() if v) or "none"
    ms = s["ms_per_image"]
    print(f"{s['images']} images, {s['detections']} detections ({per_class}); "
          + (f"median {ms['median']:.1f} ms per image (p90 {ms['p90']:.1f}) on {s['cpu']}, {s['threads']} threads"
             if ms else "nothing timed"))
    if s.get("benchmark"):
        b = s["benchmark"]
        print(f"benchmark: graph alone {b['median_ms']:.1f} ms median, p90 {b['p90_ms']:.1f} over {b['runs']} runs "
              f"(1-min load average {b['load_avg_1min']:.2f})"
              + ("" if a.baseline else "; --baseline DIR times the PyTorch baseline beside it"))
    if s.get("benchmark_vs_pytorch"):
        v = s["benchmark_vs_pytorch"]
        print(f"benchmark: {v['error']}" if "error" in v else
              f"beside the PyTorch baseline, one process, {v['threads']} threads, {v['runs']} turns on {len(v['images'])} "
              f"images: baseline {v['baseline_ms_median']:.1f} ms (p90 {v['baseline_ms_p90']:.1f}), deployable "
              f"{v['variant_ms_median']:.1f} ms (p90 {v['variant_ms_p90']:.1f}): {v['speedup']:.2f}x")
    for sk in s["skipped"]:
        print(f"skipped: {sk['file']}: {sk['reason']}", file=sys.stderr)
    print(f"outputs in {a.out}: detections.csv, detections.json, counts.csv, summary.json"
          + (", drawn/" if a.draw else ""))
    return 1 if s["skipped"] else 0


if __name__ == "__main__":
    sys.exit(main())
