"""Does distillation from the dense teacher recover what pruning takes?  The ablation of issue 33
(deliverable 2): gradual pruning to ``--target`` sparsity while fine-tuning, with no distillation,
with the logits (box-head classes and RPN objectness), and with the logits and FPN features, over 3
seeds, each paired on `valid` against its seed's dense control (the teacher), with the teacher's
cost per step.

    python tools/distill_ablation.py runs/RUN --schedule rewind [--arms none logits logits+features]
        [--seeds 0 1 2] [--target 0.8] [--workers 2] [--keep DIR]

It continues ``tools/finetune_schedules.py`` on the same run: seed ``s``'s baseline is its
``OUT/baseline_seed{s}`` (the convergence check's 1x training) and its dense control, the teacher,
is that tool's ``{schedule}_seed{s}`` training (the baseline fine-tuned with this schedule, budget
and seed, no pruning), checked against the control's kept record (config SHA-256).  Each arm
fine-tunes the same baseline with the same schedule, budget and seed while
:class:`wildlib.prune.GradualPruning` prunes it (LAMP, all layers, cubic schedule to the target at
half the run, as notebook 02 does) and :class:`wildlib.distill.Distill` adds the arm's terms
(``ARMS``: fixed before any of these trainings ran).  One process per training, 1 thread,
``--workers`` at a time; kept records as the schedules tool keeps them (``--keep``; the project's:
``docs/distill-ablation``).  The summary per arm: seed-mean AP50 on `valid`, the seed-mean paired
drop against the control (images resampled; and a two-level interval, seeds drawn too), the paired
difference to the ``none`` arm, and the teacher's seconds per step and share of the step (the
trainings share the machine: absolute times are not a benchmark, the share is what to read).
Writes ``OUT/ablation.json`` and ``OUT/learning_curves.png`` (seed means: the control and each arm).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np
import torch

from convergence_check import code_version, config_sha256, curve_of
from finetune_schedules import baseline_folder, folders_and_data, job_config, job_name, missing_done
from wildlib import data, evaluate, intervals, io, plots, prune, stages, train
from wildlib.config import get_config
from wildlib.modeling import sha256_file

ARMS = {  # the distillation terms of each arm (wildlib.stages.distillation's keywords)
    "none": {},
    "logits": {"cls": 1.0, "rpn": 0.5, "temperature": 2.0},
    "logits+features": {"cls": 1.0, "rpn": 0.5, "fpn": 1.0, "temperature": 2.0, "near_objects": True},
}
RECORD_KEYS = ("name", "arm", "seed", "iterations", "curve", "metrics", "detections", "source", "sparsity")


def arm_name(arm: str, seed: int) -> str:
    return f"{arm.replace('+', '_')}_seed{seed}"


def arm_config(run: Path, out: Path, arm: str, seed: int, a):
    baseline = baseline_folder(run, Path(a.schedules_out), seed, a.baseline)
    return baseline, stages.finetune_config(baseline, out / arm_name(arm, seed), device="cpu", max_iter=a.iterations,
                                            ims_per_batch=a.batch, lr=a.lr, eval_period=a.eval_period, seed=seed,
                                            lr_schedule=a.schedule)


def control_config(a, seed: int):
    """The dense control's config, as tools/finetune_schedules.py trained it (same schedule and budget)."""
    return job_config(baseline_folder(Path(a.run_dir), Path(a.schedules_out), seed, a.baseline), Path(a.schedules_out),
                      a.schedule, seed, a)


def teacher_weights(a, seed: int) -> Path:
    return Path(control_config(a, seed).OUTPUT_DIR) / train.TRAINED_FILE


