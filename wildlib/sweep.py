"""Papermill sweeps on Dask: a grid of notebook parameters and seeds, each point an ordinary run.

    python -m wildlib.sweep sweeps/frontier.yaml                 # a LocalCluster sized for this machine
    python -m wildlib.sweep sweeps/frontier.yaml --workers 2 --threads 1
    python -m wildlib.sweep sweeps/frontier.yaml --scheduler tcp://host:8786   # an existing Dask cluster
    python -m wildlib.sweep sweeps/frontier.yaml --collate-only  # tables and figure from what is done

A spec (YAML, read with ``yaml.safe_load``: it runs no code) names a base run whose earlier stages
(00 and 01: the data and the trained baseline) every point shares, and groups of points::

    name: frontier
    base_run: runs/sweep-base        # made with base_notebooks and base_params if not there yet
    base_notebooks: ["00", "01"]
    base_params: {}
    params: {SWEEP_RATIOS: [], SENS_RATIOS: []}   # every point
    seed_param: SEED                 # the notebook parameter a point's seed goes to
    groups:
      - name: target
        notebooks: ["02"]
        grid: {TARGET_SPARSITY: [0.5, 0.7, 0.8, 0.9]}   # the cartesian product of the lists
        seeds: [0, 1, 2]
        follow_up: {notebooks: ["03"], seeds: [0], params: {BITS_SWEEP: [4]}}  # then 03 on these seeds' points

Each point runs the real notebooks through :mod:`wildlib.runner` in ``runs/sweeps/<name>/<point>/``
(the base run's stages linked in), so ``make report`` and JupyterLab open it like any run.  A
finished point (``point.json`` with ``status: ok`` and the same parameters) is skipped on a
rerun; a failed one is recorded with its error and the others go on (the exit code says so).
Points whose stage 02 has the same fine-tuning schedule and seed share one dense control: the
first trains it, the others wait for it and reuse it (``DENSE_CONTROL_DIR``).  Kernel starts are
staggered through a Dask lock (many papermill kernels starting at once race for ports).  Every
point pins its PyTorch and BLAS threads.  At the end the points are collated
(:func:`collate`): ``results.csv``, ``frontier.png`` and ``report.md``.

Why Dask: it runs the same code on a LocalCluster, on a cluster of machines (dask-jobqueue's
SLURMCluster, a ``dask scheduler`` started by hand), with futures, dependencies between tasks and
cancellation built in.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil  # installed with Dask: the points' processes, to stop them on Ctrl-C
import yaml

from . import evaluate, intervals, layout, runner, stages
from .evaluate import AP50_TOLERANCE, best_within
from .io import cpu_model, read_json, resolve, save_figure, slug, write_csv, write_json, write_text
from .modeling import sha256_file
from .plots import frontier
from .report import frontier_lines

POINT_FILE = "point.json"
TIMING_FILE = "timing.json"  # every invocation's wall time, layout and CPU: the scaling table
SHARED_STAGES = (layout.EXPLORE, layout.BASELINE)
CONTROL_KEYS = ("FT_ITER", "FT_LR", "FT_SCHEDULE", "IMS_PER_BATCH", "SEED")  # what makes two dense controls one
STAGGER_S = 3.0  # seconds between two kernel starts


class SpecError(ValueError):
    """A sweep spec that cannot be run; the message names the file."""


@dataclass
class Point:
    """One run of the sweep: its folder name, group, notebooks, parameters and seed."""

    id: str
    group: str
    notebooks: list
    params: dict
    seed: int
    control_owner: str | None = None  # the point whose dense control this one reuses
    grid: dict = field(default_factory=dict)  # the grid's own keys (the axes), for the tables
    follow_up: list = field(default_factory=list)  # notebooks run after, with their own parameters
    follow_params: dict = field(default_factory=dict)
    base: str = ""  # the base run's baseline weights (SHA-256): a retrained baseline re-runs every point

    def digest(self) -> str:
        text = json.dumps({"notebooks": self.notebooks, "params": self.params, "follow_up": self.follow_up,
                           "follow_params": self.follow_params, "base": self.base}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Spec:
    name: str
    base_run: Path
    base_notebooks: list
    base_params: dict
    points: list
    out: Path


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def load_spec(path, out_root="runs/sweeps", base_run: str | None = None) -> Spec:
    """Read and check a sweep spec: every parameter must be one that its notebooks declare,
    with a literal of the right kind (:func:`wildlib.runner.check_parameters`)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot be read as YAML ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("groups"), list) or not raw["groups"]:
        raise SpecError(f"{path}: a sweep spec is a mapping with a non-empty list of groups")
    name = str(raw.get("name") or path.stem)
    if slug(name) != name:
        raise SpecError(f"{path}: the sweep's name {name!r} must be a plain folder name (letters, digits, - and _)")
    seed_param = raw.get("seed_param", "SEED")
    common = dict(raw.get("params") or {})
    points: list[Point] = []
    notebooks = {p.name[:2]: p for p in runner.list_notebooks()}
    for g in raw["groups"]:
        if not isinstance(g, dict) or "name" not in g:
            raise SpecError(f"{path}: every group needs a name")
        gname = slug(str(g["name"]))
        grid = g.get("grid") or {}
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise SpecError(f"{path}: group {gname}: grid maps parameter names to non-empty lists")
        nbs = [str(n) for n in g.get("notebooks", ["02"])]
        follow = g.get("follow_up") or {}
        follow_seeds = [int(s) for s in follow.get("seeds", [])]
        seeds = [int(s) for s in g.get("seeds", [0])]
        for combo in itertools.product(*grid.values()):
            axes = dict(zip(grid, combo))
            for seed in seeds:
                extra = seed in follow_seeds  # the grid and seed go to the group's notebooks only
                params = {**common, **(g.get("params") or {}), **axes, seed_param: seed}
                pid = "-".join([gname] + [f"{slug(k)}{_fmt(v)}" for k, v in axes.items()] + [f"seed{seed}"])
                points.append(Point(pid, gname, nbs, params, seed, grid=axes,
                                    follow_up=[str(n) for n in follow.get("notebooks", [])] if extra else [],
                                    follow_params=dict(follow.get("params") or {}) if extra else {}))
    ids = [p.id for p in points]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise SpecError(f"{path}: points {dup} appear twice (two groups with one name and the same grid?)")
    for p in points:
        for nbs, params in ((p.notebooks, p.params), (p.follow_up, p.follow_params)):
            _check_point(path, p.id, nbs, params, notebooks)
    assign_controls(points, runner.parameters_of(notebooks["02"]))
    base = resolve(base_run or raw.get("base_run") or f"{out_root}/{name}/base")
    return Spec(name, base, [str(n) for n in raw.get("base_notebooks", ["00", "01"])], dict(raw.get("base_params") or {}),
                points, resolve(out_root) / name)


