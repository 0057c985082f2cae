"""Which fine-tuning schedule does a dense model survive?  The dense control's learning curve on
`valid` under each schedule, over 3 seeds, paired against the baseline it starts from (issue 33,
deliverable 1).

    python tools/finetune_schedules.py runs/RUN [--schedules step cosine rewind] [--seeds 0 1 2]
        [--iterations 500] [--lr 0.01] [--batch 4] [--eval-period 50] [--workers 2] [--keep DIR]

The baselines are the convergence check's 1x trainings of ``RUN`` (``tools/convergence_check.py``:
``RUN/convergence/x1_seed{s}``, stage 01's own config and schedule at seed ``s``), so that the seeds
vary the baseline as well as the fine-tuning; ``--baseline DIR`` fine-tunes one model folder (such
as ``RUN/01_baseline``) with every seed instead, and then the seeds vary the fine-tuning only.  Each seed's baseline gets a model folder
(``OUT/baseline_seed{s}``: its Detectron2 config and weights) and is fine-tuned from there, with no
pruning, exactly as stage 02 fine-tunes its dense control (:func:`wildlib.stages.finetune_config`:
``--iterations`` at ``--batch``, peak LR ``--lr``, every layer trainable, fine-tuning seed ``s``)
under each ``--schedules`` entry, evaluated on `valid` every ``--eval-period`` iterations.  Each
training runs in a process of its own (1 PyTorch thread), ``--workers`` at a time, and resumes from
its last checkpoint if stopped.  A finished training is scored on `valid` and kept as a small
gzipped record in ``--keep`` (curve, COCO metrics, detections, the `valid` source, config SHA-256,
commit, CPU model); a kept record is not trained again, and one made on other `valid` images or by
another config is refused by name.  The baselines' own detections on `valid` are scored here too
(they are iteration 0 of every curve).

The rule, fixed before any of these trainings ran (issue 33): a schedule *passes* when, over the
seeds, (a) the dense control is at least as good as its baseline — the upper end of the two-level
95% interval (seeds and images drawn) of the seed-mean paired delta, control - baseline, is >= 0 —
and (b) its seed-mean curve never falls more than ``DIP_LIMIT`` AP50 below the seeds' mean baseline.
Of the passing schedules, the one with the largest seed-mean delta is chosen; none passing is a
result too.  Writes ``OUT/schedules.json`` and ``OUT/learning_curves.png``.  Nothing here is timed:
the step times recorded are those of processes sharing the machine.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from convergence_check import code_version, config_sha256, curve_of, record_name
from wildlib import data, evaluate, intervals, io, plots, stages, train
from wildlib.config import get_config
from wildlib.modeling import build_model, sha256_file

DIP_LIMIT = 1.0  # AP50: the seed-mean curve may fall at most this far below the seed-mean baseline
RECORD_KEYS = ("name", "schedule", "seed", "iterations", "curve", "metrics", "detections", "source")


def job_name(schedule: str, seed: int) -> str:
    """A training's folder and record name: ``cosine_seed0``."""
    return f"{schedule}_seed{seed}"


def baseline_folder(run: Path, out: Path, seed: int, shared: str = "") -> Path:
    """``OUT/baseline_seed{seed}``: the convergence check's 1x training of ``seed`` as a model
    folder (its config, with that seed, and its final weights), made once.  With ``shared`` (a
    model folder such as ``RUN/01_baseline``, ``--baseline``), that one folder for every seed."""
    if shared:
        folder = Path(shared)
        for f in (stages.D2_CONFIG_FILE, stages.MODEL_FILE):
            if not (folder / f).is_file():
                raise FileNotFoundError(f"{folder / f}: not found (--baseline takes a model folder such as RUN/01_baseline)")
        return folder
    src = run / "convergence" / record_name(seed, 1.0)
    weights = src / train.TRAINED_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no 1x training of seed {seed}; run tools/convergence_check.py {run} first")
    folder = out / f"baseline_seed{seed}"
    if not (folder / stages.MODEL_FILE).is_file():
        cfg = get_config(str(run / stages.BASELINE / stages.D2_CONFIG_FILE),
                         {"SEED": int(seed), "OUTPUT_DIR": str(src)})
        folder.mkdir(parents=True, exist_ok=True)
        io.write_text(folder / stages.D2_CONFIG_FILE, cfg.dump())
        io.copy_file(weights, folder / stages.MODEL_FILE)
    return folder


