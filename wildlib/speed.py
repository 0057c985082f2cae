"""Speed experiments: a variant's accuracy and latency measured side by side with the baseline
(:func:`measure`, one row of notebook 04's speed table), sweeps of the test-time knobs, and the
deployable reloaded and measured again in a fresh process.  Introduced in notebook
04_prune_channels."""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .data import load_split, register
from .evaluate import (LATENCY_WARMUP, Scored, Variant, against, best_within, load_inputs, scored, side_by_side,
                       with_interval)
from .fast import (OneGraphDetector, OrtGraph, RuntimeSettings, canvas_of, deploy_bytes, export_graph, graph_inputs,
                   graph_part_of, load, quantize_graph, read_onnx, save_graph, test_time, test_time_of, with_test_time)
from .io import cpu_model, progress, read_json, write_json
from .modeling import build_model, load_trained
from .parts import PART_NAMES
from .profile import macs

LATENCY_IMAGES = 20  # validation images the latency runs cycle through (notebooks 04 and 05)


def measure(name: str, model, cfg, dataset: str, baseline, inputs: list[dict], *, file_bytes: int,
            variant_inputs: list[dict] | None = None, twin=None, runs: int = 30, warmup: int = LATENCY_WARMUP,
            count_macs: bool = True, reference: Scored | None = None) -> dict:
    """One row of the speed table: COCO AP50/AP of ``model`` on ``dataset`` (``cfg``'s test input
    size), its latency measured side by side with ``baseline`` (:func:`wildlib.evaluate.side_by_side`;
    PyTorch and ONNX Runtime at the same thread count), MACs and parameters (of ``twin``, the
    PyTorch model an ONNX Runtime one was exported from; MACs depend on the proposals its weights
    keep, so ``count_macs=False`` where the twin has no trained weights) and the bytes of the
    file(s) it is stored in.  ``reference``: the reference scored on ``dataset``'s split
    (:func:`wildlib.evaluate.scored`): the row also holds the paired drop against it, its interval
    and both verdicts (:func:`wildlib.evaluate.against`), from the same detections.
    Introduced in notebook 04_prune_channels."""
    split = reference.split if reference is not None else "valid"  # a name: the split of ``dataset``
    s = scored(model, cfg, {split: dataset}, split)
    m = {**s.metrics, **with_interval(s)}
    verdict = {} if reference is None else {k: v for k, v in against(s, reference).items()
                                            if k not in ("AP50", "AP50_ci95", "AP50_se", "split")}
    t = side_by_side(baseline, model, inputs, variant_inputs, runs=runs, warmup=warmup)
    # an ONNX Runtime model's MACs are its PyTorch twin's, at the same test-time settings (a one
    # graph's are baked in: its twin is handed over with them)
    if twin is None:
        twin = model
    elif hasattr(model, "proposal_generator"):
        twin = test_time(copy.deepcopy(twin), **test_time_of(model))
    x = (variant_inputs or inputs)[0]
    return Variant(name, AP50=m["AP50"], AP50_ci95=m["AP50_ci95"], AP=m["AP"], latency_median_ms=t["variant_ms_median"],
                   latency_p90_ms=t["variant_ms_p90"], baseline_ms_median=t["baseline_ms_median"], speedup=t["speedup"],
                   speedup_cold=t["speedup_cold"], threads=t["threads"], macs=macs(twin, x) if count_macs else None,
                   latency_runs_ms=t["variant_ms_runs"], baseline_runs_ms=t["baseline_ms_runs"],
                   params=int(sum(p.numel() for p in twin.parameters())), file_bytes=int(file_bytes),
                   **verdict).row()