def _job(run: str, out: str, keep: str, arm: str, seed: int, a, setup, commit: str) -> str:
    torch.set_num_threads(1)
    run, out, keep = Path(run), Path(out), Path(keep)
    datasets = setup()
    baseline, cfg = arm_config(run, out, arm, seed, a)
    end, every = prune.schedule_of(a.iterations)
    hooks = [functools.partial(prune.GradualPruning, "all", a.target, 0, end, every, ranking="lamp")]
    weights = teacher_weights(a, seed)
    teacher = stages.distillation(baseline, weights, **ARMS[arm])
    if teacher is not None:
        hooks.append(teacher)
    folder = Path(cfg.OUTPUT_DIR)
    if not (folder / train.HISTORY_FILE).is_file():
        train.train_in_process(cfg, hooks=hooks, setup=None, resume=(folder / "last_checkpoint").is_file())
    history = io.read_json(folder / train.HISTORY_FILE)
    model = train.unwrap(train.load_result(cfg)["model"]).eval()
    metrics, dets = evaluate.score(model, cfg, datasets["valid"], output_dir=None, quiet=True,
                                   max_dets_per_image=evaluate.coco_max_dets(cfg))
    name = arm_name(arm, seed)
    states = history.get("hook_states") or {}
    distill_state = next((v for v in (states.values() if isinstance(states, dict) else states)
                          if isinstance(v, dict) and "teacher_s_per_step" in v), None)
    io.write_json(keep / f"{name}.json.gz", {
        "name": name, "arm": arm, "terms": ARMS[arm], "seed": seed, "iterations": cfg.SOLVER.MAX_ITER,
        "schedule": a.schedule, "target": a.target, "config_sha256": config_sha256(cfg),
        "curve": curve_of(folder, cfg.SOLVER.MAX_ITER), "metrics": metrics, "detections": dets,
        "source": evaluate.source_of(cfg, datasets["valid"]), "sparsity": prune.sparsity(model),
        "s_per_iter": history.get("s_per_iter"), "distill": distill_state,
        "teacher_sha256": sha256_file(weights) if teacher is not None else None,
        "commit": commit, "cpu_model": io.cpu_model()})
    return name


