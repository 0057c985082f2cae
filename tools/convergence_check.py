"""Has the baseline converged?  The same model trained 1.5x as long, over 3 seeds, paired on `valid`.

    python tools/convergence_check.py runs/RUN [--seeds 0 1 2] [--longer 1.5] [--workers 2] [--keep DIR]

Trains stage 01's own config (``RUN/01_baseline/detectron2.yaml``: model, data, schedule; stage 00's
data, and 01's setup cell is enough: the run's own trained baseline is not used) once per seed at
``--longer`` times its length (the LR drops at the same fractions of the longer schedule) and once
at its length.  The two schedules agree (same seed, same LR) up to the shorter one's first LR drop,
so the shorter training resumes from the longer one's checkpoint there (``prefix_iteration``)
instead of training that part again: both are samples of their schedules (a resumed training draws
its images in a new order), and the pair shares its first part, as a training stopped at 1x and
one continued to 1.5x would.  Each training is evaluated on `valid` every ``TEST.EVAL_PERIOD`` (the
learning curves).  A seed's two trainings run one after the other in one process (1 PyTorch thread),
``--workers`` seeds at a time (two 1-thread processes on 2 cores); each resumes from its last
checkpoint if stopped.

A finished training is scored on `valid` in its process and kept as a small record in ``--keep``
(default ``RUN/convergence/kept``; a folder under version control carries a check across machines
and sessions): its learning curve, COCO metrics, detections on `valid`, the ground truth's SHA-256
and the test-time settings they were made with, the CPU model and commit.  A training whose record
is kept is not trained again; a record made on other `valid` images or settings is refused by name.
When every record is there: the paired bootstrap of longer - shorter per seed and of their seed mean
(the same resampled images for every pair).  The rule (issue 32): converged when the seed mean
gains <= 0.5 AP50 (point estimate).  Writes ``RUN/convergence/convergence.json`` and
``learning_curves.png``.  Nothing is timed here: its step times are those of processes sharing the
machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from wildlib import data, evaluate, intervals, io, plots, stages, train
from wildlib.config import get_config

GAIN_LIMIT = 0.5  # AP50: the longer schedule may gain at most this much (seed mean, paired, valid)
RECORD_KEYS = ("name", "seed", "factor", "iterations", "curve", "metrics", "detections", "source")


def schedule_keys(base_cfg, out_dir: Path, seed: int, factor: float) -> dict:
    """The baseline's schedule stretched by ``factor``: iterations, LR drops (same fractions), seed."""
    n = int(round(base_cfg.SOLVER.MAX_ITER * factor))
    steps = sorted({int(round(s * factor)) for s in base_cfg.SOLVER.STEPS})
    return {"OUTPUT_DIR": str(out_dir), "SOLVER.MAX_ITER": n, "SOLVER.STEPS": steps, "SEED": int(seed)}


