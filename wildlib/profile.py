"""Where the time goes: per-module cost of one inference and one training step.

Introduced in notebook 01 (§ "Where the time goes"). Two measurements, never mixed:

* **FLOPs** from fvcore's counters (``FlopCountAnalysis``, the library Detectron2 itself uses).
  fvcore traces the model, so it is wrapped to take an image tensor and return tensors.
  Detectron2 0.6's own wrapper (``detectron2.utils.analysis``) imports ``caffe2`` and cannot be
  used here. Operators fvcore does not count (NMS, ROIAlign, sorting) count as zero FLOPs.
* **Wall time** from ``torch.profiler``: each part of the detector runs inside a
  ``record_function`` range (forward hooks open and close it); a part's time is its range minus
  the ranges of the parts inside it. In a training step, every backward operator is charged to
  the part whose forward operator created it (the autograd sequence number links the two).

The parts are the detector's parts of :mod:`wildlib.parts` (``backbone``, ``fpn``, ``rpn``,
``roi_pooler``, ``box_head``, ``box_predictor``, ``roi_other``, ``other``); in training, the
optimizer step and data loading are reported as rows of their own.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict

import torch
from torch import nn
from .evaluate import load_inputs, quiet_logs
from .config import get_config
from .modeling import build_model
from .data import register, resolve_data_dir
from .io import environment, write_json
from .parts import PART_NAMES, PARTS, part_of

_TAG = "wl::"


@contextlib.contextmanager
def _part_ranges(model):
    """Forward hooks that open a profiler range named after each part while it runs."""
    handles, open_ranges = [], {}
    modules = dict(model.named_modules())
    for part, prefix in PARTS.items():
        if prefix not in modules:
            continue

        def pre(_m, _i, part=part):
            r = torch.autograd.profiler.record_function(_TAG + part)
            r.__enter__()
            open_ranges.setdefault(part, []).append(r)

        def post(_m, _i, _o, part=part):
            open_ranges[part].pop().__exit__(None, None, None)

        handles += [modules[prefix].register_forward_pre_hook(pre), modules[prefix].register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _duration_us(e) -> float:
    return e.time_range.end - e.time_range.start


def _enclosing_part(e) -> str | None:
    p = e.cpu_parent
    while p is not None:
        if p.name.startswith(_TAG) and p.name[len(_TAG):] in PART_NAMES:
            return p.name[len(_TAG):]
        p = p.cpu_parent
    return None


def _in_backward(e) -> bool:
    while e is not None:
        if e.name.startswith("autograd::"):
            return True
        e = e.cpu_parent
    return False


def _split_events(events, total_us: float, backward_us: float | None = None) -> dict[str, dict]:
    """Forward (and backward) milliseconds per part from one profiled call."""
    fwd = defaultdict(float)
    ranges = [e for e in events if e.name.startswith(_TAG) and e.name[len(_TAG):] in PART_NAMES]
    for r in ranges:
        fwd[r.name[len(_TAG):]] += _duration_us(r)
        outer = _enclosing_part(r)
        if outer:
            fwd[outer] -= _duration_us(r)  # exclusive time: the inner part is counted on its own
    out = {p: {"forward_ms": fwd.get(p, 0.0) / 1e3} for p in PART_NAMES}
    out["other"]["forward_ms"] = max(0.0, total_us - sum(_duration_us(r) for r in ranges if _enclosing_part(r) is None)) / 1e3
    if backward_us is not None:
        seq_part = {}
        for e in events:  # forward operators: which part created autograd node number e.sequence_nr
            if e.sequence_nr >= 0 and not _in_backward(e):
                # ops that create no node record the next node's number: the last op wins
                seq_part[e.sequence_nr] = _enclosing_part(e) or "other"
        bwd = defaultdict(float)
        for e in events:
            if e.name.startswith("autograd::engine::evaluate_function") and not (
                    e.cpu_parent is not None and e.cpu_parent.name.startswith("autograd::engine")):
                bwd[seq_part.get(e.sequence_nr, "other")] += _duration_us(e)
        attributed = sum(bwd.values())
        bwd["other"] += max(0.0, backward_us - attributed)  # engine overhead, gradient accumulation
        for p in PART_NAMES:
            out[p]["backward_ms"] = bwd.get(p, 0.0) / 1e3
    return out


def _profile(fn, model):
    """Profiler events of ``fn()`` and its wall time in microseconds (the profiler's own start
    and stop excluded)."""
    from torch.profiler import ProfilerActivity, profile

    with _part_ranges(model), profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        fn()
        wall_us = (time.perf_counter() - t) * 1e6
    return prof.events(), wall_us


def _median_table(runs: list[dict], extra: dict[str, list[float]] | None = None):
    """Median over runs of each (part, column), parts as rows; ``extra`` rows (the optimizer
    step, data loading) go in a column of their own.  Plus each row's share of the total."""
    import pandas as pd

    cols = sorted({c for r in runs for v in r.values() for c in v})
    rows = {p: {c: statistics.median(r[p].get(c, 0.0) for r in runs) for c in cols} for p in PART_NAMES}
    for name, values in (extra or {}).items():
        rows[name] = {**{c: 0.0 for c in cols}, "step_ms": statistics.median(values)}
    df = pd.DataFrame.from_dict(rows, orient="index").fillna(0.0)
    df["total_ms"] = df.drop(columns=[c for c in df if not c.endswith("_ms")]).sum(axis=1)
    df["share"] = df["total_ms"] / df["total_ms"].sum()
    df.index.name = "part"
    return df