def knob_settings(cfg, proposals, detections, input_sizes) -> list[dict]:
    """One knob at a time, the others at ``cfg``'s values: the settings a test-time sweep measures
    (``cfg``'s own setting once, first).
    Introduced in notebook 04_prune_channels, section "2 · Test-time knobs before surgery"."""
    base = {"pre_nms": int(cfg.MODEL.RPN.PRE_NMS_TOPK_TEST), "post_nms": int(cfg.MODEL.RPN.POST_NMS_TOPK_TEST),
            "detections": int(cfg.TEST.DETECTIONS_PER_IMAGE), "min_size": int(cfg.INPUT.MIN_SIZE_TEST)}
    out = [{"knob": "proposals", **base, "pre_nms": int(a), "post_nms": int(b)} for a, b in proposals]
    out += [{"knob": "detections", **base, "detections": int(d)} for d in detections]
    out += [{"knob": "input size", **base, "min_size": int(s)} for s in input_sizes]
    seen, unique = set(), []
    for s in [{"knob": "proposals", **base}] + out:
        key = tuple(s[k] for k in base)
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


def sweep_test_time(model, cfg, dataset: str, records: list[dict], baseline, inputs: list[dict], settings,
                    runs: int = 30, warmup: int = LATENCY_WARMUP, twin=None, reference: Scored | None = None):
    """AP50 and side-by-side latency of ``model`` at each test-time setting (see :func:`knob_settings`);
    ``twin``: the PyTorch model whose MACs an ONNX Runtime ``model`` has; ``reference``: also the
    paired drop against it and its verdicts (:func:`measure`).
    Introduced in notebook 04_prune_channels, section "2 · Test-time knobs before surgery"."""

    keys = ("AP50", "AP", "latency_median_ms", "latency_p90_ms", "speedup", "macs")
    if reference is not None:
        keys += ("delta_ap50", "delta_ap50_ci95", "non_inferior")
    rows = []
    for s in progress(settings, "test-time settings"):
        c = with_test_time(cfg, s["pre_nms"], s["post_nms"], s["detections"], s["min_size"])
        m = test_time(copy.deepcopy(model), s["pre_nms"], s["post_nms"], s["detections"])
        xs = load_inputs(c, records[:len(inputs)]) if s["min_size"] != cfg.INPUT.MIN_SIZE_TEST else inputs
        row = measure("", m, c, dataset, baseline, inputs, variant_inputs=xs, file_bytes=0, runs=runs, warmup=warmup,
                      twin=twin, reference=reference)
        rows.append({**s, **{k: row.get(k) for k in keys}})
    return pd.DataFrame(rows)


def grid_settings(cfg, proposals, input_sizes, detections: int | None = None) -> list[dict]:
    """Every (proposals, input size) pair, ``detections`` (else ``cfg``'s) kept: the settings a
    search for the fastest non-inferior one measures, ``cfg``'s own first (once).
    Introduced in notebook 04_prune_channels, section 6."""
    det = int(detections or cfg.TEST.DETECTIONS_PER_IMAGE)
    out = [{"knob": "grid", "pre_nms": int(a), "post_nms": int(b), "detections": det, "min_size": int(size)}
           for size in input_sizes for a, b in proposals]
    own = {"knob": "grid", "pre_nms": int(cfg.MODEL.RPN.PRE_NMS_TOPK_TEST),
           "post_nms": int(cfg.MODEL.RPN.POST_NMS_TOPK_TEST), "detections": det, "min_size": int(cfg.INPUT.MIN_SIZE_TEST)}
    return [own] + [s for s in out if s != own]


def fastest_non_inferior(sweep) -> dict | None:
    """The setting (row of :func:`sweep_test_time` with a reference) with the lowest measured
    latency among those non-inferior to the reference (the paired drop's 95% upper end within the
    tolerance); None if none is.
    Introduced in notebook 04_prune_channels, section 6."""
    row = best_within(sweep, "latency_median_ms", verdict="non_inferior", lowest=True)
    return {k: int(row[k]) for k in ("pre_nms", "post_nms", "detections", "min_size")} if row else None