def folders_and_data(run_dir, out: str, keep: str, default_out: str):
    """``(run, OUT, KEEP, setup, datasets)`` of a tool on run ``run_dir``: its output folder
    (``out``, else ``RUN/<default_out>``), where its records are kept (``keep``, else ``OUT/kept``;
    made), and the run's data registered (``setup`` does it again in a spawned process)."""
    run = io.resolve(run_dir)
    out = Path(out) if out else run / default_out
    keep = Path(keep) if keep else out / "kept"
    keep.mkdir(parents=True, exist_ok=True)
    class_names, aliases = stages.classes_for(run)
    setup = functools.partial(data.register, stages.data_dir_for(run), class_names, aliases=aliases,
                              coco_dir=out / "coco", splits=("train", "valid"))
    return run, out, keep, setup, setup()


def missing_done(kept_records, expected: dict, workers: int, keep: Path, job) -> dict:
    """The kept records (``kept_records()``) once every one of ``expected`` (name -> (what its record
    must hold, the job's arguments)) is there: ``job(*args)`` for each missing one, each in a spawned
    process of its own (the job sets its 1 thread), ``workers`` at a time."""
    kept = kept_records()
    todo = [args for name, (_, args) in expected.items() if name not in kept]
    if not todo:
        return kept
    print(f"{len(todo)} to score or train, {workers} at a time, 1 thread each; records kept in {keep}", flush=True)
    with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in pool.map(job, *zip(*todo)):
            print("kept", done, flush=True)
    return kept_records()


def job_config(baseline: Path, out: Path, schedule: str, seed: int, a) -> object:
    return stages.finetune_config(baseline, out / job_name(schedule, seed), device="cpu", max_iter=a.iterations,
                                  ims_per_batch=a.batch, lr=a.lr, eval_period=a.eval_period, seed=seed,
                                  lr_schedule=schedule)


def _keep(cfg, name: str, schedule: str, seed: int, model, datasets: dict, keep: Path, extra: dict) -> None:
    metrics, dets = evaluate.score(model, cfg, datasets["valid"], output_dir=None, quiet=True,
                                   max_dets_per_image=evaluate.coco_max_dets(cfg))
    io.write_json(keep / f"{name}.json.gz", {
        "name": name, "schedule": schedule, "seed": seed, "iterations": cfg.SOLVER.MAX_ITER,
        "config_sha256": config_sha256(cfg), "metrics": metrics, "detections": dets,
        "source": evaluate.source_of(cfg, datasets["valid"]), "cpu_model": io.cpu_model(), **extra})