@torch.no_grad()
def inference_time(model, inputs: list[dict], warmup: int = 2, runs: int = 10):
    """Median per-part wall time (ms) of batch-1 inference over ``runs`` profiled calls.  Introduced
    in notebook 04_prune_channels, section "5 · Combined, saved, reloaded in a fresh process"."""
    model.eval()
    for i in range(warmup):
        model([inputs[i % len(inputs)]])
    results = []
    for i in range(runs):
        x = inputs[i % len(inputs)]
        events, total_us = _profile(lambda: model([x]), model)
        results.append(_split_events(events, total_us))
    return _median_table(results)


def training_time(model, loader_iter, optimizer=None, warmup: int = 1, runs: int = 5):
    """Median per-part wall time (ms) of one training step: forward and backward per part, plus
    the optimizer step and the time to get the next batch from ``loader_iter`` as rows of their
    own.  ``model`` is put in training mode; its weights change (one SGD step per run)."""
    from detectron2.utils.events import EventStorage

    model.train()
    optimizer = optimizer or torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    results, data_ms, opt_ms = [], [], []
    with EventStorage(0):
        _training_runs(model, loader_iter, optimizer, warmup, runs, results, data_ms, opt_ms)
    return _median_table(results, {"optimizer_step": opt_ms, "data_loading": data_ms})


def _training_runs(model, loader_iter, optimizer, warmup, runs, results, data_ms, opt_ms):
    for i in range(warmup + runs):
        t = time.perf_counter()
        batch = next(loader_iter)
        data = time.perf_counter() - t
        marks = {}

        def step():
            t0 = time.perf_counter()
            losses = model(batch)
            total = sum(losses.values())
            optimizer.zero_grad()
            t1 = time.perf_counter()
            total.backward()
            marks["backward_us"] = (time.perf_counter() - t1) * 1e6
            marks["forward_us"] = (t1 - t0) * 1e6

        events, _ = _profile(step, model)
        t = time.perf_counter()
        optimizer.step()
        opt = time.perf_counter() - t
        if i >= warmup:
            results.append(_split_events(events, marks["forward_us"], marks["backward_us"]))
            data_ms.append(data * 1e3)
            opt_ms.append(opt * 1e3)


def step_seconds(model, loader_iter, runs: int = 12, warmup: int = 1, dtype=None) -> float:
    """Mean wall time (s) of one plain training step (next batch, forward, backward, SGD step)
    on a copy of ``model``, without the profiler: the probe a training's own mean step is held
    against (:mod:`wildlib.contention`), taken right after it trained, in the same process.  A
    mean over batches of random sizes, like the training's: steps differ by up to 1.8x with the
    input size drawn (5 steps' median put run idle1's idle dense control at 1.39x its probe).
    ``dtype``: the forward under autocast at it, as the training's own steps ran (``SOLVER.PRECISION``).
    Introduced in notebook 01_train_baseline, section "Training"."""
    import copy

    from detectron2.utils.events import EventStorage

    work = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD([p for p in work.parameters() if p.requires_grad], lr=0.0)
    device = next(work.parameters()).device.type
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    with EventStorage(0):
        for i in range(warmup + runs):
            t = time.perf_counter()
            data = next(loader_iter)
            with torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext():
                losses = work(data)
            optimizer.zero_grad()
            sum(v.float() for v in losses.values()).backward()
            optimizer.step()
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t)
    return float(statistics.fmean(times))