def arm_curves(controls: dict, kept: dict, arms, seeds, baseline_ap50: float) -> dict:
    """Seed-mean learning curves on `valid` (iteration 0: the baseline), the dense control's and each
    arm's, labelled so that :func:`wildlib.plots.learning_curves` gives each its own colour."""
    def mean_curve(recs):
        at = [{p["iter"]: p["AP50"] for p in r["curve"]} for r in recs]
        common = sorted(set.intersection(*(set(c) for c in at)))
        return [{"iter": 0, "AP50": baseline_ap50}] + [{"iter": i, "AP50": float(np.mean([c[i] for c in at]))} for i in common]
    out = {"control (the teacher, dense)": mean_curve([controls[s] for s in seeds])}
    for arm in arms:
        out[f"{arm}: 80% LAMP" if arm == "none" else f"{arm}: 80% LAMP, distilled"] = mean_curve(
            [kept[arm_name(arm, s)] for s in seeds])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--schedule", required=True, choices=stages.FINETUNE_SCHEDULES,
                    help="the fine-tuning schedule tools/finetune_schedules.py chose")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--eval-period", type=int, default=50, help="as tools/finetune_schedules.py: the control's config must match")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline", default="", help="as tools/finetune_schedules.py's --baseline (the same one)")
    ap.add_argument("--schedules-out", default="", help="tools/finetune_schedules.py's OUT (default RUN/finetune_schedules)")
    ap.add_argument("--schedules-keep", default="docs/finetune-schedules", help="its kept records (the teachers' scores)")
    ap.add_argument("--out", default="", help="default: RUN/distill_ablation")
    ap.add_argument("--keep", default="", help="default: OUT/kept")
    a = ap.parse_args(argv)
    run, out, keep, setup, datasets = folders_and_data(a.run_dir, a.out, a.keep, "distill_ablation")
    a.schedules_out = a.schedules_out or str(run / "finetune_schedules")
    controls = {}
    for s in a.seeds:
        baseline_folder(run, Path(a.schedules_out), s, a.baseline)
        path = Path(a.schedules_keep) / f"{job_name(a.schedule, s)}.json.gz"
        if not path.is_file() or not teacher_weights(a, s).is_file():
            raise FileNotFoundError(f"{path} or {teacher_weights(a, s)}: no {a.schedule} control of seed {s}; "
                                    "run tools/finetune_schedules.py first")
        controls[s] = io.read_json(path)
        if controls[s].get("config_sha256") != config_sha256(control_config(a, s)):
            raise ValueError(f"{path}: that control was trained with another schedule or budget than this ablation's")
    source = controls[a.seeds[0]]["source"]
    expected = {}
    for s in a.seeds:
        for arm in a.arms:
            _, cfg = arm_config(run, out, arm, s, a)
            expected[arm_name(arm, s)] = ({"config_sha256": config_sha256(cfg), "arm": arm, "seed": s}, (arm, s))

    def kept_records():
        found = {}
        for n, (e, _) in expected.items():
            path = keep / f"{n}.json.gz"
            if not path.is_file():
                continue
            r = io.read_json(path)
            if r.get("source") != source or any(r.get(k) != v for k, v in e.items()):
                raise ValueError(f"{path}: made by another training or on other `valid` images; move it away to train again")
            found[n] = r
        return found

    kept = missing_done(kept_records, expected, a.workers, keep,
                        functools.partial(_job, str(run), str(out), str(keep), a=a, setup=setup, commit=code_version()))

    limit = evaluate.coco_max_dets(get_config(str(baseline_folder(run, Path(a.schedules_out), a.seeds[0], a.baseline) /
                                                  stages.D2_CONFIG_FILE)))
    match = functools.partial(evaluate.matched, datasets["valid"], max_dets_per_image=limit)
    control_m = {s: match(controls[s]["detections"]) for s in a.seeds}
    arm_m = {(arm, s): match(kept[arm_name(arm, s)]["detections"]) for arm in a.arms for s in a.seeds}
    summary = {"schedule": a.schedule, "target": a.target, "iterations": a.iterations, "seeds": a.seeds,
               "valid_images": control_m[a.seeds[0]].num_images,
               "control_ap50": {str(s): controls[s]["metrics"]["AP50"] for s in a.seeds}, "arms": {}}
    for arm in a.arms:
        pairs = [(arm_m[(arm, s)], control_m[s]) for s in a.seeds]
        recs = [kept[arm_name(arm, s)] for s in a.seeds]
        images_only = intervals.paired_mean(pairs)
        row = {"terms": ARMS[arm], "ap50": {str(s): r["metrics"]["AP50"] for s, r in zip(a.seeds, recs)},
               "sparsity": float(np.mean([r["sparsity"] for r in recs])),
               "delta_vs_control": images_only["delta"], "ci95": images_only["ci95"],
               "ci95_over_seeds": intervals.paired_mean(pairs, over_seeds=True)["ci95"],
               "s_per_iter": [r.get("s_per_iter") for r in recs]}
        teach = [r["distill"]["teacher_s_per_step"] for r in recs if r.get("distill")]
        if teach:
            row["teacher_s_per_step"] = float(np.mean(teach))
            row["teacher_share_of_step"] = float(np.mean([t / r["s_per_iter"] for t, r in zip(teach, recs)]))
        if arm != "none" and "none" in a.arms:
            vs = [(arm_m[(arm, s)], arm_m[("none", s)]) for s in a.seeds]
            row["delta_vs_none"] = intervals.paired_mean(vs)["delta"]
            row["delta_vs_none_ci95_over_seeds"] = intervals.paired_mean(vs, over_seeds=True)["ci95"]
        summary["arms"][arm] = row
        print(f"{arm:16s} drop vs control {row['delta_vs_control']:+.2f} [{row['ci95_over_seeds'][0]:+.2f}, "
              f"{row['ci95_over_seeds'][1]:+.2f}]" + (f", vs none {row['delta_vs_none']:+.2f}" if "delta_vs_none" in row else ""))
    summary["cpu_models"] = sorted({r.get("cpu_model", "") for r in kept.values()})
    summary["commits"] = sorted({r.get("commit", "") for r in kept.values()})
    io.write_json(out / "ablation.json", summary)
    base_ap50 = float(np.mean([io.read_json(Path(a.schedules_keep) / f"baseline_seed{s}.json.gz")["metrics"]["AP50"]
                               for s in a.seeds]))
    io.save_figure(plots.learning_curves(arm_curves(controls, kept, a.arms, a.seeds, base_ap50), a.iterations),
                   out / "learning_curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
