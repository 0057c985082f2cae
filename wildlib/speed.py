"""Speed experiments: a variant's accuracy and latency measured side by side with the baseline
(:func:`measure`, one row of notebook 04's speed table), sweeps of the test-time knobs, and the
deployable reloaded and measured again in a fresh process.  Introduced in notebook
04_prune_channels."""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from .data import load_split, register
from .evaluate import LATENCY_WARMUP, Variant, accuracy_and_speed, best_within, load_inputs
from .fast import deploy_bytes, load, test_time, test_time_of, with_test_time
from .io import read_json, write_json
from .modeling import build_model, load_trained
from .profile import macs

LATENCY_IMAGES = 20  # validation images the latency runs cycle through (notebooks 04 and 05)


def measure(name: str, model, cfg, dataset: str, baseline, inputs: list[dict], *, file_bytes: int,
            variant_inputs: list[dict] | None = None, twin=None, runs: int = 30, warmup: int = LATENCY_WARMUP,
            count_macs: bool = True) -> dict:
    """One row of the speed table: COCO AP50/AP of ``model`` on ``dataset`` (``cfg``'s test input
    size), its latency measured side by side with ``baseline`` (:func:`wildlib.evaluate.side_by_side`;
    PyTorch and ONNX Runtime at the same thread count), MACs and parameters (of ``twin``, the
    PyTorch model an ONNX Runtime one was exported from; MACs depend on the proposals its weights
    keep, so ``count_macs=False`` where the twin has no trained weights) and the bytes of the
    file(s) it is stored in.
    Introduced in notebook 04_prune_channels."""
    m, t = accuracy_and_speed(model, cfg, dataset, baseline, inputs, variant_inputs, runs, warmup)
    # an ONNX Runtime model's MACs are its PyTorch twin's, at the same test-time settings
    twin = model if twin is None else test_time(copy.deepcopy(twin), **test_time_of(model))
    x = (variant_inputs or inputs)[0]
    return Variant(name, AP50=m["AP50"], AP50_ci95=m["AP50_ci95"], AP=m["AP"], latency_median_ms=t["variant_ms_median"],
                   latency_p90_ms=t["variant_ms_p90"], baseline_ms_median=t["baseline_ms_median"], speedup=t["speedup"],
                   threads=t["threads"], macs=macs(twin, x) if count_macs else None,
                   params=int(sum(p.numel() for p in twin.parameters())), file_bytes=int(file_bytes)).row()


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
                    runs: int = 30, warmup: int = LATENCY_WARMUP, twin=None):
    """AP50 and side-by-side latency of ``model`` at each test-time setting (see :func:`knob_settings`);
    ``twin``: the PyTorch model whose MACs an ONNX Runtime ``model`` has.
    Introduced in notebook 04_prune_channels, section "2 · Test-time knobs before surgery"."""

    rows = []
    for s in settings:
        c = with_test_time(cfg, s["pre_nms"], s["post_nms"], s["detections"], s["min_size"])
        m = test_time(copy.deepcopy(model), s["pre_nms"], s["post_nms"], s["detections"])
        xs = load_inputs(c, records[:len(inputs)]) if s["min_size"] != cfg.INPUT.MIN_SIZE_TEST else inputs
        row = measure("", m, c, dataset, baseline, inputs, variant_inputs=xs, file_bytes=0, runs=runs, warmup=warmup,
                      twin=twin)
        rows.append({**s, **{k: row.get(k) for k in ("AP50", "AP", "latency_median_ms", "latency_p90_ms", "speedup",
                                                      "macs")}})
    return pd.DataFrame(rows)


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Reload a deployable folder and measure it beside the baseline.")
    ap.add_argument("spec", help="JSON: deploy, baseline_dir, data_dir, classes, aliases, threads, runs, warmup, images")
    ap.add_argument("out", help="where the measured row is written (JSON)")
    args = ap.parse_args(argv)
    write_json(args.out, remeasure(read_json(args.spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
