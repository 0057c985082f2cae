"""The generated results, written from a run's files (never typed by hand).

    python -m wildlib.report --run-dir runs/default --readme README.md   # or: make report

Reads each stage's ``metrics.json``, the runner's ``run_times.json`` and ``run_info.json`` (the
commit the run came from) and, if given, the recipe benchmark of ``python -m wildlib.profile`` and
a collated sweep.  Writes ``docs/results.md`` (all of it) and replaces the README's headline
between ``<!-- results:begin -->`` and ``<!-- results:end -->``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import pandas as pd

from . import contention, layout, runner, stages
from .evaluate import AP50_TOLERANCE
from .intervals import SAMPLES
from .io import copy_file, resolve, write_text
from .paper import ONE_SHOT_AP50
from .parts import current_names
from .records import BaselineMetrics, ChannelsMetrics, EvaluateMetrics, ExploreMetrics, PruneMetrics, ShareMetrics

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"  # the README's generated headline
RESULTS_FILE = "docs/results.md"  # the whole generated results, beside the README
FIGURES = "docs/results"  # figures of the generated results
# The project's goals for a run; the report says for each whether this run met it.
GOALS = {
    "plateau_gain_ap50": ("<=", 0.5, "learning curve flat: AP50 gain over the last quarter of the schedule (not the convergence check, which trains 1.5x as long: docs/evidence.md)"),
    "max_sparsity_within_1ap50": (">=", 0.90, "sparsity within 1 AP50 of the reference"),
    "best_compression_ratio_within_1ap50": (">=", 40.0, "compression within 1 AP50 of the reference"),
    "best_speedup_within_1ap50": (">=", 3.0, "measured CPU speedup within 1 AP50 of the reference"),
    "best_speedup_non_inferior": (">=", 4.0, "measured CPU speedup of 04's fastest variant non-inferior on `valid`, "
                                             "non-inferior on `test` too (the drop's 95% upper end within 1 AP50)"),
    "make_run_minutes": ("<=", 30.0, "`make run`, 00 -> 05, minutes on an idle machine"),
}
# How each goal's value is written: its digits and its unit (a fraction, a ratio "x", minutes)
GOAL_FORMAT = {"plateau_gain_ap50": (2, " AP50"), "max_sparsity_within_1ap50": (3, ""),
               "best_compression_ratio_within_1ap50": (1, "x"), "best_speedup_within_1ap50": (2, "x"),
               "best_speedup_non_inferior": (2, "x"), "make_run_minutes": (1, " min")}
# Goals that are times or speedups: no verdict from a stage whose machine was busy (wildlib.contention)
TIMED_GOALS = {"make_run_minutes": None, "best_speedup_within_1ap50": stages.EVALUATE,
               "best_speedup_non_inferior": stages.CHANNELS}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _f(x, nd=2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{nd}f}"


def _met(name: str, value) -> str:
    op, target, _ = GOALS[name]
    if value is None:
        return "not measured"
    ok = value <= target if op == "<=" else value >= target
    return f"{'met' if ok else '**not met**'} (goal {op} {target:g}{GOAL_FORMAT[name][1]})"


def interval(ci) -> str:
    """A 95% interval as ``[lo, hi]``.

    Introduced in notebook 01_train_baseline, section "COCO evaluation on the held-out split"."""
    return f"[{_f(ci[0])}, {_f(ci[1])}]" if ci else "[n/a]"


def signed_delta(row: dict) -> str | None:
    """A row's paired AP50 difference to the reference, variant - reference, signed, with its 95%
    interval: ``-0.31 [-1.03, +0.36]`` (negative: the variant is worse), the one way every report
    writes it; None where the row has none."""
    if row.get("delta_ap50") is None or not row.get("delta_ap50_ci95"):
        return None
    lo, hi = row["delta_ap50_ci95"]
    return f"{row['delta_ap50']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def verdict_line(name: str, row: dict) -> str:
    """One variant against the reference, both verdicts named by their rule (notebooks 02-05)."""
    yes = {True: "yes", False: "no"}
    return (f"{name}: AP50 {_f(row['AP50'])} {interval(row.get('AP50_ci95'))} on {row.get('split')}, "
            f"delta {signed_delta(row) or 'n/a'} against the reference "
            f"{_f(row.get('reference_ap50'))}; within {row.get('tolerance', AP50_TOLERANCE):g} AP50 (point estimate): "
            f"{yes[row['within_1ap50']]}, non-inferior (95% upper end of the drop): {yes[row['non_inferior']]}"
            + _drawn_again(row) + _beside_baseline(row))


def _beside_baseline(row: dict) -> str:
    """The paired difference to the baseline, where it was measured beside the verdict."""
    if row.get("baseline_delta_ap50") is None:
        return ""
    return (f"; beside it, against the baseline: delta {row['baseline_delta_ap50']:+.2f} "
            f"{interval(row.get('baseline_delta_ap50_ci95'))}")


def _drawn_again(row: dict) -> str:
    """Where the bound was near the line and drawn again (wildlib.intervals.non_inferiority): how
    many samples it took, the Monte Carlo error left, and whether that still leaves it at the line."""
    n, mcse = row.get("delta_ap50_samples"), row.get("delta_ap50_bound_mcse")
    if not n or n <= SAMPLES or mcse is None:
        return ""
    unclear = "; still within two of them of the line" if row.get("non_inferior_clear") is False else ""
    return f" ({n:,} bootstrap samples, the bound near the line; its Monte Carlo error {mcse:.3f}{unclear})"


def variants_on_split(rows: list[dict], split: str, ref_name: str, reference: dict) -> str:
    """The reported variants of a stage as lines: the reference, then each variant's verdicts.

    Introduced in notebook 02_prune_magnitude, section "Summary: every reported model on the report split, against the reference"."""
    head = (f"reported on {split}" + ("" if split == "test" else " (no test split: chosen and reported on one split)")
            + f"; reference = the {ref_name}, AP50 {_f(reference['AP50'])} {interval(reference['AP50_ci95'])}")
    return "\n".join([head] + [verdict_line(r["name"], r) + f"; sparsity {r.get('sparsity_all', math.nan):.3f}"
                              for r in rows])


def _variant_rows(metrics) -> list[dict]:
    """A stage's ``variants`` as rows of today's keys (its record read them, whatever their schema)."""
    return [v.row() for v in metrics.variants]


def _stage_metrics(run: Path, stage: str):
    """A stage's record, or None where the stage has not run."""
    path = run / stage / stages.METRICS_FILE
    return stages.read_metrics(path, stage) if path.exists() else None