def _check_point(path, pid: str, nbs: list, params: dict, notebooks: dict) -> None:
    wrong = [n for n in nbs if n not in notebooks]
    if wrong:
        raise SpecError(f"{path}: point {pid}: no notebook {wrong} (known: {sorted(notebooks)})")
    declared = {}
    for n in nbs:
        declared.update(runner.parameters_of(notebooks[n]))
    stray = sorted(set(params) - set(declared))
    if stray:
        raise SpecError(f"{path}: point {pid}: its notebooks {nbs} take no parameter {stray}")
    try:
        for n in nbs:
            nb_params = runner.parameters_of(notebooks[n])
            runner.check_parameters(notebooks[n], {k: v for k, v in params.items() if k in nb_params})
    except runner.ParameterError as exc:
        raise SpecError(f"{path}: point {pid}: {exc}") from None


def assign_controls(points: list[Point], defaults: dict) -> None:
    """Points whose stage 02 has one fine-tuning schedule and seed share a dense control: the
    first trains it, the others name it as their ``control_owner``."""
    owners: dict[tuple, str] = {}
    for p in points:
        if "02" not in p.notebooks:
            continue
        key = tuple(json.dumps(p.params.get(k, defaults.get(k))) for k in CONTROL_KEYS)
        if key in owners:
            p.control_owner = owners[key]
        else:
            owners[key] = p.id


