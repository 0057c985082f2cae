"""A deployable model is a folder of one of two kinds, each with ``detectron2.yaml`` (widths, input
size and test-time settings) and ``manifest.json`` (size and SHA-256 of each file):

``graphs``     the ONNX files of :data:`~wildlib.fast.graphs.GRAPHS` and ``predictor.pth`` (the box
               predictor's weights): Detectron2's code runs the float parts (:func:`save`)
``one-graph``  ``detector.onnx``, the whole detector (:mod:`~wildlib.fast.one_graph`), with its
               canvas and ONNX Runtime settings in the manifest (:func:`save_graph`)

Loading (:func:`load`, either kind) checks every file before use: nothing in it runs code.
Introduced in notebook 04_prune_channels, section 5."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

from ..config import ConfigError, get_config
from ..io import copy_file, read_json, write_json, write_text
from ..modeling import D2_CONFIG_FILE, WeightsError, build_model, save_torch_file, sha256_file
from .graphs import GRAPHS
from .lean_parts import lean_config
from .one_graph import OneGraphDetector
from .runtime import OrtGraph, RuntimeSettings, attach

MANIFEST = "manifest.json"
PREDICTOR = "predictor.pth"
GRAPH_FILE = "detector.onnx"  # a one-graph deployable's ONNX file
CONFIG = D2_CONFIG_FILE  # a model folder's Detectron2 config


def save(out_dir, cfg, model, graphs: dict, threads: int = 2) -> Path:
    """A deployable folder: ``cfg`` (with the pruned widths and test-time settings), the ONNX files
    ``graphs``, the box predictor's weights of ``model`` and a manifest of them all.
    Introduced in notebook 04_prune_channels, section "4 · int8 inference with real int8 kernels"."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CONFIG, lean_config(cfg).dump())
    for name in GRAPHS:
        if Path(graphs[name]).resolve() != (out / f"{name}.onnx").resolve():
            copy_file(graphs[name], out / f"{name}.onnx")
    state = {k: v.detach().cpu().contiguous() for k, v in model.roi_heads.box_predictor.state_dict().items()}
    save_torch_file(state, out / PREDICTOR)
    files = [CONFIG, PREDICTOR] + [f"{g}.onnx" for g in GRAPHS]
    write_json(out / MANIFEST, {"format": "wildlib-deploy", "version": 1, "threads": int(threads),
                                "files": {f: {"bytes": (out / f).stat().st_size, "sha256": sha256_file(out / f)}
                                          for f in files}})
    return out


def input_spec(cfg, classes=None) -> dict:
    """What a program without Detectron2 needs to feed a one-graph deployable (:mod:`wildlib.detect`):
    the test-time resize (shortest edge ``min_size``, longest at most ``max_size``, bilinear), the
    channel order, the pixel mean the canvas is padded with, the score threshold, and the class
    names (``classes``; else numbered)."""
    n = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    names = [str(c) for c in classes] if classes is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for a model of {n} classes")
    min_size = cfg.INPUT.MIN_SIZE_TEST
    return {"min_size": int(min_size if isinstance(min_size, int) else min_size[0]),
            "max_size": int(cfg.INPUT.MAX_SIZE_TEST), "format": str(cfg.INPUT.FORMAT),
            "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN], "resize": "bilinear",
            "score_threshold": float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST), "classes": names}