def _records(run: Path) -> dict:
    """Every stage's record of ``run`` (None where a stage has not run), read once per page."""
    return {s: _stage_metrics(run, s) for s in stages.STAGE_FOLDERS.values()}


def _table(rows: list[dict], cols: list[tuple[str, str, int | None]]) -> list[str]:
    out = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_f(r.get(k), nd) if nd is not None else str(r.get(k, ""))
                                     for _, k, nd in cols) + " |")
    return out


def frontier_lines(summary: list[dict], headline: dict) -> list[str]:
    """A sweep's seed means per setting as a table, then its headline with the rules named
    (written by :func:`wildlib.sweep.collate`; read here from ``summary.csv`` and ``headline.json``)."""
    def setting(r):
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                         if k.isupper() and v is not None and not (isinstance(v, float) and math.isnan(v)))

    L = ["| group | setting | seeds | sparsity | AP50 (mean) | seed sd | reference | delta (mean) [95%] | "
         "within 1 | non-inferior | sparse-file ratio |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "no"}
    for r in summary:
        L.append(f"| {r['group']} | {setting(r)} | {r['seeds']} | {r['sparsity']:.3f} | {_f(r['AP50_mean'])} | "
                 f"{_f(r['AP50_seed_sd'])} | {_f(r['reference_AP50_mean'])} | {r['delta_mean']:+.2f} "
                 f"[{r['delta_lo']:+.2f}, {r['delta_hi']:+.2f}] | {yes[bool(r['within_1ap50'])]} | "
                 f"{yes[bool(r['non_inferior'])]} | {r['compression_ratio']:.2f}x |")
    return L + ["", f"* `max_sparsity_within_1ap50` = **{headline.get('max_sparsity_within_1ap50', 0):.3f}** "
                f"({headline['rule_within']}).",
                f"* Non-inferior: **{headline.get('max_sparsity_non_inferior', 0):.3f}** ({headline['rule_non_inferior']}).",
                f"* `best_compression_ratio_within_1ap50` (sparse file) = "
                f"**{headline.get('best_compression_ratio_within_1ap50', 0):.2f}x**.",
                f"* CPU: {', '.join(headline.get('cpu_models') or ['n/a'])}.", ""]


def _sweep_lines(sweep: Path, figure: str = "") -> tuple[list[str], dict]:
    """The frontier section of docs/results.md from a collated sweep folder, and the goals it decides."""
    headline = _load(sweep / "headline.json")
    if not headline or not (sweep / "summary.csv").exists():
        return [f"Sweep `{sweep.name}`: not collated yet (`python -m wildlib.sweep SPEC --collate-only`).", ""], {}
    try:
        summary = pd.read_csv(sweep / "summary.csv").to_dict(orient="records")
    except pd.errors.EmptyDataError:  # no point finished
        summary = []
    if not summary:
        return [f"Sweep `{sweep.name}`: none of its {headline.get('points', 0)} points has finished.", ""], {}
    timing = _load(sweep / "timing.json") or {}
    took = "; ".join(f"{t['points_run']} point(s) finished ({t.get('points_failed', 0)} failed) in "
                     f"{t['seconds'] / 60:.1f} min on {t['layout']} ({t['cpu_model']})" for t in timing.get("runs", []))
    untimed = headline.get("points_ok", 0) - sum(t["points_run"] for t in timing.get("runs", []))
    if untimed > 0:  # a sweep records its wall time when it ends: one stopped part-way (killed) left none
        took += f"{'; ' if took else ''}{untimed} point(s) finished in runs stopped before they recorded their wall time"
    L = [f"**The frontier** (sweep `{sweep.name}`: {headline.get('points_ok', 0)} of {headline.get('points', 0)} "
         f"points finished{'; ' + took if took else ''}). Every point is a full run of stage 02 at one target and "
         f"fine-tuning seed; AP50 on the report split with paired bootstrap intervals; seed means per setting:", ""]
    L += frontier_lines(summary, headline)
    if figure:
        L += [f"![AP50 against sparsity, seeds as points, seed means with their interval]({figure})", ""]
    goals = {k: headline[k] for k in ("max_sparsity_within_1ap50", "best_compression_ratio_within_1ap50") if k in headline}
    return L, goals


def _parts(run_dir, bench=None, sweep=None, figure: str = "", records: dict | None = None) -> dict[str, list[str]]:
    """The generated results in parts: ``intro`` (the run, its commit and machine), ``time``
    (``make run``), ``stages`` (a paragraph per stage), ``sweep`` (the frontier) and ``goals``."""
    run = resolve(run_dir)
    info = _load(run / "run_info.json") or {}
    times = _load(run / "run_times.json") or {}
    m = records if records is not None else _records(run)
    commit = (info.get("commit") or "unknown")[:10] + (" plus uncommitted changes" if info.get("dirty") else "")
    by_commit = {}
    for stem, st in (info.get("stages") or {}).items():
        by_commit.setdefault((st.get("commit") or "unknown")[:10], []).append(stem[:2])
    where = (f"commit {commit}" if len(by_commit) <= 1 else
             "; ".join(f"{', '.join(v)} at commit {k}" for k, v in by_commit.items()))
    busy = contended_stages(m)
    out = {"intro": [f"Generated by `make report` from the run `{run.name}` ({where}, finished "
                     f"{info.get('finished', 'unknown')}); every number below is read from that run's `metrics.json` "
                     f"files. {_platform(m)}", "", *machine_lines(m), "", *rerun_lines(m), *stale_block(run),
                     *takeaway_lines(m)], "time": [], "stages": [], "sweep": []}
    goals = {"make_run_minutes": times["total"] / 60 if times.get("total") else None}
    if times:
        parts = ", ".join(f"{k[:2]} {v / 60:.1f}" + ("*" if _stage_of(k) in busy else "")
                          for k, v in times.items() if k != "total")
        note = "; * contended: not a time of this code" if busy else ""
        out["time"] = [f"* `make run` (00 -> 05): **{times['total'] / 60:.1f} min** ({parts} min{note}).", ""]
    for name in stages.STAGE_FOLDERS.values():
        if m[name] and name in _STAGE_LINES:
            out["stages"] += _STAGE_LINES[name](m[name], bench=bench)
    goals.update({k: getattr(m[st], k, None) for k, st in GOAL_STAGES.items()})
    from_sweep = {}
    if sweep is not None:
        out["sweep"], from_sweep = _sweep_lines(resolve(sweep), figure)
        goals.update(from_sweep)  # the frontier's seed means decide these two, not one run's point
    out["goals"] = ["Against the goals" + (" (sparsity and compression: the frontier's seed means)" if from_sweep
                                           else "") + ":", ""]
    out["goals"] += [f"* {GOALS[k][2]}: {_f(v, GOAL_FORMAT[k][0])}{GOAL_FORMAT[k][1] if v is not None else ''} — "
                     + (_met(k, v) if v is None or not _goal_contended(k, busy)
                                                          else "no verdict: measured on a contended machine")
                     for k, v in goals.items()]
    return out


def _stage_of(notebook: str) -> str | None:
    """The stage folder of a notebook's stem (``01_train_baseline`` -> ``01_baseline``; by its number,
    :func:`wildlib.layout.folder_of`), or None for a name that is no notebook's."""
    try:
        return layout.folder_of(notebook[:2])
    except KeyError:
        return None


def contended_stages(m: dict) -> dict[str, list[str]]:
    """Stage folder -> what disturbed it (wildlib.contention.reasons), for each contended stage."""
    found = {s: contention.reasons(r.machine) for s, r in m.items() if r is not None}
    return {s: why for s, why in found.items() if why}


def _goal_contended(goal: str, busy: dict) -> bool:
    if goal not in TIMED_GOALS:
        return False
    stage = TIMED_GOALS[goal]
    return bool(busy) if stage is None else stage in busy


def rerun_lines(m: dict) -> list[str]:
    """The stages that ran here again after an earlier run of them had finished (their results,
    `test` numbers included, could have been seen): logged, since a choice made after seeing `test`
    is a choice on `test`.  Nothing when every stage ran once."""
    again = {s: r.reruns for s, r in m.items() if r is not None and r.reruns}
    if not again:
        return []
    return ["Re-run after earlier results were seen: " + ", ".join(
        f"{s[:2]} ({n} earlier finished run{'s' if n > 1 else ''}"
        + (f", reported on `{getattr(m[s], 'evaluation_split', None)}`)" if getattr(m[s], "evaluation_split", None)
           else ")") for s, n in again.items()) + ".", ""]


def stale_block(run: Path) -> list[str]:
    """The run's stale stages (:func:`wildlib.runner.stale_lines`): results that no longer follow
    from the stages they read.  Nothing when every stage is newer than its inputs."""
    lines = runner.stale_lines(run)
    return ["**Stale:** " + " ".join(f"{ln[0].upper()}{ln[1:]}." for ln in lines), ""] if lines else []


def machine_lines(m: dict) -> list[str]:
    """Whether the machine was idle while each stage ran: load average, CPU steal, other processes'
    CPU and each training's steps against its probe (wildlib.contention); a contended stage's times
    and speedups are no headline."""
    recorded = {s: r.machine for s, r in m.items() if r is not None and r.machine}
    if not recorded:
        return ["Machine load: not recorded (a run before wildlib.contention, or no /proc): its times are unchecked."]
    busy = contended_stages(m)
    worst = lambda key: max((r.get(key) or 0.0) for r in recorded.values())  # noqa: E731
    trainings = [t for r in recorded.values() for t in r.get("trainings") or [] if t.get("step_ratio")]
    steps = ", ".join(f"{t['name']} {t['step_s']:.2f} s against {t['probe_step_s']:.2f}" for t in trainings)
    line = (f"Machine load over the run (`wildlib.contention`; stages {', '.join(s[:2] for s in recorded)}): "
            f"load average at most {worst('load1_max'):.2f}, other processes at most "
            f"{100 * worst('others_share'):.0f}% of the cores, CPU steal at most {100 * worst('steal_share'):.0f}%"
            + (f"; each training's mean step against its probe right after: {steps}" if steps else "") + ". ")
    if not busy:
        return [line + "**Not contended**: the times below are of an idle machine."]
    return [line + "**Contended** (times and speedups of these stages are no headline): "
            + "; ".join(f"{s[:2]}: {', '.join(r)}" for s, r in busy.items()) + "."]


def results_markdown(run_dir, bench=None, sweep=None, figure: str = "") -> str:
    """The whole generated results: every stage's numbers, the frontier, the goals."""
    p = _parts(run_dir, bench, sweep, figure)
    return "\n".join(p["intro"] + p["time"] + p["stages"] + p["sweep"] + p["goals"]).rstrip() + "\n"


SPEED_FILE = "results-speed.md"  # beside RESULTS_FILE: the speed stages of the same run


def speed_markdown(run_dir) -> str:
    """The speed page: the run's intro (run, commit, machine, load), its three sentences, and stages
    04 and 05 as :func:`results_markdown` writes them, from the same run (every line of it is a
    line there)."""
    m = _records(resolve(run_dir))
    p = _parts(run_dir, records=m)
    body = []
    for stage in (stages.CHANNELS, stages.EVALUATE):
        if m[stage] is not None:
            body += _STAGE_LINES[stage](m[stage])
    return "\n".join(p["intro"] + p["time"] + body).rstrip() + "\n"


def takeaway_lines(m: dict) -> list[str]:
    """Three plain sentences above the numbers, each computed from the run's records (05's table on
    the report split, 04's side-by-side speed on `valid`): what got smaller, whether zeros bought
    time and what did, and which variants the data call non-inferior.  Nothing where a stage is missing."""
    ev, ch = m.get(stages.EVALUATE), m.get(stages.CHANNELS)
    if ev is None:
        return []
    rows = [r.row() for r in ev.variants if r.name not in ("baseline", "dense control")]
    out = []
    small = max(rows, key=lambda r: r.get("ratio") or 0, default=None)
    if small and small.get("ratio"):
        out.append(f"The smallest file, {small['name']}, is {_f(small['ratio'], 1)}x smaller than the dense model's, "
                   f"at {signed_delta(small) or 'an unmeasured difference'} AP50 against the reference on "
                   f"`{ev.evaluation_split}`.")
    if ch is not None:
        sparse = next((v.row() for v in ch.variants if "sparse (stage 02" in v.name), None)
        fast = ch.reloaded.row() if ch.reloaded else {}
        noise = f" (the baseline against itself: {_f(ch.speed_noise, 2)}x)" if ch.speed_noise else ""
        if sparse and fast.get("speedup"):
            out.append(f"Zeros bought no time: the sparse model ran at {_f(sparse['speedup'], 2)}x the baseline's "
                       f"speed{noise}, while channel pruning and int8 kernels in one graph ran "
                       f"{_f(fast['speedup'], 2)}x faster, reloaded in a fresh process (side by side, `valid`).")
    good = [r["name"] for r in rows if r.get("non_inferior")]
    out.append(("Non-inferior (the data rule out a loss of more than 1 AP50): " + ", ".join(good) + "."
                if good else "No compressed variant is non-inferior: none rules out a loss of more than 1 AP50.")
               + f" {len(rows) - len(good)} of {len(rows)} are not.")
    return ["**In three sentences.** " + " ".join(out), ""]


def headline_markdown(run_dir, sweep=None, results_link: str = RESULTS_FILE, figures: dict | None = None) -> str:
    """The README's generated headline: the run and its machine, ``make run``'s time, the baseline,
    and where each goal stands, with ``figures`` (caption -> path, copied from the run and the
    sweep by :func:`main`); the rest is in ``results_link``."""
    p = _parts(run_dir, None, sweep)
    baseline = [line for line in p["stages"] if line.startswith("* **Baseline**")][:1]
    shown = [f"![{caption}]({path})" for caption, path in (figures or {}).items()]
    return "\n".join(p["intro"] + p["time"] + baseline + [""] + p["goals"] + ([""] + shown if shown else []) + [
        "", f"Every stage's numbers, the frontier's table and figure: [{results_link}]({results_link})."]).rstrip() + "\n"


RUN_FIGURES = {"every variant on test: AP50 against file size and speed (05)": (stages.EVALUATE, "pareto.png"),
               "speed against AP50 on valid, side by side (04)": (stages.CHANNELS, "speed_vs_ap50.png")}


def copy_figures(run_dir, dest_dir) -> dict[str, Path]:
    """The run's headline figures (:data:`RUN_FIGURES`) copied to ``dest_dir`` as ``<run>-<name>``
    (a README cannot link into an ignored run folder); caption -> copy, for those the run has."""
    run = resolve(run_dir)
    out = {}
    for caption, (stage, name) in RUN_FIGURES.items():
        if (run / stage / name).is_file():
            out[caption] = copy_file(run / stage / name, Path(dest_dir) / f"{run.name}-{name}")
    return out


RESULTS_PREFACE = """# Results

How they are measured: the baseline is trained to convergence (its learning curve and
`plateau_gain_ap50`); stage 02 fine-tunes it once more **without pruning**, with exactly the
pruning run's schedule (the *dense control*); the dense control is the **reference**, fixed before
anything is measured (never chosen on `valid`), and every "within 1 AP50" (sparsity, compression,
speed) is against it, on `test`, with the paired bootstrap interval of the difference
([evidence.md](evidence.md)); the difference to the baseline is shown beside it. Centroid fine-tuning
in stage 03 trains a little beyond the dense control; the extra iterations are reported beside it.
One run is one seed at one operating point per method: the sparsity and compression goals are read
from the frontier sweep's seed means where it was collated.

This file is written by `make report`; edit `wildlib/report.py`, not this file.

"""


SPEED_PREFACE = """# Results: speed (notebooks 04 and 05)

The speed stages of the same run as [results.md](results.md), on their own page: what buys time and
what does not, measured side by side with the baseline (how: [speed.md](speed.md); terms:
[glossary.md](glossary.md)). Earlier runs' pages are in [archive/](archive/).

This file is written by `make report`; edit `wildlib/report.py`, not this file.

"""


def _explore_lines(e: ExploreMetrics, **_) -> list[str]:
    splits = [s for s in ("train", "valid", "test") if s in e.images]
    small = f"; {100 * e.box_size_mix['small']:.0f}% of boxes COCO-small" if e.box_size_mix else ""
    return [f"* Data: {' / '.join(str(e.images[s]) for s in splits)} images ({' / '.join(splits)}), "
            f"{' / '.join(str(e.instances[s]) for s in splits)} boxes{small}.", ""]


def _baseline_lines(b: BaselineMetrics, bench=None, **_) -> list[str]:
    t, size, inference = b.train, b.size or {}, b.inference or {}
    curve = ", ".join(f"{p['iter']}: {_f(p['AP50'], 1)}" for p in b.learning_curve or [])  # None: nothing detected
    L = [f"* **Baseline** (`{b.config_name}`, {t.iterations} iterations at batch {t.ims_per_batch}, "
         f"LR steps at {t.lr_steps} of the schedule): **AP50 {_f(b.bbox['AP50'])}** "
         f"{interval(b.ap50_ci95)} on `{b.evaluation_split}`, "
         f"AP {_f(b.bbox['AP'])}, AP75 {_f(b.bbox['AP75'])}; {t.seconds / 60:.1f} min of training "
         f"({_f(t.s_per_iter)} s/iter with its periodic evaluations); "
         f"{_f(1000 * inference['median_s'] if 'median_s' in inference else None, 0)} ms/image median at batch 1; "
         f"{_f(size.get('params'), 0)} parameters, {_f(size.get('weights_bytes'), 0)}-byte weights file.",
         f"* Learning curve on `valid` (iteration: AP50): {curve}. Gain over the last quarter of the schedule "
         f"(`plateau_gain_ap50`): **{_f(b.plateau_gain_ap50)}**.", ""]
    if b.profile:
        L += _profile_lines(b.profile)
    if bench:
        L += _bench_lines(bench)
    return L


def _prune_lines(p: PruneMetrics, **_) -> list[str]:
    dc, g, sizes = p.dense_control, p.gradual, p.sizes or {}
    where = f"on `{p.evaluation_split}`" + ("" if p.evaluation_split == "test"
                                            else " (no test split: chosen and reported on one split)")
    delta = g.delta_ap50 if g.delta_ap50 is not None else g.bbox["AP50"] - p.reference_ap50
    L = [f"* **Dense control** (the baseline fine-tuned {dc.iterations} more iterations at batch "
         f"{dc.ims_per_batch}, LR {dc.lr}, every layer trainable: the pruning run's schedule, "
         f"no pruning): AP50 {_f(dc.AP50)} against the baseline's {_f(p.baseline['AP50'])} {where}. "
         f"The reference is the {p.reference}" + (" (fixed before measuring, never chosen on `valid`)"
                                                  if p.reference == "dense control" else
                                                  " (the better of the two on `valid`: a run before the fixed reference)")
         + f": **AP50 "
         f"{_f(p.reference_ap50)} {interval(p.reference_ap50_ci95)}** {where} (image-level bootstrap "
         f"95% interval); every \"within {AP50_TOLERANCE:g} AP50\" below is against it, with the paired interval "
         "of the difference." + (f" The baseline against it: delta {p.baseline_against_reference.delta_ap50:+.2f} "
                                  f"{interval(p.baseline_against_reference.delta_ap50_ci95)}." if p.baseline_against_reference
                                  else ""),
         f"* **Gradual pruning** ({g.ranking} ranking, cubic schedule to {g.target:.0%} of all prunable "
         f"weights, same {g.iterations} iterations): sparsity {g.sparsity:.3f} at **AP50 "
         f"{_f(g.bbox['AP50'])}**, delta {_f(delta)} {interval(g.delta_ap50_ci95)} against the reference, "
         f"{g.seconds / 60:.1f} min. `max_sparsity_within_1ap50` (point estimate of the drop <= {AP50_TOLERANCE:g}) = "
         f"**{_f(p.max_sparsity_within_1ap50, 3)}** ({p.best_variant.name if p.best_variant else None}); "
         f"non-inferior (95% upper end of the drop <= {AP50_TOLERANCE:g}): "
         f"**{_f(p.max_sparsity_non_inferior, 3)}**. One seed, one target: `make sweep` gives the frontier."]
    if sizes:
        L.append(f"* Sparse file of the pruned model: {sizes['pruned_sparse_bytes']:,} bytes "
                 f"({sizes['sparse_ratio_vs_dense']:.1f}x smaller than the dense file); with masks attached: "
                 f"{sizes['pruned_with_masks_bytes']:,} bytes.")
    return L + [""] + _one_shot_lines(p)


def _share_lines(s: ShareMetrics, **_) -> list[str]:
    sh = s.shared
    wlc = next((v for v in _variant_rows(s) if v.get("file", "").endswith(stages.SHARED_FILE)), None)
    rep = s.reported or {}
    split = s.evaluation_split
    L = [f"* **Weight sharing** of the pruned model (conv {sh.conv_bits} bits, FC {sh.fc_bits} bits, "
         f"BatchNorm folded, depthwise convs int8), chosen on `valid`: AP50 {_f(sh.before_finetune['AP50'])} before "
         f"and {_f(sh.after_finetune['AP50'])} after {sh.finetune_iterations} iterations of centroid "
         f"fine-tuning there (extra training beyond the dense control's: "
         f"{sh.extra_iterations_beyond_dense_control} iterations, centroids only); the decoded file is "
         f"bit-exact: {sh.bit_exact}."]
    for key in ("shared", "int8"):
        if key in rep:
            L.append("* " + verdict_line(rep[key]["name"], rep[key]) + ".")
    if wlc:
        L.append(f"* The `.wlc` file: **{wlc['file_bytes']:,} bytes = {wlc['ratio']:.1f}x** smaller than the dense "
                 f"fp32 file ({wlc['bits_per_weight']:.2f} bits per parameter), AP50 {_f(wlc['AP50'])} on `{split}`.")
    return L + [""]


def _evaluate_lines(ev: EvaluateMetrics, **_) -> list[str]:
    L = [f"Every variant measured in one process by `05_evaluate` (reference AP50 "
         f"{_f(ev.reference_ap50)}):", ""]
    L += _table(_variant_rows(ev), [("variant", "name", None), ("AP50", "AP50", 2), ("AP", "AP", 2),
                                 ("nonzero params", "nonzero", 0), ("file bytes", "file_bytes", 0),
                                 ("ratio", "ratio", 1), ("latency ms (median)", "latency_median_ms", 1),
                                 ("p90", "latency_p90_ms", 1), ("speedup", "speedup", 2), ("cold", "speedup_cold", 2)])
    return L + ["", f"`best_compression_ratio_within_1ap50` = **{_f(ev.best_compression_ratio_within_1ap50, 1)}** "
                    f"({ev.best_variant}); `best_speedup_within_1ap50` = "
                    f"**{_f(ev.best_speedup_within_1ap50, 3)}** ({ev.fastest_variant}).", ""] + _survey_lines(ev)


def _survey_lines(ev: EvaluateMetrics) -> list[str]:
    """The deployable on survey mosaics (``wildlib.detect``), whole and in slices: AP50 and the paired
    difference to the whole image."""
    rows = ev.survey_slices or []
    if not rows:
        return []
    parts = []
    for r in rows:
        d = r.get("delta_ap50")
        paired = "" if d is None or d != d else " ({:+.2f} [{:+.2f}, {:+.2f}] against the whole image)".format(d, *r["delta_ap50_ci95"])
        parts.append(f"{r['name']} {_f(r['AP50'])}{paired}")
    return [f"The deployable on {rows[0]['images']} survey mosaics of `test` scenes (`wildlib.detect`), AP50: "
            + "; ".join(parts) + ".", ""]


def stage_summary(run_dir, stage: str) -> str:
    """What a stage measured, in the words of ``docs/results.md``, read from its ``metrics.json``:
    how each notebook ends.  Introduced in notebook 00_explore_data, section "What we saw"."""
    return "\n".join(_STAGE_LINES[stage](stages.metrics_of(run_dir, stage))).rstrip() + "\n"


def _channel_lines(c: ChannelsMetrics, **_) -> list[str]:
    lat, ft = c.latency, c.fine_tuning
    tt, ct = c.test_time or {}, c.combined_test_time or c.test_time or {}
    setting = lambda t: (f"{t.get('pre_nms')}/{t.get('post_nms')} RPN proposals (pre/post NMS), "  # noqa: E731
                         f"{t.get('detections')} detections, {t.get('min_size')} px input")
    ratios = ", ".join(f"{k} {v:.0%}" for k, v in (c.channel_ratios or {}).items() if v)
    L = [f"* **Speed** (`04_prune_channels`): end to end, batch 1, {lat and lat.threads} threads, median of "
         f"{lat and lat.runs} runs after {lat and lat.warmup} warm-up runs, each variant in turns with the dense fp32 "
         f"baseline in one process (each row beside its own baseline median)"
         f"{'; timed: ' + lat.timed_pass if lat and lat.timed_pass else ''}. Test-time "
         f"setting of the baseline's knob sweep: {setting(tt)}; of the combined model: {setting(ct)}. "
         f"Channels removed: {ratios or 'none'}; "
         f"then {ft and ft.iterations} fine-tuning iterations at batch {ft and ft.ims_per_batch} (within the dense "
         f"control's budget).", ""]
    L += _table([{**v, "gmacs": v["macs"] / 1e9 if v.get("macs") else None, "delta": signed_delta(v)}
                 for v in _variant_rows(c)],
                [("variant", "name", None), ("AP50", "AP50", 2), ("AP", "AP", 2),
                 ("delta vs reference [95%]", "delta", None), ("non-inferior", "non_inferior", None),
                 ("latency ms (median)", "latency_median_ms", 1), ("p90", "latency_p90_ms", 1),
                 ("its baseline ms", "baseline_ms_median", 1), ("speedup", "speedup", 2),
                 ("cold", "speedup_cold", 2), ("GMACs", "gmacs", 2),
                 ("params", "params", 0),
                 ("file bytes", "file_bytes", 0)])
    r = c.reloaded.row() if c.reloaded else {}
    if c.runtime:
        rt = c.runtime
        L += ["", f"ONNX Runtime settings chosen by a short benchmark on this machine ({rt.get('cpu_model')}): "
                  f"int8 format {rt.get('int8_format')}, graph optimisation `{rt.get('optimization')}`, "
                  f"{rt.get('execution')} execution, {rt.get('threads')} threads "
                  f"({_f(rt.get('median_ms'), 1)} ms median for the one int8 graph)."]
    if c.graph_profile_ms:
        parts = ", ".join(f"{k} {_f(v, 1)}" for k, v in sorted(c.graph_profile_ms.items(), key=lambda kv: -kv[1]))
        L += ["", f"Where the one graph's time goes (ms per image, ONNX Runtime's profiler): {parts}."]
    if c.combined_on_test:
        L += ["", "Chosen on `valid` (the table above); the deployable on the report split: "
              + verdict_line("combined", c.combined_on_test.row()) + "."]
    L += ["", f"Reloaded from `{c.deploy_dir}` in a fresh process: AP50 {_f(r.get('AP50'))}, "
              f"{_f(r.get('latency_median_ms'), 1)} ms median, **{_f(r.get('speedup'))}x**. "
              f"`best_speedup_within_1ap50_valid` = **{_f(c.best_speedup_within_1ap50_valid, 3)}** ({c.best_variant})."]
    if c.best_on_test:
        name = c.best_non_inferior_variant or c.best_variant  # before the rule of its own: the point-rule best
        b = c.best_reloaded.row() if c.best_reloaded else {}
        again = (f" Reloaded in a fresh process: {_f(b.get('latency_median_ms'), 1)} ms median, "
                 f"{_f(b.get('speedup'))}x." if b else "")
        L += ["", f"The fastest variant non-inferior on `valid`, on the report split: "
                  f"{verdict_line(name, c.best_on_test.row())}; `best_speedup_non_inferior` (its speedup where the "
                  f"drop's 95% upper end is within {_f(c.ap50_tolerance, 1)} AP50 there too, else 0) = "
                  f"**{_f(c.best_speedup_non_inferior, 3)}**.{again}"]
    return L + [""]


_STAGE_LINES = {stages.EXPLORE: _explore_lines, stages.BASELINE: _baseline_lines, stages.PRUNE: _prune_lines,
                stages.SHARE: _share_lines, stages.CHANNELS: _channel_lines, stages.EVALUATE: _evaluate_lines}
# which stage's metrics hold each goal's number
GOAL_STAGES = {"plateau_gain_ap50": stages.BASELINE, "max_sparsity_within_1ap50": stages.PRUNE,
               "best_speedup_within_1ap50": stages.EVALUATE,  # 04's choice, reported on test by 05
               "best_compression_ratio_within_1ap50": stages.EVALUATE,
               "best_speedup_non_inferior": stages.CHANNELS}  # 04's choice (non-inferior on valid), on test


def _platform(m) -> str:
    env = (m[stages.BASELINE].environment if m.get(stages.BASELINE) else None) or {}
    if not env:
        return ""
    where = env.get("gpu") or (f"{env.get('cpu_model', 'CPU model not recorded')} "
                               f"(PyTorch CPU capability {env.get('cpu_capability', 'n/a')}), "
                               f"{env.get('cpu_count')} CPU cores, {env.get('torch_threads')} torch threads")
    return (f"Machine: {where}; torch {env.get('torch')}, detectron2 {env.get('detectron2')}. Times and speedups are "
            "of this CPU: the same code trains and infers at other speeds on other CPUs (other kernels too), so "
            "compare times only within one run, and speedups as ratios measured side by side.")


def _profile_lines(profile: dict) -> list[str]:
    rows = [{"part": k, **v} for k, v in profile.items()]
    L = ["Where the time goes in this baseline (`wildlib.profile.cost_table`, torch.profiler, median of "
         "repeated runs; GFLOPs from fvcore, forward only; training step = one batch):", ""]
    L += _table(rows, [("part", "part", None), ("inference ms", "infer_ms", 1), ("share", "infer_share", 2),
                       ("GFLOPs", "infer_gflops", 2), ("train step ms", "train_ms", 0),
                       ("share", "train_share", 2), ("train fwd GFLOPs", "train_fwd_gflops", 2)])
    return L + [""]


def _bench_lines(bench: dict) -> list[str]:
    env = bench.get("environment", {})
    L = [f"Each change of the recipe, measured side by side in one process (`python -m wildlib.profile`, "
         f"{env.get('torch_threads')} threads, same batches and images, recipes interleaved, median and p90 "
         f"over {bench.get('runs', 'repeated runs')}; untrained weights, so only the time is compared):", ""]
    L += _table(bench["recipes"], [("recipe", "recipe", None), ("train step s", "train_s_median", 3),
                                   ("p90", "train_s_p90", 3), ("speedup", "train_speedup", 2),
                                   ("inference ms", "infer_ms_median", 1), ("p90", "infer_ms_p90", 1),
                                   ("speedup", "infer_speedup", 2), ("params", "params", 0)])
    return L + [""]


def _one_shot_lines(p: PruneMetrics) -> list[str]:
    by = {}
    for r in p.one_shot or []:
        by.setdefault(r["ratio"], {})[current_names(r["scope"])] = r["AP50"]
    for r in p.one_shot_lamp or []:
        by.setdefault(r["ratio"], {})["all, LAMP"] = r["AP50"]
    scopes = list(dict.fromkeys(k for v in by.values() for k in v))
    paper = {s: {float(k): v for k, v in d.items()} for s, d in ONE_SHOT_AP50.items()}
    head = "| pruned | " + " | ".join(f"{s} (paper)" if s in paper else s for s in scopes) + " |"
    L = ["One-shot pruning without fine-tuning, AP50 on `valid`, where it chooses a setting (the paper's numbers, on its real photos with an "
         "R50-FPN, in brackets):", "", head, "|" + "---|" * (len(scopes) + 1)]
    for ratio in sorted(by):
        cells = []
        for s in scopes:
            v = _f(by[ratio].get(s))
            ref = paper.get(s, {}).get(ratio)
            cells.append(f"{v} ({_f(ref)})" if ref is not None else v)
        L.append(f"| {ratio:.0%} | " + " | ".join(cells) + " |")
    return L + [""]


def scaling_lines(folders) -> list[str]:
    """The same sweep spec run with other layouts (workers x threads), wall times side by side,
    from each folder's ``timing.json``: the scaling table of docs/results.md."""
    rows = []
    for f in folders:
        for t in (_load(resolve(f) / "timing.json") or {}).get("runs", []):
            if t.get("points_run"):
                rows.append((Path(f).parent.name, t))
    if not rows:
        return []
    L = ["**Scaling** (one sweep spec, each layout on its own: wall time of the points it ran, Dask "
         "`LocalCluster`, each point pinned to its threads):", "",
         "| folder | layout | points run (failed) | wall min | min per point | CPU | started |", "|---|---|---|---|---|---|---|"]
    for name, t in rows:
        n = t["points_run"] + t.get("points_failed", 0)
        L.append(f"| {name} | {t['layout']} | {t['points_run']} ({t.get('points_failed', 0)}) | {t['seconds'] / 60:.1f} | "
                 f"{t['seconds'] / 60 / max(n, 1):.1f} | {t.get('cpu_model')} ({t.get('cpu_count')} cores) | "
                 f"{t.get('started')} |")
    return L + [""]


def update_readme(readme, section: str) -> Path:
    readme = Path(readme)
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme}: no {BEGIN} ... {END} markers to write the results between")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return write_text(readme, f"{head}{BEGIN}\n{section}{END}{tail}")