def prefix_iteration(base_cfg) -> int:
    """Iterations the shorter and the longer schedule share (same LR at every step, same seed): up
    to the shorter one's first LR drop, rounded down to a checkpoint of the longer training (taken
    every ``SOLVER.CHECKPOINT_PERIOD``; Detectron2 names the one after k iterations ``model_{k-1}``).
    0: nothing shared (no LR drop, or none before the first checkpoint)."""
    steps = [s for s in base_cfg.SOLVER.STEPS if 0 < s < base_cfg.SOLVER.MAX_ITER]
    period = int(base_cfg.SOLVER.CHECKPOINT_PERIOD)
    return (min(steps) // period) * period if steps and period > 0 else 0


def start_from_prefix(longer_dir: Path, shorter_dir: Path, iteration: int) -> bool:
    """Put the longer training's checkpoint after ``iteration`` iterations into the shorter one's
    folder as its last checkpoint (Detectron2 resumes from it with the shorter config: the LR
    schedule follows the config, its state is only the iteration count).  False when there is no
    such checkpoint (then the shorter training starts from the beginning)."""
    ckpt = Path(longer_dir) / f"model_{iteration - 1:07d}.pth"
    if iteration <= 0 or not ckpt.is_file():
        return False
    shorter_dir = Path(shorter_dir)
    shorter_dir.mkdir(parents=True, exist_ok=True)
    io.copy_file(ckpt, shorter_dir / ckpt.name)
    io.write_text(shorter_dir / "last_checkpoint", ckpt.name)
    # its first evaluations were the longer training's (they are the same model up to here)
    lines = [ln for ln in (Path(longer_dir) / "log.jsonl").read_text().splitlines()
             if json.loads(ln).get("iteration", 0) < iteration]
    io.write_text(shorter_dir / "log.jsonl", "".join(ln + "\n" for ln in lines))
    return True


def curve_of(folder: Path, max_iter: int) -> list[dict]:
    """AP50 on `valid` at each periodic evaluation, from Detectron2's event log (``log.jsonl``, which
    a resumed training appends to, where its history holds only the part after the resume), numbered
    as :func:`wildlib.train.learning_curve` numbers them (iterations done): Detectron2 logs a periodic
    evaluation at the last iteration done - 1 and the final one at ``max_iter``."""
    points = {}
    for line in (folder / "log.jsonl").read_text().splitlines():
        event = json.loads(line)
        if "bbox/AP50" in event:
            points[min(int(event["iteration"]) + 1, max_iter)] = event["bbox/AP50"]
    return [{"iter": i, "AP50": v} for i, v in sorted(points.items())]


def record_name(seed: int, factor: float) -> str:
    return f"x{factor:g}_seed{seed}"


def read_record(path: Path, source: dict) -> dict:
    """A kept record, checked: every key there, and made on the same `valid` with the same test-time
    settings as ``source`` (:func:`wildlib.evaluate.source_of`).  Errors name the file."""
    record = io.read_json(path)
    missing = [k for k in RECORD_KEYS if k not in record] if isinstance(record, dict) else list(RECORD_KEYS)
    if missing:
        raise ValueError(f"{path}: not a convergence record (missing {', '.join(missing)})")
    if record["source"] != source:
        raise ValueError(f"{path}: made on other `valid` images or test-time settings than this run's "
                         f"({record['source']} against {source}); move it away to train it again")
    return record


def _score_and_keep(cfg, name: str, seed: int, factor: float, curve: list, datasets: dict, keep: Path,
                    extra: dict) -> None:
    model = train.unwrap(train.load_result(cfg)["model"]).eval()
    metrics, dets = evaluate.score(model, cfg, datasets["valid"], None, True, evaluate.coco_max_dets(cfg))
    io.write_json(keep / f"{name}.json.gz", {
        "name": name, "seed": seed, "factor": factor, "iterations": cfg.SOLVER.MAX_ITER, "curve": curve,
        "metrics": metrics, "detections": dets, "source": evaluate.source_of(cfg, datasets["valid"]),
        "cpu_model": io.cpu_model(), **extra,
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()})


def _seed_chain(config_file: str, base_keys: dict, seed: int, longer: float, out: str, keep: str, setup) -> int:
    """One seed, in a process of its own (1 thread): the longer training, then the shorter one from
    their shared prefix; each scored on `valid` and kept as soon as it is done."""
    out, keep = Path(out), Path(keep)
    datasets = setup()
    base_cfg = get_config(config_file, base_keys)
    prefix = prefix_iteration(base_cfg)
    longer_dir, shorter_dir = out / record_name(seed, longer), out / record_name(seed, 1.0)
    for factor, folder in ((longer, longer_dir), (1.0, shorter_dir)):
        name = record_name(seed, factor)
        if (keep / f"{name}.json.gz").is_file():
            continue
        cfg = get_config(config_file, {**base_keys, **schedule_keys(base_cfg, folder, seed, factor)})
        if not (folder / train.HISTORY_FILE).is_file():
            resume = (folder / "last_checkpoint").is_file()
            if factor == 1.0 and not resume and start_from_prefix(longer_dir, folder, prefix):
                resume = True
            train.train_in_process(cfg, setup=None, resume=resume)
        history = io.read_json(folder / train.HISTORY_FILE)
        extra = {"started_at_iteration": history.get("start_iter"), "s_per_iter": history.get("s_per_iter")}
        _score_and_keep(cfg, name, seed, factor, curve_of(folder, cfg.SOLVER.MAX_ITER), datasets, keep, extra)
        print("kept", keep / f"{name}.json.gz", flush=True)
    return seed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--longer", type=float, default=1.5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=0, help="the shorter schedule (default: the baseline's own)")
    ap.add_argument("--out", default="", help="default: RUN/convergence")
    ap.add_argument("--keep", default="", help="where finished trainings' records go (default: OUT/kept)")
    a = ap.parse_args(argv)
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
    names, aliases = stages.classes_for(run)
    setup = functools.partial(data.register, stages.data_dir_for(run), names, aliases=aliases,
                              coco_dir=out / "coco", splits=("train", "valid"))
    datasets = setup()
    source = evaluate.source_of(base_cfg, datasets["valid"])
    names_needed = [record_name(s, f) for s in a.seeds for f in (a.longer, 1.0)]
    kept = {n: read_record(keep / f"{n}.json.gz", source) for n in names_needed if (keep / f"{n}.json.gz").is_file()}
    todo = [s for s in a.seeds if any(record_name(s, f) not in kept for f in (a.longer, 1.0))]
    if todo:
        print(f"seeds {todo} to train ({a.longer:g}x then 1x from iteration {prefix_iteration(base_cfg)}), "
              f"{a.workers} at a time, 1 thread each; records kept in {keep}", flush=True)
        chain = functools.partial(_seed_chain, config_file, base_keys, longer=a.longer, out=str(out),
                                  keep=str(keep), setup=setup)
        with ProcessPoolExecutor(min(a.workers, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in pool.map(chain, todo):
                print("seed done", done, flush=True)
        kept = {n: read_record(keep / f"{n}.json.gz", source) for n in names_needed}

    limit = evaluate.coco_max_dets(base_cfg)
    matched = {n: evaluate.matched(datasets["valid"], r["detections"], limit) for n, r in kept.items()}
    pairs = [(matched[record_name(s, a.longer)], matched[record_name(s, 1.0)]) for s in a.seeds]
    per_seed = {s: intervals.paired(*pair) for s, pair in zip(a.seeds, pairs)}
    mean = intervals.paired_mean(pairs)
    record = {
        "rule": f"converged when the seed mean of (x{a.longer:g} - x1) AP50 on valid is <= {GAIN_LIMIT} (point estimate)",
        "valid_images": pairs[0][0].num_images, "iterations": base_cfg.SOLVER.MAX_ITER,
        "longer_iterations": int(round(base_cfg.SOLVER.MAX_ITER * a.longer)),
        "shared_prefix_iterations": prefix_iteration(base_cfg),
        "ap50": {n: r["metrics"]["AP50"] for n, r in kept.items()},
        "gain_per_seed": {str(s): {"delta": d["delta"], "ci95": d["ci95"]} for s, d in per_seed.items()},
        "gain_seed_mean": mean["delta"], "gain_seed_mean_ci95": mean["ci95"],
        "converged": bool(mean["delta"] <= GAIN_LIMIT),
        "learning_curves": {f"x{r['factor']:g} seed {r['seed']}": r["curve"] for r in kept.values()},
        "trained_on": sorted({r.get("cpu_model", "") for r in kept.values()}),
        "trained_at_commits": sorted({r.get("commit", "") for r in kept.values()}),
        "kept_records": str(keep),
    }
    io.write_json(out / "convergence.json", record)
    io.save_figure(plots.learning_curves(record["learning_curves"], base_cfg.SOLVER.MAX_ITER), out / "learning_curves.png")
    print(io.read_json(out / "convergence.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