def fastest_within(sweep, reference_ap50: float, tolerance: float) -> dict | None:
    """The setting (row of :func:`sweep_test_time`) with the lowest measured latency among those
    whose AP50 is within ``tolerance`` of ``reference_ap50``; None if none is.
    Introduced in notebook 04_prune_channels, section "5 · Combined, saved, reloaded in a fresh process"."""
    row = best_within(sweep, "latency_median_ms", reference_ap50, tolerance, lowest=True)
    return {k: int(row[k]) for k in ("pre_nms", "post_nms", "detections", "min_size")} if row else None


def pick_test_time(sweep, cfg, max_drop: float) -> dict:
    """Per knob, the cheapest setting swept whose AP50 is at most ``max_drop`` below the AP50 of
    ``cfg``'s own setting (the sweep's first row): what each knob costs, not where the model
    stands; ``cfg``'s own value if none is cheaper.  One combined test-time setting.
    Introduced in notebook 04_prune_channels, section "2 · Test-time knobs before surgery"."""
    defaults = {"pre_nms": int(cfg.MODEL.RPN.PRE_NMS_TOPK_TEST), "post_nms": int(cfg.MODEL.RPN.POST_NMS_TOPK_TEST),
                "detections": int(cfg.TEST.DETECTIONS_PER_IMAGE), "min_size": int(cfg.INPUT.MIN_SIZE_TEST)}
    own = sweep.iloc[0]
    if any(int(own[k]) != v for k, v in defaults.items()):
        raise ValueError("the sweep's first row must be cfg's own setting (as knob_settings puts it)")
    out = dict(defaults)
    for knob, keys in (("proposals", ("post_nms", "pre_nms")), ("detections", ("detections",)),
                       ("input size", ("min_size",))):
        df = sweep[(sweep["knob"] == knob) & (sweep["AP50"] >= own["AP50"] - max_drop)]
        if len(df):
            best = df.sort_values(list(keys)).iloc[0]
            if all(best[k] <= defaults[k] for k in keys):
                out.update({k: int(best[k]) for k in keys})
    return out


# ------------------------------------------------------------- one graph: settings, profile


def runtime_candidates(threads: int) -> list[RuntimeSettings]:
    """The ONNX Runtime settings :func:`choose_runtime` tries, all at ``threads`` intra-op threads
    (the protocol's: every model measured at the same thread count): each graph optimisation
    level, sequential, and the fullest level with parallel execution of independent branches.
    Introduced in notebook 04_prune_channels, section 6."""
    return [RuntimeSettings(threads=threads, optimization=o) for o in ("basic", "extended", "all")] + [
        RuntimeSettings(threads=threads, optimization="all", execution="parallel", inter_threads=2)]


def choose_runtime(graphs: dict, canvas, pixel_mean, inputs: list[dict], candidates: list[RuntimeSettings],
                   runs: int = 10, warmup: int = 2):
    """A short on-machine benchmark: each ONNX file of ``graphs`` (label -> path: the same model
    quantized in different operator formats, say) under each of ``candidates``, in turns, batch 1
    on ``inputs``; median and p90 per (file, settings), the CPU model beside them.  Returns
    (table, the fastest row).  Choose on this machine: the best setting differs between CPUs.
    Introduced in notebook 04_prune_channels, section 6."""
    models = {(label, s): OneGraphDetector(OrtGraph(path, settings=s), canvas, pixel_mean)
              for label, path in graphs.items() for s in candidates}
    times = {k: [] for k in models}
    for i in progress(range(warmup + runs), f"runtime settings ({len(models)} per turn)"):
        x = [inputs[i % len(inputs)]]
        for key, model in (list(models.items()) if i % 2 == 0 else list(models.items())[::-1]):
            t = time.perf_counter()
            model(x)
            if i >= warmup:
                times[key].append((time.perf_counter() - t) * 1000)
    rows = [{"graph": label, **s.to_dict(), "median_ms": float(np.median(ts)), "p90_ms": float(np.percentile(ts, 90)),
             "runs": runs, "cpu_model": cpu_model()} for (label, s), ts in times.items()]
    table = pd.DataFrame(rows).sort_values("median_ms").reset_index(drop=True)
    return table, table.iloc[0].to_dict()


