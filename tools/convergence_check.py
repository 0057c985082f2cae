"""Has the baseline converged?  The same model trained 1.5x as long, over 3 seeds, paired on `valid`.

    python tools/convergence_check.py runs/RUN [--seeds 0 1 2] [--longer 1.5] [--workers 2] [--keep DIR]

Trains stage 01's own config (``RUN/01_baseline/detectron2.yaml``: model, data, schedule; stage 00's
data and 01's setup cell are enough, the run's own trained baseline is not used) once per seed at
``--longer`` times its length (the LR drops at the same fractions of the longer schedule) and once
at its length.  The two schedules take the same steps at the same rates up to the shorter one's
first LR drop (``prefix_iteration`` compares Detectron2's schedulers step by step), so the shorter
training resumes from the longer one's checkpoint there instead of training that part again
(model, momentum and scheduler position from the checkpoint, rates from its own schedule; after the
resume it draws batches from the start of its seed's order again).  Each training is evaluated on
`valid` every ``TEST.EVAL_PERIOD`` (the learning curves).  A seed's two trainings run one after the
other in one process (1 PyTorch thread), ``--workers`` seeds at a time; each resumes from its last
checkpoint if stopped.

A finished training is scored on `valid` in its process and kept as a small gzipped record in
``--keep`` (default ``OUT/kept``, under ``runs/``; the project keeps its in ``docs/convergence``, under
version control, so that a check carries across machines and sessions): its learning curve, COCO
metrics, detections on `valid`, the ground truth's SHA-256 and the test-time settings they were made
with, its config's SHA-256, the checkpoint a 1x training started from, the CPU model and commit.  A
training whose record is kept is not trained again; a record made on other `valid` images or
settings, or by another training, is refused by name.  When every record is there: the paired
bootstrap of longer - shorter per seed and of their seed mean (the same resampled images for every
pair; and with the seeds drawn too, a two-level bootstrap).  The rule (issue 32): converged when the
seed mean gains <= 0.5 AP50 (point estimate).  Writes ``OUT/convergence.json`` and
``learning_curves.png``.  Nothing is timed here: its step times are those of processes sharing the
machine.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import multiprocessing
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from detectron2.solver import build_lr_scheduler

from wildlib import data, evaluate, intervals, io, plots, stages, train
from wildlib.config import get_config
from wildlib.modeling import sha256_file

GAIN_LIMIT = 0.5  # AP50: the longer schedule may gain at most this much (seed mean, paired, valid)
RECORD_KEYS = ("name", "seed", "factor", "iterations", "curve", "metrics", "detections", "source")
PREFIX_FILE = "prefix.json"  # in a shorter training's folder: the longer training's checkpoint it started from


def schedule_keys(base_cfg, out_dir: Path, seed: int, factor: float) -> dict:
    """The baseline's schedule stretched by ``factor``: iterations, LR drops (same fractions), seed."""
    n = int(round(base_cfg.SOLVER.MAX_ITER * factor))
    steps = sorted({int(round(s * factor)) for s in base_cfg.SOLVER.STEPS})
    return {"OUTPUT_DIR": str(out_dir), "SOLVER.MAX_ITER": n, "SOLVER.STEPS": steps, "SEED": int(seed)}