class _AsTensors(nn.Module):
    """What fvcore can trace: image tensor(s) in, tensors out."""
    def __init__(self, model, batch: list[dict]):
        super().__init__()
        self.model, self.batch = model, batch

    def forward(self, *images):
        batch = [{**b, "image": im} for b, im in zip(self.batch, images)]
        if self.model.training:
            return tuple(self.model(batch).values())
        inst = self.model.inference(batch, do_postprocess=False)
        return tuple(t for i in inst for t in (i.pred_boxes.tensor, i.scores))


def flops(model, batch: list[dict], training: bool = False) -> dict[str, float]:
    """Forward FLOPs (fvcore counts one fused multiply-add as one flop) per part, for one call
    on ``batch`` (in training mode when ``training``; a backward pass costs about twice the
    forward's FLOPs and is not counted)."""
    from fvcore.nn import FlopCountAnalysis


    was = model.training
    model.train(training)
    wrapper = _AsTensors(model, batch)
    analysis = FlopCountAnalysis(wrapper, tuple(b["image"] for b in batch))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    from detectron2.utils.events import EventStorage

    with torch.no_grad(), EventStorage(0), quiet_logs():
        by_module = analysis.by_module()
    model.train(was)
    out = {p: 0.0 for p in PART_NAMES}
    # leaf-most attribution: each module's count minus its children's = its own operators
    names = [n for n in by_module if n.startswith("model.") or n == "model"]
    for n in names:
        own = by_module[n] - sum(by_module[c] for c in names if c.startswith(n + ".") and c.count(".") == n.count(".") + 1)
        out[part_of(n[len("model."):] if n != "model" else "")] += own
    return out


def macs(model, image: dict) -> float:
    """Multiply-accumulates of one forward pass on ``image`` (fvcore: one fused multiply-add = one),
    of a PyTorch model (for an ONNX Runtime model, count its PyTorch twin)."""
    return float(sum(flops(model, [image]).values()))


def cost_table(model, cfg, inputs: list[dict], train_iter=None, runs: int = 10, train_runs: int = 5):
    """On the CPU (the profile records CPU activity only; a CUDA model is refused).  One table: per part, inference and (if ``train_iter`` is given) training-step wall time
    and forward FLOPs. ``model`` is left in eval mode; a training-step run works on a copy.
    Introduced in notebook 01_train_baseline, section "Where the time goes"."""
    import copy

    import pandas as pd

    if next(model.parameters()).is_cuda:
        raise ValueError("cost_table profiles CPU time: move the model to the CPU first (model.to('cpu'))")
    table = inference_time(model, inputs, runs=runs)[["total_ms", "share"]].rename(
        columns={"total_ms": "infer_ms", "share": "infer_share"})
    table["infer_gflops"] = pd.Series(flops(model, inputs[:1])) / 1e9
    if train_iter is not None:
        work = copy.deepcopy(model)
        batch = next(train_iter)
        tr = training_time(work, train_iter, runs=train_runs)
        table = table.join(tr.rename(columns={"forward_ms": "train_fwd_ms", "backward_ms": "train_bwd_ms",
                                              "step_ms": "train_other_ms", "total_ms": "train_ms",
                                              "share": "train_share"}), how="outer")
        table["train_fwd_gflops"] = pd.Series(flops(work, batch, training=True)) / 1e9
    model.eval()
    return table.fillna(0.0).loc[[p for p in list(PART_NAMES) + ["optimizer_step", "data_loading"] if p in table.index]]


def train_batches(cfg):
    """An iterator over training batches exactly as the trainer gets them.

    Introduced in notebook 01_train_baseline, section "Where the time goes"."""
    from detectron2.data import build_detection_train_loader

    return iter(build_detection_train_loader(cfg))