def point_status(folder: Path, point: Point) -> str | None:
    """``"ok"`` if the point finished with these parameters, else its recorded status or None."""
    f = folder / POINT_FILE
    if not f.exists():
        return None
    try:
        rec = read_json(f)
    except ValueError:
        return None
    return rec.get("status") if rec.get("digest") == point.digest() else None


def prepare_point(folder: Path, base: Path) -> None:
    """The point's folder with the base run's shared stages linked in (read, never written)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stage in SHARED_STAGES:
        layout.link_stage(folder, base, stage)


def run_point(point: dict, base: str, out: str, threads: int, timeout: float, *dependencies) -> dict:
    """A Dask task: run one point's notebooks (waiting first for the point whose dense control
    it reuses: ``dependencies``), record ``point.json``; never raises, a failure is a record."""
    p = Point(**point)
    folder = Path(out) / p.id
    t0 = time.time()
    record = {"id": p.id, "group": p.group, "notebooks": p.notebooks + p.follow_up, "params": p.params,
              "follow_params": p.follow_params, "seed": p.seed, "grid": p.grid, "digest": p.digest(),
              "threads": threads, "host": os.uname().nodename, "started_unix": round(t0, 3)}
    try:
        control_dir = Path(out) / p.control_owner / "02_prune" if p.control_owner else None
        if control_dir and not (control_dir / "metrics.json").exists():  # its 02 (and so its control) failed
            raise RuntimeError(f"the dense control this point reuses was not made: {control_dir} has no results")
        prepare_point(folder, Path(base))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)  # the kernel inherits them: one task per worker process
        # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (its pre-spawn-environ); a
        # kernel that inherits it hands memory back to the OS after every large tensor and trains at
        # half speed (fine-tuning at 1.65 s/iter, over half of it system time, against 0.87 under
        # the runner on one machine): the notebooks run with the C library's default
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        params = {**p.params, "NUM_THREADS": threads}
        if control_dir:
            params["DENSE_CONTROL_DIR"] = str(control_dir)
        for nbs, prm in ((p.notebooks, params), (p.follow_up, {**p.follow_params, "NUM_THREADS": threads})):
            if nbs:
                _stagger()
                runner.run_all(folder, only=nbs, overrides=_declared(prm, nbs), timeout=timeout, echo=False)
        record.update(status="ok")
    except BaseException as exc:  # a failed point is recorded; the sweep goes on
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
        if isinstance(exc, KeyboardInterrupt):
            raise
    finally:
        record["seconds"] = round(time.time() - t0, 1)
        if folder.is_dir():
            write_json(folder / POINT_FILE, record)
    return record


def _declared(params: dict, notebooks: list) -> dict:
    """Only the parameters one of the point's notebooks declares (NUM_THREADS is not in all)."""
    known = set()
    for n in runner.select(runner.list_notebooks(), notebooks):
        known |= set(runner.parameters_of(n))
    return {k: v for k, v in params.items() if k in known}


def _stagger() -> None:
    """Start kernels one at a time, ``STAGGER_S`` apart, across the whole cluster."""
    try:
        from distributed import Lock  # Dask: only inside a task of a running cluster

        with Lock("wildlib-kernel-start"):
            time.sleep(STAGGER_S)
    except (ImportError, ValueError):  # not on a Dask worker (a direct call): nothing to stagger with
        pass