def rates(cfg, iterations: int) -> list[float]:
    """The learning rate of each of the first ``iterations`` iterations under ``cfg``'s schedule
    (Detectron2's own scheduler, warm-up included, on a stand-in parameter)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    out = []
    for i in range(iterations):
        scheduler.last_epoch = i
        out.append(scheduler.get_lr()[0])
    return out


def prefix_iteration(shorter_cfg, longer_cfg) -> int:
    """Iterations the two schedules share: the largest checkpoint of the longer training (taken
    every ``SOLVER.CHECKPOINT_PERIOD``; Detectron2 names the one after k iterations ``model_{k-1}``)
    before which both take every step at the same learning rate, warm-up included (with the same
    seed, the same steps).  0: none (the shorter one then trains from the beginning)."""
    period, n = int(longer_cfg.SOLVER.CHECKPOINT_PERIOD), int(shorter_cfg.SOLVER.MAX_ITER)
    if period <= 0:
        return 0
    a, b = rates(shorter_cfg, n), rates(longer_cfg, n)
    same = next((i for i in range(n) if not math.isclose(a[i], b[i], rel_tol=1e-9, abs_tol=0.0)), n)
    return (min(same, n - 1) // period) * period


def start_from_prefix(longer_dir: Path, shorter_dir: Path, iteration: int) -> dict | None:
    """Put the longer training's checkpoint after ``iteration`` iterations into the shorter one's
    folder as its last checkpoint: Detectron2 resumes from it with the shorter config (the model,
    SGD's momentum, the scheduler's position; :class:`wildlib.train.Trainer` sets the rates of the
    shorter schedule).  The longer run's log up to there comes along (its evaluations are the
    shorter run's too), and ``prefix.json`` says where the start came from (with the checkpoint's
    SHA-256); ``last_checkpoint``, which makes a rerun resume, is written last.  None when there is
    no such checkpoint (then the shorter training starts from the beginning)."""
    ckpt = Path(longer_dir) / f"model_{iteration - 1:07d}.pth"
    if iteration <= 0 or not ckpt.is_file():
        return None
    shorter_dir = Path(shorter_dir)
    shorter_dir.mkdir(parents=True, exist_ok=True)
    io.copy_file(ckpt, shorter_dir / ckpt.name)
    lines = [ln for ln in (Path(longer_dir) / "log.jsonl").read_text().splitlines()
             if json.loads(ln).get("iteration", 0) < iteration]
    io.write_text(shorter_dir / "log.jsonl", "".join(ln + "\n" for ln in lines))
    prefix = {"from": Path(longer_dir).name, "iteration": iteration, "checkpoint_sha256": sha256_file(ckpt)}
    io.write_json(shorter_dir / PREFIX_FILE, prefix)
    io.write_text(shorter_dir / "last_checkpoint", ckpt.name)
    return prefix


def curve_of(folder: Path, max_iter: int) -> list[dict]:
    """AP50 on `valid` at each periodic evaluation, from Detectron2's event log (``log.jsonl``, which
    a resumed training appends to, where its history holds only the part after the resume), numbered
    as :func:`wildlib.train.learning_curve` numbers them (iterations done): Detectron2 logs a periodic
    evaluation after k iterations as iteration k - 1 and the final one as ``max_iter``.  Its writer
    writes every 20 iterations, the last value of each key: an ``EVAL_PERIOD`` that is not a multiple
    of 20 loses points (the baseline's is 300)."""
    points = {}
    for line in (folder / "log.jsonl").read_text().splitlines():
        event = json.loads(line)
        if "bbox/AP50" in event:
            points[min(int(event["iteration"]) + 1, max_iter)] = event["bbox/AP50"]
    return [{"iter": i, "AP50": v} for i, v in sorted(points.items())]


def record_name(seed: int, factor: float) -> str:
    """A training's name, its folder's and its kept record's: ``x1.5_seed0``."""
    return f"x{factor:g}_seed{seed}"


def config_sha256(cfg) -> str:
    """SHA-256 of a training's Detectron2 config without where it writes (model, data, schedule,
    seed): a kept record is paired only with the config that made it."""
    c = cfg.clone()
    c.defrost()
    c.OUTPUT_DIR = ""
    if c.SOLVER.get("PRECISION") == "fp32":  # the default, added after records were kept: they hash as before
        del c.SOLVER["PRECISION"]
    return hashlib.sha256(c.dump().encode()).hexdigest()


def read_record(path: Path, source: dict, expect: dict) -> dict:
    """A kept record, checked: every key there, made on the same `valid` with the same test-time
    settings as ``source`` (:func:`wildlib.evaluate.source_of`), and with ``expect``'s values (seed,
    factor, iterations, and ``config_sha256`` where the record has one: records kept before it was
    recorded have none, and the summary lists them).  Errors name the file."""
    record = io.read_json(path)
    missing = [k for k in RECORD_KEYS if k not in record] if isinstance(record, dict) else list(RECORD_KEYS)
    if missing:
        raise ValueError(f"{path}: not a convergence record (missing {', '.join(missing)})")
    if record["source"] != source:
        raise ValueError(f"{path}: made on other `valid` images or test-time settings than this run's "
                         f"({record['source']} against {source}); move it and its training folder away to train it again")
    other = {k: (record.get(k), v) for k, v in expect.items() if k in record and record[k] != v}
    if other:
        raise ValueError(f"{path}: made by another training ({', '.join(f'{k} {a} against {b}' for k, (a, b) in other.items())})")
    return record


def code_version() -> str:
    """The commit of the code this process runs (``git describe --always --dirty``), read when the
    check starts: the trainings run the code loaded then, whatever is committed meanwhile."""
    return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent).stdout.strip()


