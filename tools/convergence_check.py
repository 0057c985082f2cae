"""Has the baseline converged?  The same model trained 1.5x as long, over 3 seeds, paired on `valid`.

    python tools/convergence_check.py runs/RUN [--seeds 0 1 2] [--longer 1.5] [--workers 2]

Trains stage 01's own config (``RUN/01_baseline/detectron2.yaml``: model, data, schedule) once per
seed at its length and once at ``--longer`` times it (the LR drops at the same fractions of the
longer schedule), each run evaluated on `valid` every ``TEST.EVAL_PERIOD`` (the learning curves),
then scores every final model on `valid` and draws the paired bootstrap of longer - shorter per
seed and of their seed mean (the same resampled images for every pair).  The rule (issue 32):
converged when the seed mean gains <= 0.5 AP50 (point estimate).  The run's own baseline stands in
for its seed at the length it was trained (same config and seed; trained with 2 threads, so not
bit for bit what a 1-thread run gives: another sample of the same schedule).  A resumed training
draws its images in a new order from the resume on: also a sample of the same schedule.  Trainings run ``--workers`` at
a time, one PyTorch thread each (two 1-thread processes on 2 cores); each resumes from its last
checkpoint if stopped.  Writes ``RUN/convergence/convergence.json`` and ``learning_curves.png``.
Nothing is timed here: its step times are those of processes sharing the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from wildlib import data, evaluate, intervals, io, modeling, plots, stages, train
from wildlib.config import get_config

GAIN_LIMIT = 0.5  # AP50: the longer schedule may gain at most this much (seed mean, paired, valid)


def schedule_keys(base_cfg, out_dir: Path, seed: int, factor: float) -> dict:
    """The baseline's schedule stretched by ``factor``: iterations, LR drops (same fractions), seed."""
    n = int(round(base_cfg.SOLVER.MAX_ITER * factor))
    steps = sorted({int(round(s * factor)) for s in base_cfg.SOLVER.STEPS})
    return {"OUTPUT_DIR": str(out_dir), "SOLVER.MAX_ITER": n, "SOLVER.STEPS": steps, "SEED": int(seed)}


def _train_one(config_file: str, keys: dict, setup) -> str:
    """One training in its own process (1 thread), resumed where a checkpoint exists."""
    cfg = get_config(config_file, keys)
    train.train_in_process(cfg, setup=setup, resume=(Path(cfg.OUTPUT_DIR) / "last_checkpoint").is_file())
    return cfg.OUTPUT_DIR


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--longer", type=float, default=1.5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=0, help="the shorter schedule (default: the baseline's own)")
    ap.add_argument("--out", default="", help="default: RUN/convergence")
    a = ap.parse_args(argv)
    run = io.resolve(a.run_dir)
    out = Path(a.out) if a.out else run / "convergence"
    baseline = run / stages.BASELINE
    config_file = str(baseline / stages.D2_CONFIG_FILE)
    own_cfg = get_config(config_file)
    base_cfg = own_cfg
    if a.iterations and a.iterations != own_cfg.SOLVER.MAX_ITER:  # a shorter check (a smoke run of this tool)
        if not a.out:  # its folders are named by seed and factor: they must not mix with the real check's
            ap.error("--iterations needs an --out folder of its own")
        base_cfg = get_config(config_file, schedule_keys(own_cfg, out, own_cfg.SEED, a.iterations / own_cfg.SOLVER.MAX_ITER))
    names, aliases = stages.classes_for(run)
    setup = functools.partial(data.register, stages.data_dir_for(run), names, aliases=aliases,
                              coco_dir=out / "coco", splits=("train", "valid"))
    datasets = setup()
    runs: dict = {}  # (seed, factor) -> folder with model_trained.pth and history.json
    jobs = []
    for factor in (a.longer, 1.0):  # the longer ones first: the two workers finish closer together
        for seed in a.seeds:
            if factor == 1.0 and seed == own_cfg.SEED and base_cfg is own_cfg:
                runs[(seed, factor)] = None  # the run's own baseline
                continue
            folder = out / f"x{factor:g}_seed{seed}"
            runs[(seed, factor)] = folder
            if not (folder / train.HISTORY_FILE).is_file():
                jobs.append(schedule_keys(base_cfg, folder, seed, factor))
    if jobs:
        print(f"{len(jobs)} trainings, {a.workers} at a time, 1 thread each", flush=True)
        with ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in pool.map(functools.partial(_train_one, config_file, setup=setup), jobs):
                print("trained", done, flush=True)

    limit = evaluate.coco_max_dets(base_cfg)
    scored, curves = {}, {}
    for (seed, factor), folder in runs.items():
        if folder is None:
            cfg, model = modeling.load_trained(baseline)
            evals = stages.metrics_of(run, stages.BASELINE).learning_curve
        else:
            cfg = get_config(config_file, schedule_keys(base_cfg, folder, seed, factor))
            model, evals = train.unwrap(train.load_result(cfg)["model"]).eval(), curve_of(folder, cfg.SOLVER.MAX_ITER)
        scored[(seed, factor)] = evaluate.scored(model, cfg, datasets, "valid", max_dets_per_image=limit)
        curves[f"x{factor:g} seed {seed}"] = [{"iter": p["iter"], "AP50": p["AP50"]} for p in evals]
    pairs = [(scored[(s, a.longer)].matched, scored[(s, 1.0)].matched) for s in a.seeds]
    per_seed = {s: intervals.paired(*pair) for s, pair in zip(a.seeds, pairs)}
    mean = intervals.paired_mean(pairs)
    record = {
        "rule": f"converged when the seed mean of (x{a.longer:g} - x1) AP50 on valid is <= {GAIN_LIMIT} (point estimate)",
        "valid_images": pairs[0][0].num_images, "iterations": base_cfg.SOLVER.MAX_ITER,
        "longer_iterations": int(round(base_cfg.SOLVER.MAX_ITER * a.longer)),
        "ap50": {f"x{f:g} seed {s}": scored[(s, f)].metrics["AP50"] for (s, f) in scored},
        "gain_per_seed": {str(s): {"delta": d["delta"], "ci95": d["ci95"]} for s, d in per_seed.items()},
        "gain_seed_mean": mean["delta"], "gain_seed_mean_ci95": mean["ci95"],
        "converged": bool(mean["delta"] <= GAIN_LIMIT), "learning_curves": curves,
        "cpu_model": io.cpu_model(),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
    }
    io.write_json(out / "convergence.json", record)
    io.save_figure(plots.learning_curves(curves, base_cfg.SOLVER.MAX_ITER), out / "learning_curves.png")
    print(io.read_json(out / "convergence.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