def default_layout(cores: int | None = None) -> tuple[int, int]:
    """(workers, threads per worker) for this machine: two threads a point, as many points as
    that allows (a 2-core machine: one worker with 2 threads; 16 cores: 8 x 2)."""
    cores = cores or os.cpu_count() or 1
    threads = 2 if cores >= 2 else 1
    return max(1, cores // threads), threads


def ensure_base(spec: Spec, timeout: float) -> None:
    """Run the base run's shared stages once, unless they are there already."""
    missing = [s for s in SHARED_STAGES if not (spec.base_run / s / "metrics.json").exists()]
    if missing:
        print(f"[sweep] base run {spec.base_run}: running {spec.base_notebooks} (missing {missing})", flush=True)
        runner.run_all(spec.base_run, only=spec.base_notebooks, overrides=spec.base_params, timeout=timeout)


def run_sweep(spec: Spec, workers: int | None = None, threads: int | None = None, scheduler: str | None = None,
              timeout: float = 3600, progress: bool = True) -> list[dict]:
    """Run every unfinished point of ``spec`` on Dask; returns every point's record."""
    from distributed import Client, LocalCluster, as_completed  # Dask: a heavy optional dependency
    from tqdm.auto import tqdm

    ensure_base(spec, timeout)
    base_id = sha256_file(spec.base_run / "01_baseline" / "model_final.pth")[:16]
    for p in spec.points:
        p.base = base_id
    spec.out.mkdir(parents=True, exist_ok=True)
    default_w, default_t = default_layout()
    workers, threads = workers or default_w, threads or default_t
    done = {p.id: read_json(spec.out / p.id / POINT_FILE) for p in spec.points
            if point_status(spec.out / p.id, p) == "ok"}
    todo = [p for p in spec.points if p.id not in done]
    print(f"[sweep] {spec.name}: {len(spec.points)} points, {len(done)} done already, {len(todo)} to run on "
          + (scheduler or f"a LocalCluster of {workers} worker(s) x {threads} thread(s)"), flush=True)
    records = dict(done)
    if not todo:
        return [records[p.id] for p in spec.points]
    t0, started, finished = time.time(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), []
    cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                  dashboard_address=None, silence_logs=40)
    client = Client(scheduler or cluster)
    futures, collected = {}, set()
    try:
        for i, p in enumerate(todo):  # owners first (the spec's order), so a dependency is always submitted first
            deps = [futures[p.control_owner]] if p.control_owner in futures else []
            # run in the spec's order: tasks submitted within Dask's fifo_timeout of each other are
            # otherwise ordered among themselves by the scheduler, not by submission
            futures[p.id] = client.submit(run_point, asdict(p), str(spec.base_run), str(spec.out), threads, timeout,
                                          *deps, key=f"point-{spec.name}-{p.id}-{p.digest()}", pure=False,
                                          priority=len(todo) - i)
        ids = {f.key: pid for pid, f in futures.items()}
        for fut in tqdm(as_completed(list(futures.values())), total=len(futures), desc=f"sweep {spec.name}",
                        disable=not progress):
            try:
                rec = fut.result()
            except Exception as exc:  # a lost worker, a cancelled task: that point fails, the rest go on
                pt = next(q for q in todo if q.id == ids[fut.key])
                rec = {"id": pt.id, "group": pt.group, "seed": pt.seed, "grid": pt.grid, "status": "failed",
                       "error": f"{type(exc).__name__}: {exc}"}
            records[rec["id"]] = rec
            finished.append(rec["status"])
            collected.add(rec["id"])
            if rec["status"] != "ok":
                print(f"[sweep] {rec['id']} failed: {rec['error']}", flush=True)
    except KeyboardInterrupt:
        # the workers' papermill runs and kernels, while they are still this process's descendants
        # (a kernel runs in a session of its own: a terminal's Ctrl-C never reaches it)
        tree = psutil.Process().children(recursive=True)
        # what this run collected, not the futures' states: a worker killed by the same Ctrl-C
        # marks its finished results lost
        left = [p.id for p in todo if p.id not in collected]
        print(f"\n[sweep] interrupted: stopping {len(left)} unfinished point(s): {left}", flush=True)
        client.cancel(list(futures.values()), force=True)
        for proc in tree:
            runner.stop_tree(proc.pid, grace=3.0)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        record_timing(spec.out, {
            "started": started, "seconds": round(time.time() - t0, 1), "points_run": finished.count("ok"),
            "points_failed": len(finished) - finished.count("ok"), "points_left": len(todo) - len(finished),
            "layout": f"Dask {scheduler}" if scheduler else f"{workers} worker(s) x {threads} thread(s)",
            "cpu_model": "the points' own (results.csv)" if scheduler else cpu_model(),
            "cpu_count": None if scheduler else os.cpu_count()})
    return [records.get(p.id, {"id": p.id, "status": "not run"}) for p in spec.points]