def _score_and_keep(cfg, name: str, seed: int, factor: float, datasets: dict, keep: Path, extra: dict) -> None:
    """Score the finished training in ``cfg.OUTPUT_DIR`` on `valid` and keep its record (``extra``:
    more fields, the commit among them)."""
    model = train.unwrap(train.load_result(cfg)["model"]).eval()
    metrics, dets = evaluate.score(model, cfg, datasets["valid"], output_dir=None, quiet=True,
                                   max_dets_per_image=evaluate.coco_max_dets(cfg))
    history = io.read_json(Path(cfg.OUTPUT_DIR) / train.HISTORY_FILE)
    io.write_json(keep / f"{name}.json.gz", {
        "name": name, "seed": seed, "factor": factor, "iterations": cfg.SOLVER.MAX_ITER,
        "config_sha256": config_sha256(cfg), "curve": curve_of(Path(cfg.OUTPUT_DIR), cfg.SOLVER.MAX_ITER),
        "metrics": metrics, "detections": dets, "source": evaluate.source_of(cfg, datasets["valid"]),
        "start_iter": history.get("start_iter"), "s_per_iter": history.get("s_per_iter"), **extra,
        "cpu_model": io.cpu_model()})


def _seed_chain(config_file: str, base_keys: dict, seed: int, longer: float, out: str, keep: str, setup,
                commit: str = "") -> int:
    """One seed, in a process of its own (1 thread): the longer training, then the shorter one from
    their shared prefix; each scored on `valid` and kept as soon as it is done."""
    out, keep = Path(out), Path(keep)
    datasets = setup()
    base_cfg = get_config(config_file, base_keys)
    folders = {f: out / record_name(seed, f) for f in (longer, 1.0)}
    cfgs = {f: get_config(config_file, {**base_keys, **schedule_keys(base_cfg, folders[f], seed, f)}) for f in folders}
    prefix = prefix_iteration(cfgs[1.0], cfgs[longer])
    for factor, folder in folders.items():
        name = record_name(seed, factor)
        if (keep / f"{name}.json.gz").is_file():
            continue
        if not (folder / train.HISTORY_FILE).is_file():
            resume = (folder / "last_checkpoint").is_file()
            if factor == 1.0 and not resume and start_from_prefix(folders[longer], folder, prefix):
                resume = True
            train.train_in_process(cfgs[factor], setup=None, resume=resume)
        extra = {"commit": commit}
        if factor == longer and prefix:  # the checkpoint the shorter training starts from
            extra["prefix_checkpoint_sha256"] = sha256_file(folder / f"model_{prefix - 1:07d}.pth")
        if factor == 1.0:
            extra["prefix"] = io.read_json(folder / PREFIX_FILE) if (folder / PREFIX_FILE).is_file() else None
        _score_and_keep(cfgs[factor], name, seed, factor, datasets, keep, extra)
        print("kept", keep / f"{name}.json.gz", flush=True)
    return seed


def shared_prefix(longer: dict, shorter: dict) -> bool | None:
    """Did the shorter training start from the longer one's checkpoint (the SHA-256 the longer record
    kept against the one the shorter one started from)?  None where a record predates them."""
    if "prefix" not in shorter or "prefix_checkpoint_sha256" not in longer:
        return None
    return bool(shorter["prefix"]) and shorter["prefix"]["checkpoint_sha256"] == longer["prefix_checkpoint_sha256"]