def save_graph(out_dir, cfg, graph, canvas, settings: RuntimeSettings, classes=None) -> Path:
    """A one-graph deployable folder: ``cfg`` (test input size, widths), the ONNX file ``graph``
    (:func:`~wildlib.fast.one_graph.export_graph` / ``quantize_graph``, made for ``canvas``) and a
    manifest with the canvas and ONNX Runtime ``settings`` it is to run with, and what a program
    without Detectron2 needs to feed it (:func:`input_spec`, ``classes`` the class names).
    Introduced in notebook 04_prune_channels, section 6."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CONFIG, lean_config(cfg).dump())
    if Path(graph).resolve() != (out / GRAPH_FILE).resolve():
        copy_file(graph, out / GRAPH_FILE)
    files = [CONFIG, GRAPH_FILE]
    write_json(out / MANIFEST, {"format": "wildlib-deploy", "version": 2, "kind": "one-graph",
                                "runtime": settings.to_dict(),  # its threads too
                                "canvas": [int(v) for v in canvas], "input": input_spec(cfg, classes),
                                "files": {f: {"bytes": (out / f).stat().st_size, "sha256": sha256_file(out / f)}
                                          for f in files}})
    return out


def _files_of(kind: str) -> list[str]:
    return [CONFIG, GRAPH_FILE] if kind == "one-graph" else [CONFIG, PREDICTOR] + [f"{g}.onnx" for g in GRAPHS]


def deploy_bytes(folder) -> int:
    """Bytes on disk of everything a deployable folder needs (the manifest included).

    Introduced in notebook 04_prune_channels, section "4 · int8 inference with real int8 kernels"."""
    folder = Path(folder)
    kind = "one-graph" if (folder / GRAPH_FILE).is_file() else "graphs"
    return sum((folder / f).stat().st_size for f in _files_of(kind) + [MANIFEST])


MAX_MANIFEST_BYTES = 1 << 20


def _check_manifest(folder: Path) -> dict:
    """The manifest, with every file present at its listed size, and the config's and predictor's
    SHA-256 checked (each ONNX file's is checked on the very bytes ONNX Runtime gets)."""

    path = folder / MANIFEST
    if not path.is_file():
        raise WeightsError(f"{path}: not found (not a deployable folder written by wildlib.fast.save?)")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError("too large")
        manifest = read_json(path)
        files = manifest["files"]
        threads = manifest.get("threads", 2)
        kind = manifest.get("kind", "graphs")
        assert isinstance(files, dict) and all(isinstance(e, dict) for e in files.values())
        assert kind in ("graphs", "one-graph")
    except Exception:
        raise WeightsError(f"{path}: not a deployable manifest") from None
    if not isinstance(threads, int) or not 1 <= threads <= (os.cpu_count() or 1) * 4:
        raise WeightsError(f"{path}: threads must be an integer from 1 to {(os.cpu_count() or 1) * 4}, not {threads!r}")
    if kind == "one-graph":
        canvas, runtime = manifest.get("canvas"), manifest.get("runtime")
        if not (isinstance(canvas, list) and len(canvas) == 2
                and all(isinstance(v, int) and 32 <= v <= 8192 for v in canvas)):
            raise WeightsError(f"{path}: canvas must be [height, width], integers from 32 to 8192, not {canvas!r}")
        try:
            manifest["settings"] = RuntimeSettings(**runtime)
        except (TypeError, ValueError):
            raise WeightsError(f"{path}: not valid ONNX Runtime settings: {runtime!r}") from None
    for name in _files_of(kind):
        f = folder / name
        entry = files.get(name)
        if entry is None or not f.is_file():
            raise WeightsError(f"{f}: missing (or not listed in {path})")
        size = f.stat().st_size
        if size != entry.get("bytes"):
            raise WeightsError(f"{f}: {size} bytes, the manifest says {entry.get('bytes')} (truncated or altered?)")
        if not name.endswith(".onnx") and sha256_file(f) != entry.get("sha256"):
            raise WeightsError(f"{f}: its SHA-256 does not match {path} (altered or damaged?)")
    return manifest


def _deploy_config(path: Path):
    """A deployable's config: safe YAML, no ``_BASE_`` (it would pull in a file the manifest does not
    cover, or a URL), built for the CPU without any weights download."""

    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid config ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict) or "_BASE_" in raw:
        raise ConfigError(f"{path}: a deployable's config must be one self-contained mapping (no _BASE_)")
    cfg = get_config(str(path), freeze=False)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MOBILENET.PRETRAINED = "none"
    cfg.MODEL.DEVICE = "cpu"  # ONNX Runtime runs on the CPU here
    cfg.freeze()
    return cfg


def load(folder, threads: int | None = None):
    """(cfg, model) of a deployable folder written by :func:`save`, on the CPU: the manifest's sizes
    and digests, the config, each ONNX file (and that it fits the config) and the predictor's
    weights are checked before use; every refusal names its file.
    Introduced in notebook 05_evaluate, section "The variants and their files"."""

    folder = Path(folder)
    manifest = _check_manifest(folder)
    cfg = _deploy_config(folder / CONFIG)
    if manifest.get("kind") == "one-graph":
        settings = manifest["settings"]
        if threads:
            settings = RuntimeSettings(**{**settings.to_dict(), "threads": int(threads)})
        graph = OrtGraph(folder / GRAPH_FILE, settings=settings, sha256=manifest["files"][GRAPH_FILE].get("sha256"))
        return cfg, OneGraphDetector(graph, manifest["canvas"], cfg.MODEL.PIXEL_MEAN)
    try:
        model = build_model(cfg, weights="")
    except (ConfigError, ValueError, KeyError, AssertionError, NotImplementedError) as exc:
        raise ConfigError(f"{folder / CONFIG}: does not build a model ({type(exc).__name__}: {exc})") from None
    path = folder / PREDICTOR
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: not a weights file that can be loaded safely ({exc})") from None
    pred = model.roi_heads.box_predictor
    expected = {k: tuple(v.shape) for k, v in pred.state_dict().items()}
    if not isinstance(state, dict) or {k: tuple(getattr(v, "shape", ())) for k, v in state.items()} != expected:
        raise WeightsError(f"{path}: the box predictor's weights do not fit {folder / CONFIG} "
                           f"(expected {expected})")
    pred.load_state_dict(state)
    threads = threads or manifest.get("threads", 2)
    graphs = {g: OrtGraph(folder / f"{g}.onnx", threads, sha256=manifest["files"][f"{g}.onnx"].get("sha256"))
              for g in GRAPHS}
    return cfg, attach(model, graphs, threads)