def _job(run: str, out: str, keep: str, schedule: str, seed: int, a, setup, commit: str) -> str:
    """One fine-tuning (or one baseline's scoring, ``schedule`` None) in a process of its own, 1 thread."""
    torch.set_num_threads(1)
    run, out, keep = Path(run), Path(out), Path(keep)
    datasets = setup()
    baseline = baseline_folder(run, out, seed, a.baseline)
    if schedule is None:
        cfg = get_config(str(baseline / stages.D2_CONFIG_FILE), {"OUTPUT_DIR": str(baseline)})
        model = build_model(cfg, weights=str(baseline / stages.MODEL_FILE), eval_mode=True)
        name = f"baseline_seed{seed}"
        _keep(cfg, name, "baseline", seed, model, datasets, keep,
              {"curve": [], "weights_sha256": sha256_file(baseline / stages.MODEL_FILE), "commit": commit})
        return name
    cfg = job_config(baseline, out, schedule, seed, a)
    folder = Path(cfg.OUTPUT_DIR)
    if not (folder / train.HISTORY_FILE).is_file():
        train.train_in_process(cfg, setup=None, resume=(folder / "last_checkpoint").is_file())
    history = io.read_json(folder / train.HISTORY_FILE)
    model = train.unwrap(train.load_result(cfg)["model"]).eval()
    name = job_name(schedule, seed)
    _keep(cfg, name, schedule, seed, model, datasets, keep,
          {"curve": curve_of(folder, cfg.SOLVER.MAX_ITER), "s_per_iter": history.get("s_per_iter"),
           "start_iter": history.get("start_iter"), "baseline_sha256": sha256_file(baseline / stages.MODEL_FILE),
           "commit": commit})
    return name


def read_record(path: Path, source: dict, expect: dict) -> dict:
    """A kept record, checked (every key; the same `valid` and test-time settings; ``expect``'s
    values).  Errors name the file."""
    record = io.read_json(path)
    missing = [k for k in RECORD_KEYS if k not in record] if isinstance(record, dict) else list(RECORD_KEYS)
    if missing:
        raise ValueError(f"{path}: not a schedule record (missing {', '.join(missing)})")
    if record["source"] != source:
        raise ValueError(f"{path}: made on other `valid` images or test-time settings than this run's")
    other = {k: (record.get(k), v) for k, v in expect.items() if record.get(k) != v}
    if other:
        raise ValueError(f"{path}: made by another training ({', '.join(f'{k} {x} against {y}' for k, (x, y) in other.items())})")
    return record