def paired_line(run_a, run_b) -> str:
    """One line: stage 01 of ``run_a`` against stage 01 of ``run_b``, paired on the same images."""
    d = stages.paired_baselines(run_a, run_b)
    return (f"{run_a} vs {run_b} on `{d['split']}`: AP50 {d['AP50']:.2f} {interval(d['AP50_ci95'])} vs "
            f"{d['reference_ap50']:.2f}; paired difference {d['delta_ap50']:+.2f} {interval(d['delta_ap50_ci95'])} "
            f"(image-level bootstrap, 95%)")


TIME_LINE = "*How long:"  # the line of each notebook's intro that notebook_times rewrites


def notebook_times(run_dir) -> dict[str, str]:
    """Per notebook stem, the sentence its intro ends with: how long the stage took in ``run_dir``
    (its ``run_times.json``), with which parameters, on which CPU and threads, whether the stage
    was contended, and the whole run's time; for the notebooks the run timed."""
    run = resolve(run_dir)
    times, info = _load(run / "run_times.json") or {}, _load(run / "run_info.json") or {}
    m = _records(run)
    env = (m[stages.BASELINE].environment if m.get(stages.BASELINE) else None) or {}
    busy = contended_stages(m)
    when = (info.get("finished") or "")[:10]
    cpu = f"{env.get('cpu_model', 'a CPU')} with {env.get('cpu_capability', 'n/a')}, {env.get('torch_threads')} threads"
    params = "other parameters (run_info.json)" if info.get("overrides") else "the default parameters"
    out = {}
    for stem, seconds in times.items():
        if stem == "total":
            continue
        flag = " (contended there: its times are no headline)" if _stage_of(stem) in busy else ""
        out[stem] = (f"{TIME_LINE} {seconds / 60:.1f} min with {params} in run `{run.name}` ({when}, {cpu}){flag}; "
                     f"the whole `make run` took {times.get('total', 0) / 60:.1f} min there. Other CPUs take other times.*")
    return out