def record_timing(out: Path, entry: dict) -> None:
    """Append one invocation's wall time to the sweep's ``timing.json`` (the scaling table: the
    same spec with other layouts, side by side; a rerun that resumes adds its own row)."""
    path = out / TIMING_FILE
    runs = (read_json(path) if path.exists() else {}).get("runs", [])
    write_json(path, {"runs": runs + [entry]})


# ---------------------------------------------------------------------------------------------
# Collation


def point_row(folder: Path, rec: dict) -> dict:
    """One row of ``results.csv`` from a finished point: its parameters and seed, the gradually
    pruned model's sparsity, AP50 on the report split with its interval, the paired difference to
    the reference and to its own dense control with intervals, file bytes (sparse, and the
    weight-shared ``.wlc`` where stage 03 ran)."""
    row = {"point": rec["id"], "group": rec.get("group"), **rec.get("grid", {}), "seed": rec.get("seed"),
           "status": rec["status"], "seconds": rec.get("seconds")}
    if rec["status"] != "ok":
        return {**row, "error": rec.get("error")}
    p = stages.metrics_of(folder, stages.PRUNE)
    g, dc, split, sizes = p.gradual, p.dense_control, p.evaluation_split, p.sizes or {}
    gt = evaluate.ground_truth(folder / stages.PRUNE / "coco" / f"{split}.json")
    det = folder / stages.PRUNE / stages.DETECTIONS_DIR
    limit = stages.coco_max_dets_of(folder / stages.PRUNE)
    grad = intervals.match(gt, read_json(det / "gradual.json"), limit)
    ctrl = intervals.match(gt, read_json(det / stages.REFERENCE_DETECTIONS["dense control"]), limit)
    vs_control = intervals.paired(grad, ctrl)
    row.update({
        "split": split, "target": g.target, "sparsity": g.sparsity, "iterations": g.iterations,
        "AP50": g.AP50, "AP50_lo": g.AP50_ci95[0], "AP50_hi": g.AP50_ci95[1],
        "dense_control_AP50": dc.AP50, "reference": p.reference, "reference_AP50": p.reference_ap50,
        "delta_vs_reference": g.delta_ap50, "delta_vs_reference_lo": g.delta_ap50_ci95[0],
        "delta_vs_reference_hi": g.delta_ap50_ci95[1], "delta_vs_control": vs_control["delta"],
        "delta_vs_control_lo": vs_control["ci95"][0], "delta_vs_control_hi": vs_control["ci95"][1],
        "within_1ap50": g.within_1ap50, "non_inferior": g.non_inferior,
        "sparse_bytes": sizes.get("pruned_sparse_bytes"), "dense_bytes": sizes.get("baseline_dense_bytes"),
        "train_seconds": g.seconds, "cpu_model": (p.environment or {}).get("cpu_model"),
    })
    if (folder / stages.SHARE / stages.METRICS_FILE).exists():
        s = stages.metrics_of(folder, stages.SHARE)
        wlc = next((v for v in s.variants if (v.file or "").endswith(stages.SHARED_FILE)), None)
        if wlc:
            row.update(shared_bytes=wlc.file_bytes, shared_ratio=wlc.ratio, shared_AP50=wlc.AP50,
                       shared_split=s.evaluation_split)
    return row


def seed_verdict(pairs: list, tolerance: float) -> dict:
    """The seed-mean verdict on ``pairs`` ((variant, reference) Matched, one pair per seed): the
    paired delta's two-level bootstrap interval (every sample draws the seeds, with replacement, then
    resamples the same images for every pair: the spread between seeds widens it; issue 33) and both
    verdicts on it (:func:`wildlib.intervals.non_inferiority`), with the interval over images alone,
    the seeds held fixed, beside it (``ci95_images``)."""
    two = intervals.non_inferiority(
        lambda n: intervals.paired_mean(pairs, samples=n, over_seeds=True), tolerance)
    return {**two, "ci95_images": intervals.paired_mean(pairs, samples=two["samples"])["ci95"]}