def verdicts(records: dict, matched: dict, schedules: list, seeds: list) -> dict:
    """Per schedule: the paired deltas (control - baseline) per seed and their seed mean (seeds
    fixed; seeds drawn too), the seed-mean curve's deepest fall below the seed-mean baseline, and
    the rule's verdict (module docstring)."""
    base_mean = float(np.mean([records[f"baseline_seed{s}"]["metrics"]["AP50"] for s in seeds]))
    out = {}
    for sched in schedules:
        pairs = [(matched[job_name(sched, s)], matched[f"baseline_seed{s}"]) for s in seeds]
        per_seed = {str(s): intervals.paired(*p) for s, p in zip(seeds, pairs)}
        mean, two_level = intervals.paired_mean(pairs), intervals.paired_mean(pairs, over_seeds=True)
        curves = [{p["iter"]: p["AP50"] for p in records[job_name(sched, s)]["curve"]} for s in seeds]
        common = sorted(set.intersection(*(set(c) for c in curves)))
        mean_curve = [{"iter": i, "AP50": float(np.mean([c[i] for c in curves]))} for i in common]
        dip = max([0.0] + [base_mean - p["AP50"] for p in mean_curve])
        out[sched] = {
            "ap50": {str(s): records[job_name(sched, s)]["metrics"]["AP50"] for s in seeds},
            "delta_per_seed": {s: {"delta": d["delta"], "ci95": d["ci95"]} for s, d in per_seed.items()},
            "delta_seed_mean": mean["delta"], "ci95": mean["ci95"], "ci95_over_seeds": two_level["ci95"],
            "mean_curve": mean_curve, "deepest_dip": dip,
            "passes": bool(two_level["ci95"][1] >= 0.0 and dip <= DIP_LIMIT),
        }
    return {"baseline_mean_ap50": base_mean, "schedules": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--schedules", nargs="+", default=list(stages.FINETUNE_SCHEDULES), choices=stages.FINETUNE_SCHEDULES)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iterations", type=int, default=500, help="stage 02's FT_ITER")
    ap.add_argument("--lr", type=float, default=0.01, help="stage 02's FT_LR (peak)")
    ap.add_argument("--batch", type=int, default=4, help="stage 02's IMS_PER_BATCH")
    ap.add_argument("--eval-period", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline", default="", help="one model folder every seed fine-tunes (RUN/01_baseline, say): "
                    "the seeds then vary the fine-tuning only (default: each seed's convergence-check 1x training)")
    ap.add_argument("--out", default="", help="default: RUN/finetune_schedules")
    ap.add_argument("--keep", default="", help="where finished trainings' records go (default: OUT/kept)")
    a = ap.parse_args(argv)
    if len(set(a.seeds)) != len(a.seeds) or len(set(a.schedules)) != len(a.schedules):
        ap.error("--seeds and --schedules must not repeat")
    run, out, keep, setup, datasets = folders_and_data(a.run_dir, a.out, a.keep, "finetune_schedules")
    expected = {}
    for s in a.seeds:
        base = baseline_folder(run, out, s, a.baseline)
        base_cfg = get_config(str(base / stages.D2_CONFIG_FILE), {"OUTPUT_DIR": str(base)})
        expected[f"baseline_seed{s}"] = ({"seed": s, "weights_sha256": sha256_file(base / stages.MODEL_FILE)},
                                         (None, s))
        for sched in a.schedules:
            cfg = job_config(base, out, sched, s, a)
            expected[job_name(sched, s)] = ({"seed": s, "schedule": sched, "iterations": a.iterations,
                                             "config_sha256": config_sha256(cfg)}, (sched, s))
    source = evaluate.source_of(base_cfg, datasets["valid"])

    def kept_records():
        return {n: read_record(keep / f"{n}.json.gz", source, e) for n, (e, _) in expected.items()
                if (keep / f"{n}.json.gz").is_file()}

    kept = missing_done(kept_records, expected, a.workers, keep,
                        functools.partial(_job, str(run), str(out), str(keep), a=a, setup=setup, commit=code_version()))

    limit = evaluate.coco_max_dets(base_cfg)
    matched = {n: evaluate.matched(datasets["valid"], r["detections"], limit) for n, r in kept.items()}
    result = verdicts(kept, matched, a.schedules, a.seeds)
    passing = {k: v for k, v in result["schedules"].items() if v["passes"]}
    summary = {
        "rule": (f"passes: two-level 95% interval of the seed-mean (control - baseline) AP50 on valid reaches 0 or above, "
                 f"and the seed-mean curve falls at most {DIP_LIMIT} below the seed-mean baseline; chosen: the passing "
                 "schedule with the largest seed-mean delta"),
        "chosen": max(passing, key=lambda k: passing[k]["delta_seed_mean"]) if passing else None,
        "valid_images": matched[f"baseline_seed{a.seeds[0]}"].num_images, "iterations": a.iterations,
        "lr": a.lr, "batch": a.batch, "eval_period": a.eval_period, "seeds": a.seeds, **result,
        "cpu_models": sorted({r.get("cpu_model", "") for r in kept.values()}),
        "commits": sorted({r.get("commit", "") for r in kept.values()}), "kept_records": str(keep),
    }
    io.write_json(out / "schedules.json", summary)
    curves = {f"{sched} seed {s}": [{"iter": 0, "AP50": kept[f"baseline_seed{s}"]["metrics"]["AP50"]},
                                    *kept[job_name(sched, s)]["curve"]] for sched in a.schedules for s in a.seeds}
    io.save_figure(plots.learning_curves(curves, a.iterations), out / "learning_curves.png")
    for sched, v in result["schedules"].items():
        print(f"{sched:7s} delta {v['delta_seed_mean']:+.2f} [{v['ci95_over_seeds'][0]:+.2f}, {v['ci95_over_seeds'][1]:+.2f}] "
              f"dip {v['deepest_dip']:.2f} passes {v['passes']}")
    print("chosen:", summary["chosen"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
