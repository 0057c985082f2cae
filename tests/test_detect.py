"""wildlib.detect: the deployable on a user's photos, with ONNX Runtime alone.

A toy one-graph detector (exported here with torch, the same inputs and outputs as notebook 04's)
answers one box, the middle half of the image it was given, scored by the mean of its first channel
(B in BGR order) over the image: the boxes test the resize and its undoing, the scores the channel
order and the canvas.  The equality with the real deployable's detections is tested on the smoke
run (tests/test_notebooks.py)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wildlib import detect

CANVAS = (96, 160)


class Toy(torch.nn.Module):
    def forward(self, image, image_size):
        h, w = image_size[0], image_size[1]
        rows = (torch.arange(CANVAS[0], dtype=torch.float32) < h).float()
        cols = (torch.arange(CANVAS[1], dtype=torch.float32) < w).float()
        mask = rows[:, None] * cols[None, :]
        score = (image[0, 0] * mask).sum() / mask.sum() / 255.0
        boxes = torch.stack([0.25 * w, 0.25 * h, 0.75 * w, 0.75 * h]).reshape(1, 4)
        return boxes, score.reshape(1), torch.ones(1, dtype=torch.int64)


def _manifest(folder: Path, **input_spec) -> None:
    data = (folder / "detector.onnx").read_bytes()
    spec = {"min_size": 80, "max_size": 150, "format": "BGR", "pixel_mean": [100.0, 110.0, 120.0],
            "resize": "bilinear", "score_threshold": 0.05, "classes": ["zebra", "giraffe"], **input_spec}
    (folder / "manifest.json").write_text(json.dumps({
        "format": "wildlib-deploy", "version": 2, "kind": "one-graph", "canvas": list(CANVAS),
        "runtime": {"threads": 1, "optimization": "all", "execution": "sequential", "inter_threads": 1},
        "input": spec,
        "files": {"detector.onnx": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}}))


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("deploy")
    torch.onnx.export(Toy(), (torch.zeros(1, 3, *CANVAS), torch.tensor([96.0, 128.0])), str(folder / "detector.onnx"),
                      input_names=["image", "image_size"], output_names=["boxes", "scores", "classes"],
                      opset_version=17, dynamo=False)
    _manifest(folder)
    return folder


def _photo(path: Path, size, rgb=(10, 20, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)
    return path


def _rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def test_detections_come_back_in_the_images_pixels_in_the_models_channel_order(toy_model, tmp_path):
    photos = tmp_path / "photos"
    _photo(photos / "a.png", (640, 480))                      # landscape: 80 x 107 at the test size
    _photo(photos / "sub" / "b.png", (300, 300), (200, 20, 30))  # square, in a sub-folder
    s = detect.run([photos], toy_model, tmp_path / "out", progress=False, tile="off")
    assert s["images"] == 2 and s["skipped"] == [] and s["per_class"] == {"zebra": 0, "giraffe": 2}
    rows = _rows(tmp_path / "out" / "detections.csv")
    assert rows[0] == ["image", "class", "score", "x0", "y0", "x1", "y1"]
    by_image = {r[0]: r for r in rows[1:]}
    # the middle half of each image, in its own pixels (the toy answers in the resized image's)
    assert [float(v) for v in by_image["a.png"][3:]] == pytest.approx([160, 120, 480, 360], abs=0.01)
    assert [float(v) for v in by_image[str(Path("sub") / "b.png")][3:]] == pytest.approx([75, 75, 225, 225], abs=0.01)
    # the first channel the graph sees is blue (BGR): 200 for a, 30 for b
    assert float(by_image["a.png"][2]) == pytest.approx(200 / 255, abs=1e-4)
    assert float(by_image[str(Path("sub") / "b.png")][2]) == pytest.approx(30 / 255, abs=1e-4)
    coco = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert coco["classes"] == ["zebra", "giraffe"]
    assert coco["detections"][0]["bbox"] == pytest.approx([160, 120, 320, 240], abs=0.01)  # XYWH
    counts = _rows(tmp_path / "out" / "counts.csv")
    assert counts[0] == ["image", "zebra", "giraffe", "total"] and counts[-1] == ["TOTAL", "0", "2", "2"]
    assert s["ms_per_image"]["n"] == 2 and s["cpu"]
    # a score threshold and a class filter
    s = detect.run([photos], toy_model, tmp_path / "out2", progress=False, tile="off", score=0.5)
    assert s["detections"] == 1
    s = detect.run([photos], toy_model, tmp_path / "out3", progress=False, tile="off", classes=["zebra"])
    assert s["detections"] == 0
    with pytest.raises(detect.ModelError, match="not classes of this model"):
        detect.run([photos], toy_model, tmp_path / "out4", progress=False, classes=["lion"])


def test_a_portrait_image_is_shrunk_to_fit_the_canvas_and_still_answered_in_its_pixels(toy_model, tmp_path):
    _photo(tmp_path / "p.png", (300, 600))  # 80 x 160 at the test size: too tall for a 96-high canvas
    s = detect.run([tmp_path / "p.png"], toy_model, tmp_path / "out", progress=False, tile="off")
    assert s["shrunk_to_fit"] == 1
    row = _rows(tmp_path / "out" / "detections.csv")[1]
    assert [float(v) for v in row[3:]] == pytest.approx([75, 150, 225, 450], abs=0.01)


def test_bad_images_are_named_and_skipped_and_the_rest_processed(toy_model, tmp_path):
    photos = tmp_path / "photos"
    _photo(photos / "good.jpg", (200, 150))
    full = (photos / "good.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (photos / "notes.jpg").write_text("not an image")
    _photo(photos / "big.png", (400, 300))
    listing = tmp_path / "list.txt"
    listing.write_text("photos/good.jpg\nphotos/missing.jpg\n")
    rc = detect.main([str(photos), str(listing), "--model", str(toy_model), "--out", str(tmp_path / "out"),
                      "--max-pixels", "100000", "--quiet", "--tile", "off"])
    assert rc == 1  # something was skipped
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    reasons = {Path(k["file"]).name: k["reason"] for k in s["skipped"]}
    assert set(reasons) == {"truncated.jpg", "notes.jpg", "big.png", "missing.jpg"}
    assert "more than the 100000 allowed" in reasons["big.png"] and "truncated.jpg" in reasons["truncated.jpg"]
    assert "not an image" in reasons["notes.jpg"] and "not found" in reasons["missing.jpg"]
    assert s["images"] == 1  # good.jpg, once, though named twice
    assert [r[0] for r in _rows(tmp_path / "out" / "detections.csv")[1:]] == ["good.jpg"]


def test_a_deployable_that_does_not_match_its_manifest_is_refused(toy_model, tmp_path, capsys):
    bad = tmp_path / "deploy"
    bad.mkdir()
    data = bytearray((toy_model / "detector.onnx").read_bytes())
    (bad / "detector.onnx").write_bytes(bytes(data))
    (bad / "manifest.json").write_text((toy_model / "manifest.json").read_text())
    data[len(data) // 2] ^= 0xFF  # same size, one byte altered
    (bad / "detector.onnx").write_bytes(bytes(data))
    _photo(tmp_path / "a.png", (200, 150))
    assert detect.main([str(tmp_path / "a.png"), "--model", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "detector.onnx: its SHA-256 does not match" in capsys.readouterr().err
    assert not (tmp_path / "out" / "detections.csv").exists()
    (bad / "manifest.json").write_text('{"kind": "one-graph", "files": {}}')
    with pytest.raises(detect.ModelError, match="input spec"):
        detect.Deployable(bad)


def _squares(rgb: np.ndarray):
    """Stand-in detector for the tiling test: each white square's box (found by its bright rows and
    columns, one connected run each), score 0.9, class 0."""
    white = rgb[:, :, 0] > 200
    boxes = []
    ys = np.flatnonzero(white.any(axis=1))
    for run in np.split(ys, np.flatnonzero(np.diff(ys) > 1) + 1) if len(ys) else []:
        band = white[run[0]: run[-1] + 1]
        xs = np.flatnonzero(band.any(axis=0))
        for col in np.split(xs, np.flatnonzero(np.diff(xs) > 1) + 1):
            boxes.append([col[0], run[0], col[-1] + 1, run[-1] + 1])
    b = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    return b, np.full(len(b), 0.9, dtype=np.float32), np.zeros(len(b), dtype=np.int64)


def test_slices_find_each_object_once_across_tile_borders(toy_model, monkeypatch):
    model = detect.Deployable(toy_model)
    monkeypatch.setattr(model, "detect_whole", _squares)
    rgb = np.zeros((700, 1000, 3), dtype=np.uint8)
    truth = [(40, 40, 80, 80), (280, 100, 330, 150), (590, 560, 640, 600), (900, 300, 960, 340)]
    for x0, y0, x1, y1 in truth:
        rgb[y0:y1, x0:x1] = 255
    boxes, scores, classes = model.detect(rgb, tile=300, overlap=60)  # the second square spans a tile border
    got = sorted(tuple(int(round(v)) for v in b) for b in boxes.tolist())
    assert got == sorted(truth)
    assert model.auto_tile(700, 1000) == (160, 20) and model.auto_tile(150, 200) == (0, 0)


BLOCK = '''
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "detectron2"):
            raise ImportError(f"{name} is not installed here (an ONNX-Runtime-only environment)")
sys.meta_path.insert(0, Block())
'''


def test_the_command_runs_with_torch_and_detectron2_unimportable(toy_model, tmp_path):
    photos = tmp_path / "photos"
    _photo(photos / "a.png", (640, 480))
    _photo(photos / "b.jpg", (300, 200), (30, 140, 90))
    detect.run([photos], toy_model, tmp_path / "here", progress=False)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK)
    env = {"PYTHONPATH": f"{site}:{Path(detect.__file__).parents[1]}", "PATH": "/usr/bin:/bin"}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "ONNX-Runtime-only" in probe.stderr  # the block works
    done = subprocess.run([sys.executable, "-m", "wildlib.detect", str(photos), "--model", str(toy_model),
                           "--out", str(tmp_path / "there"), "--quiet"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2 images, ")
    for f in ("detections.csv", "counts.csv"):
        assert (tmp_path / "there" / f).read_text() == (tmp_path / "here" / f).read_text()
    # --benchmark --baseline needs torch: here it says so, and the detections are written all the same
    done = subprocess.run([sys.executable, "-m", "wildlib.detect", str(photos), "--model", str(toy_model),
                           "--out", str(tmp_path / "bench"), "--quiet", "--benchmark", "--benchmark-runs", "2",
                           "--baseline", str(tmp_path / "01_baseline")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    side = json.loads((tmp_path / "bench" / "summary.json").read_text())["benchmark_vs_pytorch"]
    assert "needs torch and Detectron2" in side["error"] and "needs torch and Detectron2" in done.stdout
    assert (tmp_path / "bench" / "detections.csv").read_text() == (tmp_path / "here" / "detections.csv").read_text()


def test_drawn_images_stay_in_the_output_folder_with_unique_names(toy_model, tmp_path):
    a = _photo(tmp_path / "x" / "same.png", (200, 150))
    b = _photo(tmp_path / "y" / "same.png", (200, 150), (90, 90, 250))
    before = {p: p.read_bytes() for p in (a, b)}
    s = detect.run([a, b.resolve()], toy_model, tmp_path / "out", progress=False, tile="off", draw_images=True)
    assert s["drawn"] == ["drawn/same.jpg", "drawn/2_same.jpg"]
    assert all((tmp_path / "out" / d).is_file() for d in s["drawn"])
    assert {p: p.read_bytes() for p in (a, b)} == before  # the photos themselves untouched
    assert [r[0] for r in _rows(tmp_path / "out" / "counts.csv")[1:-1]] == ["same.png", "2_same.png"]