def seed_summary(folder: Path, rows, by: list[str], tolerance: float) -> list[dict]:
    """Per setting (the group's axes): the seed mean of AP50 and of the drop, the seed spread, and
    the two-level bootstrap interval of the seed-mean delta against each seed's own reference
    (:func:`seed_verdict`: seeds drawn, then the same images resampled for all seeds and models;
    ``delta_lo_images``/``delta_hi_images``: the seeds held fixed).  Verdicts: *within* (seed-mean
    drop <= tolerance) and *non-inferior* (the two-level interval's 95% upper end of the drop <=
    tolerance)."""
    import pandas as pd

    ok = rows[rows["status"] == "ok"]
    out = []
    for key, df in ok.groupby(by, dropna=False):
        pairs = []
        for pid in df["point"]:
            base = folder / pid / stages.PRUNE
            p = stages.metrics_of(folder / pid, stages.PRUNE)
            gt = evaluate.ground_truth(base / "coco" / f"{p.evaluation_split}.json")
            ref_file = stages.REFERENCE_DETECTIONS[p.reference]
            limit = stages.coco_max_dets_of(base)
            pairs.append((intervals.match(gt, read_json(base / stages.DETECTIONS_DIR / "gradual.json"), limit),
                          intervals.match(gt, read_json(base / stages.DETECTIONS_DIR / ref_file), limit)))
        mean = seed_verdict(pairs, tolerance)
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row.update({"seeds": len(df), "sparsity": df["sparsity"].mean(), "AP50_mean": df["AP50"].mean(),
                    "AP50_seed_sd": df["AP50"].std(ddof=1) if len(df) > 1 else math.nan,
                    "reference_AP50_mean": df["reference_AP50"].mean(),
                    "dense_control_AP50_mean": df["dense_control_AP50"].mean(),
                    "delta_mean": mean["delta"], "delta_lo": mean["ci95"][0], "delta_hi": mean["ci95"][1],
                    "delta_lo_images": mean["ci95_images"][0], "delta_hi_images": mean["ci95_images"][1],
                    "delta_seed_sd": df["delta_vs_reference"].std(ddof=1) if len(df) > 1 else math.nan,
                    "bootstrap_samples": mean["samples"], "within_1ap50": mean["within_tolerance"],
                    "non_inferior": mean["non_inferior"], "non_inferior_clear": mean["bound_clear"],
                    "compression_ratio": (df["dense_bytes"] / df["sparse_bytes"]).mean()})
        out.append(row)
    return pd.DataFrame(out)


def collate(spec: Spec, records: list[dict] | None = None) -> dict:
    """``results.csv`` (a row per point), ``summary.csv`` (seed means per setting), ``frontier.png``
    and ``report.md`` in the sweep's folder, from the points' files.  Returns the headline numbers."""
    import pandas as pd

    if records is None:
        records = [read_json(spec.out / p.id / POINT_FILE) if (spec.out / p.id / POINT_FILE).exists()
                   else {"id": p.id, "group": p.group, "seed": p.seed, "grid": p.grid, "status": "not run"}
                   for p in spec.points]
    rows = pd.DataFrame([point_row(spec.out / r["id"], r) for r in records])
    write_csv(spec.out / "results.csv", rows, index=False)
    axes = sorted({k for p in spec.points for k in p.grid})
    summary = seed_summary(spec.out, rows, ["group", *axes], AP50_TOLERANCE) if (rows["status"] == "ok").any() \
        else pd.DataFrame()
    write_csv(spec.out / "summary.csv", summary, index=False)
    headline = frontier_headline(summary, rows)
    if len(summary):
        save_figure(frontier(rows[rows["status"] == "ok"], summary, AP50_TOLERANCE), spec.out / "frontier.png")
    write_text(spec.out / "report.md", sweep_report(spec, rows, summary, headline))
    write_json(spec.out / "headline.json", headline)
    return headline