def graph_files(model, cfg, setting: dict, calib_records: list[dict], folder, name: str, *, method: str,
                fmts=("qdq",)) -> tuple[object, object, tuple[int, int], Path, dict[str, Path]]:
    """``model`` at the test-time ``setting`` (pre_nms, post_nms, detections, min_size) as one graph
    on the canvas of that size (:func:`wildlib.fast.export_graph`), quantized in each int8 operator
    format of ``fmts`` (:func:`wildlib.fast.quantize_graph`: calibrated on ``calib_records`` at that
    input size, ``method``), written to ``folder`` as ``<name>_fp32.onnx`` and
    ``<name>_int8_<fmt>.onnx`` -> (its config, its PyTorch twin, the canvas, the fp32 file, format ->
    int8 file).
    Introduced in notebook 04_prune_channels, section 6."""
    c = with_test_time(cfg, setting["pre_nms"], setting["post_nms"], setting["detections"], setting["min_size"])
    twin = test_time(copy.deepcopy(model), setting["pre_nms"], setting["post_nms"], setting["detections"])
    canvas = canvas_of(c)
    fp32 = export_graph(twin, canvas, Path(folder) / f"{name}_fp32.onnx")
    calib = graph_inputs(load_inputs(c, calib_records), canvas, model.pixel_mean)
    int8 = {f: quantize_graph(fp32, calib, Path(folder) / f"{name}_int8_{f}.onnx", method=method, fmt=f) for f in fmts}
    return c, twin, canvas, fp32, int8


def int8_graph(model, cfg, setting: dict, calib_records: list[dict], folder, name: str, *, method: str, fmt: str,
               settings: RuntimeSettings) -> tuple[OneGraphDetector, object, object, Path]:
    """:func:`graph_files` in one operator format ``fmt`` -> (the int8 graph in an ONNX Runtime
    session with ``settings``, its config, its PyTorch twin, the int8 file).
    Introduced in notebook 04_prune_channels, section 6."""
    c, twin, canvas, _, int8 = graph_files(model, cfg, setting, calib_records, folder, name, method=method, fmts=(fmt,))
    return OneGraphDetector.from_file(int8[fmt], canvas, model.pixel_mean, settings=settings), c, twin, int8[fmt]