def update_notebook_times(run_dir, folder) -> list[Path]:
    """Rewrite the time line of each notebook in ``folder`` that ``run_dir`` timed
    (:func:`notebook_times`), in its first cell; the notebooks changed (written atomically)."""
    lines, changed = notebook_times(run_dir), []
    for nb_path in sorted(Path(folder).glob("[0-9][0-9]_*.ipynb")):
        if nb_path.stem not in lines:
            continue
        nb = json.loads(nb_path.read_text())
        src = "".join(nb["cells"][0]["source"])
        kept = [ln for ln in src.split("\n") if not ln.startswith(TIME_LINE)]
        while kept and not kept[-1]:
            kept.pop()
        new = "\n".join(kept + ["", lines[nb_path.stem]]) + "\n"
        if new != src:
            nb["cells"][0]["source"] = new.splitlines(keepends=True)
            changed.append(write_text(nb_path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n"))
    return changed


HTML_DIR = "html"  # RUN_DIR/html/: the run's executed notebooks, readable without running them


def render_html(run_dir) -> list[Path]:
    """Each executed notebook of a run (``RUN_DIR/notebooks/NN_*.ipynb``, as the runner keeps them)
    rendered to ``RUN_DIR/html/NN_*.html`` by nbconvert, figures embedded, widgets as the static
    figure of their default: the run read without running it.  Written atomically; the paths."""
    # nbconvert is heavy (jinja2, bleach, mistune) and only this command needs it
    import nbformat
    from nbconvert import HTMLExporter

    run = resolve(run_dir)
    exporter = HTMLExporter(template_name="lab")
    written = []
    for nb_path in sorted((run / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        body, _ = exporter.from_notebook_node(nbformat.read(nb_path, as_version=4))
        written.append(write_text(run / HTML_DIR / nb_path.with_suffix(".html").name, body))
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write the generated results (the README's headline and "
                                             "docs/results.md) from a run's files.")
    ap.add_argument("--run-dir", default="runs/default")
    ap.add_argument("--readme", default="", help="README to update, and docs/results.md beside it "
                                                 "(default: print the results)")
    ap.add_argument("--bench", default="", help="JSON written by `python -m wildlib.profile --out`")
    ap.add_argument("--sweep", default="", help="a collated sweep folder, e.g. runs/sweeps/frontier")
    ap.add_argument("--scaling", nargs="*", default=[], help="sweep folders of one spec run with other layouts "
                                                             "(e.g. runs/scaling-1x2/scaling runs/scaling-2x1/scaling)")
    ap.add_argument("--notebook-times", default="", help="a notebooks folder whose intros' time lines are "
                                                         "rewritten from the run (make report: notebooks/)")
    ap.add_argument("--paired", nargs=2, metavar=("RUN_A", "RUN_B"), help="print stage 01 of RUN_A against stage 01 "
                    "of RUN_B on the same images: AP50 and the paired difference, with 95%% intervals")
    a = ap.parse_args(argv)
    if a.paired:
        print(paired_line(*a.paired))
        return
    bench = _load(Path(a.bench)) if a.bench else None
    if not a.readme:
        print(results_markdown(a.run_dir, bench, a.sweep or None))
        return
    docs = Path(a.readme).parent / RESULTS_FILE
    figure = ""
    if a.sweep and (resolve(a.sweep) / "frontier.png").exists():  # a copy the results can show
        dest = Path(a.readme).parent / FIGURES / "frontier.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy_file(resolve(a.sweep) / "frontier.png", dest)
        figure = os.path.relpath(dest, docs.parent)
    write_text(docs, RESULTS_PREFACE + results_markdown(a.run_dir, bench, a.sweep or None, figure)
               + "".join(f"\n{line}" for line in scaling_lines(a.scaling)))
    write_text(docs.parent / SPEED_FILE, SPEED_PREFACE + speed_markdown(a.run_dir))
    copies = copy_figures(a.run_dir, Path(a.readme).parent / FIGURES)
    if figure:
        copies["the pruning frontier, seed means (make sweep)"] = docs.parent / figure
    update_readme(a.readme, headline_markdown(a.run_dir, a.sweep or None, figures={
        c: os.path.relpath(p, Path(a.readme).parent) for c, p in copies.items()}))
    pages = render_html(a.run_dir)
    if a.notebook_times:
        for nb_path in update_notebook_times(a.run_dir, a.notebook_times):
            print(f"{nb_path}: its time line rewritten from {resolve(a.run_dir).name}")
    print(f"{docs} and the headline of {a.readme} rewritten from {resolve(a.run_dir)}; "
          f"{len(pages)} executed notebooks rendered under {resolve(a.run_dir) / HTML_DIR}")


if __name__ == "__main__":
    main()


def evaluation_report(data_dir, table, per_class, paper_side, reference_ap50: float, smallest: dict,
                      fastest: dict, split: str = "test") -> str:
    """Notebook 05's ``report.md``: the variants table on the report split, the reference, the
    best compression and the best speedup within the tolerance (the rule named), per-class AP and
    the paper's one-shot table beside ours."""
    where = f"`{split}`" + ("" if split == "test" else " (no test split: chosen and reported on one split)")
    cols = ["AP50", "AP50_ci95", "delta_ap50", "delta_ap50_ci95", "within_1ap50", "non_inferior", "file_bytes",
            "ratio", "latency_median_ms", "latency_p90_ms", "baseline_ms_median", "speedup", "speedup_cold"]
    shown = table[[c for c in cols if c in table]].copy()
    for c in ("AP50_ci95", "delta_ap50_ci95"):
        if c in shown:
            shown[c] = shown[c].map(interval)
    return "\n".join([
        "# wildlib evaluation report", "",
        f"Data: `{data_dir}`; every number below was measured by `05_evaluate` in this run, on {where}.", "",
        "## Variants", "", shown.round(2).to_markdown(), "",
        f"Reference AP50 **{reference_ap50:.2f}** on {where}: the better on `valid` of the baseline and the dense "
        f"control (the baseline fine-tuned as long as the pruned model). Intervals: image-level bootstrap 95%; each "
        f"delta is paired with the reference on the same resampled images. Rule for the two headlines: the drop's "
        f"point estimate <= {AP50_TOLERANCE:g} AP50 (`within_1ap50`); `non_inferior` asks the drop's 95% upper end "
        f"to be <= {AP50_TOLERANCE:g}. Largest compression within it: **{smallest['ratio']:.1f}x** "
        f"({smallest['name']}, AP50 {_f(smallest['AP50'])}). Largest measured speedup within it: "
        f"**{fastest['speedup']:.2f}x** ({fastest['name']}, AP50 {_f(fastest['AP50'])}); each row's own baseline "
        "median is in `baseline_ms_median`.", "",
        "## Per-class AP", "", per_class.round(1).to_markdown(), "",
        "## One-shot pruning: paper vs ours (AP50; ours on `valid`, where stage 02 chose its setting)", "",
        paper_side.to_markdown(), "",
    ])