def frontier_headline(summary, rows) -> dict:
    """``max_sparsity_within_1ap50`` and ``best_compression_ratio_within_1ap50`` of the frontier:
    the settings whose seed-mean drop from the reference is within 1 AP50 (and, stricter, whose
    95% upper end is), over the settings run with more than one seed."""
    out = {"rule_within": "seed-mean drop from each seed's reference <= 1 AP50 (point estimate), settings with >= 2 seeds",
           "rule_non_inferior": "upper end of the 95% two-level (seeds, then the same images) paired bootstrap interval of the seed-mean drop <= 1 AP50",
           "points": int(len(rows)), "points_ok": int((rows["status"] == "ok").sum()) if len(rows) else 0}
    if not len(summary):
        return out
    multi = summary[summary["seeds"] >= 2]
    for verdict in ("within_1ap50", "non_inferior"):
        for key, name in (("sparsity", "max_sparsity"), ("compression_ratio", "best_compression_ratio")):
            best = best_within(multi, key, verdict=verdict)
            out[f"{name}_{verdict}"] = float(best[key]) if best else 0.0
    cpus = sorted({c for c in rows.get("cpu_model", []) if isinstance(c, str)})
    out["cpu_models"] = cpus
    return out


def sweep_report(spec: Spec, rows, summary, headline: dict) -> str:
    """The sweep's ``report.md``."""
    L = [f"# Sweep `{spec.name}`", "",
         f"{len(rows)} points, {headline.get('points_ok', 0)} finished; base run `{spec.base_run}` (stages 00 and 01 "
         f"shared). Every AP50 is on the report split (`test` for the embedded set: nothing is chosen on it), with an "
         f"image-level bootstrap 95% interval; every delta is paired (the same resampled images for both models); a "
         f"seed-mean delta's interval draws the seeds too (two-level), and its verdicts use that interval.", ""]
    if len(summary):
        L += ["## Seed means per setting", ""] + frontier_lines(summary.to_dict(orient="records"), headline)
    runs = (read_json(spec.out / TIMING_FILE) if (spec.out / TIMING_FILE).exists() else {}).get("runs", [])
    if runs:
        L += ["## Wall time", "", "| started | layout | points run | minutes | CPU |", "|---|---|---|---|---|"]
        L += [f"| {t['started']} | {t['layout']} | {t['points_run']} | {t['seconds'] / 60:.1f} | {t['cpu_model']} |"
              for t in runs] + [""]
    failed = rows[rows["status"] != "ok"] if len(rows) else rows
    if len(failed):
        L += ["## Points not finished", ""] + [f"* `{r['point']}`: {r['status']}" + (f" ({r['error']})" if
                                                 isinstance(r.get("error"), str) else "")
                                                for r in failed.to_dict(orient="records")] + [""]
    L += ["Per point: `results.csv`; the figure: `frontier.png`."]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run a grid of notebook parameters and seeds with papermill on Dask.")
    ap.add_argument("spec", help="a sweep spec (YAML), e.g. sweeps/frontier.yaml")
    ap.add_argument("--out-root", default="runs/sweeps", help="sweeps are written to OUT_ROOT/<name>/")
    ap.add_argument("--base-run", help="the run whose stages 00 and 01 every point shares (default: the spec's)")
    ap.add_argument("--workers", type=int, help="LocalCluster workers (default: cores // 2)")
    ap.add_argument("--threads", type=int, help="threads per point: PyTorch, BLAS (default: 2)")
    ap.add_argument("--scheduler", help="address of an existing Dask scheduler (e.g. tcp://10.0.0.5:8786)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per notebook")
    ap.add_argument("--collate-only", action="store_true", help="only collate the points already finished")
    a = ap.parse_args(argv)
    try:
        spec = load_spec(a.spec, a.out_root, a.base_run)
    except (SpecError, runner.ParameterError) as exc:
        ap.error(str(exc))
    t0 = time.time()
    records = None
    signal.signal(signal.SIGTERM, runner.as_interrupt)  # a SIGTERM stops the points' kernels too
    if not a.collate_only:
        try:
            records = run_sweep(spec, a.workers, a.threads, a.scheduler, a.timeout)
        except KeyboardInterrupt:
            print("[sweep] stopped; finished points are kept and skipped on the next run", file=sys.stderr)
            return 130
    headline = collate(spec, records)
    failed = [r["id"] for r in (records or []) if r.get("status") != "ok"]
    timing = {"seconds": round(time.time() - t0, 1), "workers": a.workers, "threads": a.threads}
    print(json.dumps({**headline, **timing, "failed": failed}, indent=1))
    print(f"[sweep] {spec.out}/results.csv, summary.csv, frontier.png, report.md", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