def graph_profile(model: OneGraphDetector, inputs: list[dict], runs: int = 10, warmup: int = 2) -> pd.DataFrame:
    """Where the one graph's time goes, per detector part (:mod:`wildlib.parts`): ONNX Runtime's own
    profiler times every node of ``runs`` passes (a fresh session of the same file and settings,
    profiling on), summed per part by the node's name (:func:`wildlib.fast.graph_part_of`), and per
    part the share in int8 kernels; beside them what Python spends around the session (padding
    the image, building ``Instances``, rescaling) and ONNX Runtime's own overhead between nodes,
    each a median per image in ms.
    Introduced in notebook 04_prune_channels, section 6."""
    import onnxruntime as ort  # ONNX Runtime: a heavy optional dependency, loaded where used

    so = model.graph.settings.session_options()
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(read_onnx(model.graph.path), so, providers=["CPUExecutionProvider"])
        wall, in_run = [], []
        for i in range(warmup + runs):
            x = inputs[i % len(inputs)]
            t0 = time.perf_counter()
            feed = model.feed(x)
            t1 = time.perf_counter()
            out = session.run(None, feed)
            t2 = time.perf_counter()
            model.instances(out, x)
            wall.append((time.perf_counter() - t0) * 1000)
            in_run.append((t2 - t1) * 1000)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][warmup:]
    start = runs_seen[0]["ts"] if runs_seen else 0
    per_part = {p: [0.0] * runs for p in PART_NAMES}
    int8 = {p: [0.0] * runs for p in PART_NAMES}
    bounds = [(r["ts"], r["ts"] + r["dur"]) for r in runs_seen]
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        run = next((j for j, (a, b) in enumerate(bounds) if a <= e["ts"] <= b), None)
        if run is None:
            continue
        node = e["name"][: -len("_kernel_time")]
        part = graph_part_of(node)
        per_part[part][run] += e["dur"] / 1000
        if e.get("args", {}).get("op_name", "") in ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger",
                                                   "QGemm", "QLinearAdd", "DynamicQuantizeMatMul"):
            int8[part][run] += e["dur"] / 1000
    rows = [{"part": p, "ms": float(np.median(v)), "int8_ms": float(np.median(int8[p]))}
            for p, v in per_part.items() if max(v) > 0]
    nodes_ms = np.sum([v for v in per_part.values()], axis=0)
    run_ms = np.array([b - a for a, b in bounds]) / 1000
    rows.append({"part": "ONNX Runtime between nodes", "ms": float(np.median(run_ms - nodes_ms)), "int8_ms": 0.0})
    rows.append({"part": "Python around the session", "ms": float(np.median(np.array(wall[warmup:])
                                                                             - np.array(in_run[warmup:]))),
                 "int8_ms": 0.0})
    table = pd.DataFrame(rows).set_index("part")
    table["share"] = table["ms"] / float(np.median(wall[warmup:]))
    return table


def best_on_split(best: dict, models: dict, datasets: dict, split: str, reference, max_dets: int | None,
                  known: dict | None = None, detections_file=None) -> dict | None:
    """The chosen ``best`` row's model (``models``: name -> (model, cfg)) scored on ``split`` against
    ``reference`` (:func:`wildlib.evaluate.against`: the paired interval of the difference); a
    verdict already made (``known``: name -> verdict) is taken as it is; None for a row with no model.
    ``detections_file``: its detections are written there (stage 05 takes them).
    Introduced in notebook 04_prune_channels, section "Summary"."""
    if best["name"] in (known or {}):
        return known[best["name"]]
    if best["name"] not in models:
        return None
    model, cfg = models[best["name"]]
    return against(scored(model, cfg, datasets, split, max_dets_per_image=max_dets, detections_file=detections_file),
                   reference)


def reload_one_graph(entry, folder, settings: RuntimeSettings, spec_of, work_dir, classes=None) -> dict | None:
    """A one-graph model (``entry``: (model, cfg)) saved as a deployable folder of its own and measured
    again in a fresh process (``spec_of``: folder -> the spec :func:`in_fresh_process` needs); None
    for any other kind of model.  ``classes``: the class names its manifest gives ``wildlib.detect``
    (else numbered).
    Introduced in notebook 04_prune_channels, section "Summary"."""
    model, cfg = entry
    if not isinstance(model, OneGraphDetector):
        return None
    folder = save_graph(folder, cfg, model.graph.path, model.canvas, settings, classes=classes)
    return in_fresh_process(spec_of(folder), work_dir)


# ------------------------------------------------------------------- reloaded, fresh process


def remeasure(spec: dict) -> dict:
    """Load the deployable folder ``spec["deploy"]`` from disk and measure it as :func:`measure`
    does, beside the baseline ``spec["baseline_dir"]`` (what :func:`in_fresh_process` runs; the spec:
    :func:`wildlib.stages.reload_spec`)."""
    torch.set_num_threads(int(spec["threads"]))
    data_dir = Path(spec["data_dir"])
    classes, aliases = tuple(spec["classes"]), dict(spec.get("aliases") or {})
    datasets = register(data_dir, classes, aliases=aliases, coco_dir=Path(spec["work_dir"]) / "coco")
    base_cfg, baseline = load_trained(spec["baseline_dir"])
    cfg, model = load(spec["deploy"], threads=int(spec["threads"]))
    records = load_split(data_dir, "valid", classes, aliases=aliases)[: int(spec["images"])]
    inputs, own = load_inputs(base_cfg, records), load_inputs(cfg, records)
    row = measure("reloaded", model, cfg, datasets["valid"], baseline, inputs, variant_inputs=own,
                  file_bytes=deploy_bytes(spec["deploy"]), twin=twin_of(cfg), runs=int(spec["runs"]),
                  warmup=int(spec["warmup"]), count_macs=False)
    return {**row, "pid": os.getpid()}