def _start_iter(record: dict):
    """The iteration a kept training started at (records kept by commit 0492f0e's tool call it
    ``started_at_iteration``)."""
    return record.get("start_iter", record.get("started_at_iteration"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--longer", type=float, default=1.5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=0, help="the shorter schedule (default: the baseline's own)")
    ap.add_argument("--out", default="", help="default: RUN/convergence")
    ap.add_argument("--keep", default="", help="where finished trainings' records go (default: OUT/kept, "
                                               "under runs/ and not versioned; the project's: docs/convergence)")
    a = ap.parse_args(argv)
    if a.longer <= 1:
        ap.error("--longer must be more than 1")
    if len(set(a.seeds)) != len(a.seeds):
        ap.error("--seeds must not repeat (each seed trains in its own folders)")
    if a.workers < 1:
        ap.error("--workers must be at least 1")
    run = io.resolve(a.run_dir)
    out = Path(a.out) if a.out else run / "convergence"
    keep = Path(a.keep) if a.keep else out / "kept"
    config_file = str(run / stages.BASELINE / stages.D2_CONFIG_FILE)
    own_cfg = get_config(config_file)
    base_keys = {}
    if a.iterations and a.iterations != own_cfg.SOLVER.MAX_ITER:  # a shorter check (a smoke run of this tool)
        if not a.out or not a.keep:  # its records are named by seed and factor: they must not mix with the real check's
            ap.error("--iterations needs an --out and a --keep folder of its own")
        base_keys = schedule_keys(own_cfg, out, own_cfg.SEED, a.iterations / own_cfg.SOLVER.MAX_ITER)
        base_keys.pop("OUTPUT_DIR")
    base_cfg = get_config(config_file, base_keys)
    class_names, aliases = stages.classes_for(run)
    setup = functools.partial(data.register, stages.data_dir_for(run), class_names, aliases=aliases,
                              coco_dir=out / "coco", splits=("train", "valid"))
    datasets = setup()
    source = evaluate.source_of(base_cfg, datasets["valid"])
    expected = {}
    for s in a.seeds:
        for f in (a.longer, 1.0):
            cfg = get_config(config_file, {**base_keys, **schedule_keys(base_cfg, out / record_name(s, f), s, f)})
            expected[record_name(s, f)] = {"seed": s, "factor": f, "iterations": cfg.SOLVER.MAX_ITER,
                                           "config_sha256": config_sha256(cfg)}

    def kept_records():
        return {n: read_record(keep / f"{n}.json.gz", source, e) for n, e in expected.items()
                if (keep / f"{n}.json.gz").is_file()}

    kept = kept_records()
    todo = [s for s in a.seeds if any(record_name(s, f) not in kept for f in (a.longer, 1.0))]
    if todo:
        print(f"seeds {todo} to train ({a.longer:g}x, then 1x from its checkpoint where the schedules part), "
              f"{a.workers} at a time, 1 thread each; records kept in {keep}", flush=True)
        chain = functools.partial(_seed_chain, config_file, base_keys, longer=a.longer, out=str(out),
                                  keep=str(keep), setup=setup, commit=code_version())
        with ProcessPoolExecutor(min(a.workers, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in pool.map(chain, todo):
                print("seed done", done, flush=True)
        kept = kept_records()

    limit = evaluate.coco_max_dets(base_cfg)
    matched = {n: evaluate.matched(datasets["valid"], r["detections"], limit) for n, r in kept.items()}
    pairs = [(matched[record_name(s, a.longer)], matched[record_name(s, 1.0)]) for s in a.seeds]
    per_seed = {s: intervals.paired(*pair) for s, pair in zip(a.seeds, pairs)}
    mean = intervals.paired_mean(pairs)
    over_seeds = intervals.paired_mean(pairs, over_seeds=True)
    summary = {
        "rule": f"converged when the seed mean of (x{a.longer:g} - x1) AP50 on valid is <= {GAIN_LIMIT} (point estimate)",
        "valid_images": pairs[0][0].num_images, "iterations": base_cfg.SOLVER.MAX_ITER,
        "longer_iterations": expected[record_name(a.seeds[0], a.longer)]["iterations"],
        "ap50": {n: r["metrics"]["AP50"] for n, r in kept.items()},
        "gain_per_seed": {str(s): {"delta": d["delta"], "ci95": d["ci95"],
                                   "x1_start_iter": _start_iter(kept[record_name(s, 1.0)]),
                                   "shared_prefix": shared_prefix(kept[record_name(s, a.longer)], kept[record_name(s, 1.0)])}
                          for s, d in per_seed.items()},
        "gain_seed_mean": mean["delta"], "gain_seed_mean_ci95": mean["ci95"],
        "gain_seed_mean_ci95_over_seeds": over_seeds["ci95"],  # the seeds drawn too (two-level bootstrap)
        "converged": bool(mean["delta"] <= GAIN_LIMIT),
        "learning_curves": {f"x{r['factor']:g} seed {r['seed']}": r["curve"] for r in kept.values()},
        "cpu_models": sorted({r.get("cpu_model", "") for r in kept.values()}),
        "commits": sorted({r.get("commit", "") for r in kept.values()}),
        "records_without_config_sha256": sorted(n for n, r in kept.items() if "config_sha256" not in r),
        "kept_records": str(keep),
    }
    io.write_json(out / "convergence.json", summary)
    io.save_figure(plots.learning_curves(summary["learning_curves"], base_cfg.SOLVER.MAX_ITER), out / "learning_curves.png")
    print(io.read_json(out / "convergence.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