# The recipe before the profile (commit 094370a) and each change made from it, cumulatively.
RECIPE_STEPS = {
    "before (FPN 96, 128 ROIs/image, NCHW)": {"MODEL.FPN.OUT_CHANNELS": 96, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 128,
                                               "MODEL.CHANNELS_LAST": False},
    "+ channels-last": {"MODEL.FPN.OUT_CHANNELS": 96, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 128,
                        "MODEL.CHANNELS_LAST": True},
    "+ 64 ROIs/image": {"MODEL.FPN.OUT_CHANNELS": 96, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 64,
                        "MODEL.CHANNELS_LAST": True},
    "+ FPN 64 channels (now)": {"MODEL.FPN.OUT_CHANNELS": 64, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 64,
                                "MODEL.CHANNELS_LAST": True},
}


def compare_recipes(recipes: dict[str, dict] | None = None, config_name: str = "mobilenet_fpn_cpu",
                    dataset: str = "wild_train", valid: str = "wild_valid", steps: int = 5, rounds: int = 3,
                    images: int = 10, seed: int = 0):
    """Training-step and inference wall time of several configs, measured side by side in this
    process: the same batches and images for all, the recipes interleaved round by round so that
    drifts of the machine hit them alike, after one warm-up each.  Returns a table with the
    median and 90th percentile per recipe and the speedup over the first recipe."""
    import copy

    import numpy as np
    import pandas as pd
    from detectron2.data import DatasetCatalog
    from detectron2.utils.events import EventStorage


    recipes = recipes or RECIPE_STEPS
    base = get_config(config_name, {"DATASETS.TRAIN": [dataset], "DATALOADER.NUM_WORKERS": 0})
    loader = train_batches(base)
    batches = [next(loader) for _ in range(steps + 1)]
    inputs = load_inputs(base, DatasetCatalog.get(valid)[:images])
    models = {}
    for name, over in recipes.items():
        torch.manual_seed(seed)
        m = build_model(get_config(config_name, over), eval_mode=False)
        models[name] = (m, torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4))

    def step(m, opt, batch):
        m.train()
        loss = sum(m(copy.copy(batch)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    train_s = {k: [] for k in recipes}
    infer_s = {k: [] for k in recipes}
    with EventStorage(0):
        for m, opt in models.values():
            step(m, opt, batches[0])
        for _ in range(rounds):
            for name, (m, opt) in models.items():
                for b in batches[1:]:
                    t = time.perf_counter()
                    step(m, opt, b)
                    train_s[name].append(time.perf_counter() - t)
    with torch.no_grad():
        for m, _ in models.values():
            m.eval()([inputs[0]])
        for _ in range(rounds):
            for name, (m, _) in models.items():
                for x in inputs:
                    t = time.perf_counter()
                    m([x])
                    infer_s[name].append(time.perf_counter() - t)
    first = next(iter(recipes))
    rows = []
    for name in recipes:
        tr, inf = np.array(train_s[name]), np.array(infer_s[name]) * 1e3
        rows.append({"recipe": name, "train_s_median": np.median(tr), "train_s_p90": np.percentile(tr, 90),
                     "train_speedup": np.median(train_s[first]) / np.median(tr),
                     "infer_ms_median": np.median(inf), "infer_ms_p90": np.percentile(inf, 90),
                     "infer_speedup": np.median(infer_s[first]) * 1e3 / np.median(inf),
                     "params": sum(p.numel() for p in models[name][0].parameters())})
    return pd.DataFrame(rows).set_index("recipe")


def main(argv=None):
    """``python -m wildlib.profile --out FILE.json``: the recipe comparison on the embedded set."""
    import argparse


    ap = argparse.ArgumentParser(description=compare_recipes.__doc__.split(".")[0])
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        register(resolve_data_dir(a.data_dir), coco_dir=tmp)
        table = compare_recipes(rounds=a.rounds)
    print(table.round(3).to_string())
    if a.out:
        write_json(a.out, {"recipes": table.reset_index().to_dict(orient="records"), "environment": environment(),
                           "runs": f"{5 * a.rounds} training steps and {10 * a.rounds} inferences"})


if __name__ == "__main__":
    main()