def twin_of(cfg):
    """A PyTorch model of ``cfg``'s shapes (random weights): what parameters are counted on."""
    return build_model(cfg, weights="")


def in_fresh_process(spec: dict, work_dir, timeout: float = 900) -> dict:
    """Run :func:`remeasure` in a new Python process (nothing shared with this one but files).

    Introduced in notebook 04_prune_channels, section "5 · Combined, saved, reloaded in a fresh process"."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "work_dir": str(work_dir)}
    write_json(work_dir / "remeasure_spec.json", spec)
    out = work_dir / "remeasure.json"
    proc = subprocess.run([sys.executable, "-m", "wildlib.speed", str(work_dir / "remeasure_spec.json"), str(out)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"re-measuring {spec['deploy']} in a fresh process failed:\n{proc.stderr[-3000:]}")
    return read_json(out)


def photo_benchmark(deploy, baseline_dir, images: list, *, threads: int, runs: int = 20,
                    warmup: int = LATENCY_WARMUP) -> dict:
    """The deployable folder ``deploy`` beside the PyTorch baseline ``baseline_dir`` (a stage-01
    folder) on a user's photos ``images``, in this process at ``threads`` threads, as every speed
    table measures (:func:`wildlib.evaluate.side_by_side`: median and p90 of ``runs`` timed turns
    after ``warmup``, each model fed its own test-time input size): what ``wildlib-detect --benchmark
    --baseline`` runs, in a process of its own (that command imports no torch).  The images must fit
    the deployable's canvas at its test size (the command passes only those)."""
    torch.set_num_threads(int(threads))
    base_cfg, baseline = load_trained(baseline_dir)
    cfg, model = load(deploy, threads=int(threads))
    records = [{"file_name": str(p)} for p in images]
    t = side_by_side(baseline, model, load_inputs(base_cfg, records), load_inputs(cfg, records), runs=runs,
                     warmup=warmup)
    return {**t, "images": [str(p) for p in images], "deploy": str(deploy), "baseline_dir": str(baseline_dir),
            "cpu": cpu_model(), "load_avg_1min": os.getloadavg()[0]}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["photos"]:  # wildlib.detect's --benchmark --baseline
        ap = argparse.ArgumentParser(prog="python -m wildlib.speed photos",
                                     description="Time a deployable beside the PyTorch baseline on photos.")
        ap.add_argument("images", nargs="+")
        ap.add_argument("--model", required=True, help="a one-graph deployable folder")
        ap.add_argument("--baseline", required=True, help="the PyTorch baseline's folder (stage 01)")
        ap.add_argument("--threads", type=int, required=True)
        ap.add_argument("--runs", type=int, default=20)
        ap.add_argument("--out", required=True, help="where the result is written (JSON)")
        a = ap.parse_args(argv[1:])
        write_json(a.out, photo_benchmark(a.model, a.baseline, a.images, threads=a.threads, runs=a.runs))
        return 0
    ap = argparse.ArgumentParser(description="Reload a deployable folder and measure it beside the baseline.")
    ap.add_argument("spec", help="JSON: deploy, baseline_dir, data_dir, classes, aliases, threads, runs, warmup, images")
    ap.add_argument("out", help="where the measured row is written (JSON)")
    args = ap.parse_args(argv)
    write_json(args.out, remeasure(read_json(args.spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
