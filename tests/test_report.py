"""wildlib.report: the frontier section of docs/results.md is read from a collated sweep's files, and the
two compression goals then come from the frontier's seed means, not from one run."""

import json

import pandas as pd

from wildlib import layout, records, report


def _sweep(folder, within_sparsity=0.7):
    folder.mkdir(parents=True)
    rows = [{"group": "target", "TARGET_SPARSITY": t, "FT_ITER": float("nan"), "seeds": 3, "sparsity": t,
             "AP50_mean": 95.0 - 10 * (t - 0.5), "AP50_seed_sd": 0.4, "reference_AP50_mean": 95.5,
             "delta_mean": -0.5 - 10 * (t - 0.5), "delta_lo": -1.5 - 10 * (t - 0.5), "delta_hi": 0.2 - 10 * (t - 0.5),
             "within_1ap50": t <= within_sparsity, "non_inferior": False, "compression_ratio": 1 / (1 - t)}
            for t in (0.5, 0.7, 0.9)]
    pd.DataFrame(rows).to_csv(folder / "summary.csv", index=False)
    headline = {"rule_within": "seed-mean drop <= 1", "rule_non_inferior": "upper end <= 1", "points": 9,
                "points_ok": 9, "max_sparsity_within_1ap50": within_sparsity, "max_sparsity_non_inferior": 0.0,
                "best_compression_ratio_within_1ap50": 3.3, "cpu_models": ["Test CPU"]}
    (folder / "headline.json").write_text(json.dumps(headline))
    (folder / "timing.json").write_text(json.dumps({"runs": [
        {"started": "2026-11-30 15:00 UTC", "seconds": 600.0, "points_run": 9, "points_failed": 0,
         "layout": "1 worker(s) x 2 thread(s)", "cpu_model": "Test CPU"}]}))
    return folder


def test_frontier_section_and_goals_come_from_the_sweep(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    text = report.results_markdown(run, sweep=_sweep(tmp_path / "sweeps" / "frontier"), figure="docs/results/frontier.png")
    assert "**The frontier** (sweep `frontier`: 9 of 9 points finished; 9 point(s) finished (0 failed) in 10.0 min" in text
    assert "| target | TARGET_SPARSITY=0.7 | 3 | 0.700 |" in text  # the nan axis of another group is left out
    assert "FT_ITER" not in text.split("**The frontier**")[1].split("![")[0]
    assert "![AP50 against sparsity" in text
    goals = text.split("Against the goals")[1]
    assert "sparsity within 1 AP50 of the reference: 0.700 — **not met** (goal >= 0.9)" in goals
    assert "compression within 1 AP50 of the reference: 3.3x — **not met** (goal >= 40x)" in goals


def test_points_of_a_sweep_stopped_part_way_are_counted_without_a_time(tmp_path):
    sweep = _sweep(tmp_path / "sweeps" / "frontier")
    headline = json.loads((sweep / "headline.json").read_text())
    (sweep / "headline.json").write_text(json.dumps({**headline, "points": 12, "points_ok": 12}))
    text = report.results_markdown(tmp_path / "run", sweep=sweep)
    assert ("12 of 12 points finished; 9 point(s) finished (0 failed) in 10.0 min on 1 worker(s) x 2 thread(s) "
            "(Test CPU); 3 point(s) finished in runs stopped before they recorded their wall time)") in text


def test_a_sweep_not_yet_collated_is_said_so(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "sw").mkdir()
    text = report.results_markdown(tmp_path / "run", sweep=tmp_path / "sw")
    assert "not collated yet" in text



def test_a_sweep_with_no_finished_point_leaves_the_goals_to_the_run(tmp_path):
    (tmp_path / "run").mkdir()
    sw = tmp_path / "sw"
    sw.mkdir()
    pd.DataFrame().to_csv(sw / "summary.csv", index=False)  # what collate writes when every point failed
    (sw / "headline.json").write_text(json.dumps({"points": 3, "points_ok": 0, "rule_within": "r", "rule_non_inferior": "r"}))
    text = report.results_markdown(tmp_path / "run", sweep=sw)
    assert "none of its 3 points has finished" in text
    assert "the frontier's seed means" not in text


def test_make_report_writes_the_results_file_and_the_readme_headline(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    sweep = _sweep(tmp_path / "sweeps" / "frontier")
    (sweep / "frontier.png").write_bytes(b"\x89PNG fake")
    readme = tmp_path / "repo" / "README.md"
    readme.parent.mkdir()
    readme.write_text(f"intro\n{report.BEGIN}\nOLD\n{report.END}\nrest\n")
    report.main(["--run-dir", str(run), "--readme", str(readme), "--sweep", str(sweep)])
    results = (readme.parent / report.RESULTS_FILE).read_text()
    assert results.startswith("# Results") and "**The frontier**" in results
    assert "![AP50 against sparsity, seeds as points, seed means with their interval](results/frontier.png)" in results
    assert (readme.parent / report.FIGURES / "frontier.png").read_bytes() == b"\x89PNG fake"
    text = readme.read_text()
    head = text.split(report.BEGIN)[1].split(report.END)[0]
    assert text.startswith("intro\n") and text.endswith(f"{report.END}\nrest\n") and "OLD" not in text
    assert "sparsity within 1 AP50 of the reference: 0.700" in head and "**The frontier**" not in head
    assert "[docs/results.md](docs/results.md)" in head


def test_variant_rows_of_either_schema_read_the_same():
    """Rows written before the keys were one (04 said latency_ms_median, 02/03/05 named the model
    "variant") read as today's Variant rows; unknown keys are left out, measured ones kept."""
    old = {"variants": [{"name": "a", "AP50": 90.0, "latency_ms_median": 10.0, "latency_ms_p90": 12.0, "gmacs": 1},
                        {"variant": "b", "AP50": 80.0, "file": "b.wlc", "file_bytes": 10}], "variant_schema": 1}
    new = {"variants": [records.Variant("a", AP50=90.0, latency_median_ms=10.0, latency_p90_ms=12.0).row(),
                        records.Variant("b", AP50=80.0, file="b.wlc", file_bytes=10).row()]}
    headlines = {"best_compression_ratio_within_1ap50": 1.0, "best_speedup_within_1ap50": 1.0}
    rows = [report._variant_rows(records.EvaluateMetrics.from_json({**m, **headlines})) for m in (old, new)]
    assert rows[0] == rows[1] == new["variants"]
    assert new["variants"][0] == {"name": "a", "AP50": 90.0, "latency_median_ms": 10.0, "latency_p90_ms": 12.0}


def test_scaling_table_puts_the_layouts_side_by_side(tmp_path):
    for cores, seconds in (("1x2", 800.0), ("2x1", 620.0)):
        folder = tmp_path / f"scaling-{cores}" / "scaling"
        folder.mkdir(parents=True)
        w, t = cores.split("x")
        (folder / "timing.json").write_text(json.dumps({"runs": [
            {"started": "2026-11-30 19:00 UTC", "seconds": seconds, "points_run": 4, "points_failed": 0,
             "layout": f"{w} worker(s) x {t} thread(s)", "cpu_model": "Test CPU", "cpu_count": 2},
            {"started": "2026-11-30 19:30 UTC", "seconds": 3.0, "points_run": 0, "points_failed": 0,
             "layout": f"{w} worker(s) x {t} thread(s)", "cpu_model": "Test CPU", "cpu_count": 2}]}))
    lines = report.scaling_lines([tmp_path / "scaling-1x2" / "scaling", tmp_path / "scaling-2x1" / "scaling"])
    rows = [line for line in lines if line.startswith("| scaling-")]
    assert rows == ["| scaling-1x2 | 1 worker(s) x 2 thread(s) | 4 (0) | 13.3 | 3.3 | Test CPU (2 cores) | 2026-11-30 19:00 UTC |",
                    "| scaling-2x1 | 2 worker(s) x 1 thread(s) | 4 (0) | 10.3 | 2.6 | Test CPU (2 cores) | 2026-11-30 19:00 UTC |"]
    assert report.scaling_lines([tmp_path / "nothing"]) == []


def test_a_verdict_drawn_again_says_so_with_its_monte_carlo_error():
    row = {"name": "pick", "AP50": 92.7, "AP50_ci95": [91.0, 94.3], "split": "test", "delta_ap50": -0.31,
           "delta_ap50_ci95": [-1.03, 0.36], "reference_ap50": 93.02, "within_1ap50": True, "non_inferior": False,
           "tolerance": 1.0, "delta_ap50_samples": 1000, "delta_ap50_bound_mcse": 0.03}
    assert "bootstrap samples" not in report.verdict_line("pick", row)  # the usual draws: nothing to add
    line = report.verdict_line("pick", {**row, "delta_ap50_samples": 16000, "delta_ap50_bound_mcse": 0.007,
                                        "non_inferior_clear": True})
    assert line.endswith("(16,000 bootstrap samples, the bound near the line; its Monte Carlo error 0.007)")
    older = {k: v for k, v in row.items() if k != "delta_ap50_bound_mcse"}  # a record without the error
    assert "bootstrap samples" not in report.verdict_line("pick", {**older, "delta_ap50_samples": 16000})
    line = report.verdict_line("pick", {**row, "delta_ap50_samples": 16000, "delta_ap50_bound_mcse": 0.008,
                                        "non_inferior_clear": False})
    assert line.endswith("error 0.008; still within two of them of the line)")


def test_the_evaluation_summary_gives_the_survey_slices_against_the_whole_image():
    rows = [{"name": "whole", "AP50": 41.5, "AP50_ci95": [30.0, 50.0], "images": 12, "delta_ap50": float("nan"),
             "delta_ap50_ci95": float("nan")},
            {"name": "slices of 240 px", "AP50": 63.25, "AP50_ci95": [55.0, 70.0], "images": 12, "delta_ap50": 21.75,
             "delta_ap50_ci95": [15.5, 28.0]}]
    ev = records.EvaluateMetrics(variants=[], best_compression_ratio_within_1ap50=1.0, best_speedup_within_1ap50=1.0,
                                 survey_slices=rows)
    line = next(x for x in report._evaluate_lines(ev) if "survey mosaics" in x)
    assert line == ("The deployable on 12 survey mosaics of `test` scenes (`wildlib.detect`), AP50: whole 41.50; "
                    "slices of 240 px 63.25 (+21.75 [+15.50, +28.00] against the whole image).")
    ev.survey_slices = None
    assert not any("survey" in x for x in report._evaluate_lines(ev))


def test_each_goal_is_written_with_its_unit():
    assert report._met("make_run_minutes", 81.6) == "**not met** (goal <= 30 min)"
    assert report._met("best_speedup_non_inferior", 4.49) == "met (goal >= 4x)"
    assert report._met("max_sparsity_within_1ap50", 0.5) == "**not met** (goal >= 0.9)"
    assert set(report.GOAL_FORMAT) == set(report.GOALS)


def test_a_difference_to_the_reference_is_written_one_way_signed():
    row = {"name": "x", "AP50": 93.0, "AP50_ci95": [92.0, 94.0], "split": "test", "delta_ap50": -0.31,
           "delta_ap50_ci95": [-1.03, 0.36], "reference_ap50": 93.31, "within_1ap50": True, "non_inferior": False}
    assert report.signed_delta(row) == "-0.31 [-1.03, +0.36]"
    assert "delta -0.31 [-1.03, +0.36] against the reference 93.31" in report.verdict_line("x", row)
    assert report.signed_delta({"delta_ap50": None}) is None


def test_the_report_names_a_stale_stage(tmp_path):
    """02 re-run alone after 03 had read it: the generated results say 03 is stale."""
    import os

    for stage, at in (("00_explore", 1), ("01_baseline", 2), ("02_prune", 5), ("03_share", 4)):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "metrics.json").write_text("{}")
        os.utime(tmp_path / stage / "metrics.json", (at, at))
    block = report.stale_block(tmp_path)
    assert block[0].startswith("**Stale:** Stage 03_share is stale: it finished before 02_prune")
    os.utime(tmp_path / "03_share" / "metrics.json", (6, 6))
    assert report.stale_block(tmp_path) == []


def test_three_plain_sentences_above_the_numbers_come_from_the_records():
    V = records.Variant.from_json
    ev = records.EvaluateMetrics(evaluation_split="test", best_compression_ratio_within_1ap50=9.5, best_speedup_within_1ap50=3.1,
                                 variants=[V({"name": "baseline", "AP50": 95.0, "ratio": 1.0, "non_inferior": True}),
                                           V({"name": "pruned + shared", "AP50": 94.5, "ratio": 9.5, "non_inferior": True,
                                              "delta_ap50": -0.5, "delta_ap50_ci95": [-0.9, -0.1]}),
                                           V({"name": "int8", "AP50": 93.0, "ratio": 3.9, "non_inferior": False})])
    ch = records.ChannelsMetrics(best_speedup_within_1ap50_valid=3.1, speed_noise=1.04,
                                 variants=[V({"name": "80% sparse (stage 02, fp32, PyTorch)", "speedup": 0.98})],
                                 reloaded=V({"name": "reloaded", "speedup": 3.52}))
    text = report.takeaway_lines({layout.EVALUATE: ev, layout.CHANNELS: ch})[0]
    assert "pruned + shared, is 9.5x smaller than the dense model's, at -0.50 [-0.90, -0.10] AP50" in text
    assert "sparse model ran at 0.98x the baseline's speed (the baseline against itself: 1.04x)" in text
    assert "ran 3.52x faster" in text
    assert "Non-inferior (the data rule out a loss of more than 1 AP50): pruned + shared. 1 of 2 are not." in text
    assert report.takeaway_lines({layout.EVALUATE: None}) == []


def test_each_notebook_says_how_long_it_took_in_the_run(tmp_path):
    run, nbs = tmp_path / "runs" / "idle9", tmp_path / "notebooks"
    run.mkdir(parents=True)
    nbs.mkdir()
    (run / "run_times.json").write_text(json.dumps({"02_prune_magnitude": 1602.0, "total": 5478.0}))
    (run / "run_info.json").write_text(json.dumps({"finished": "2026-12-07 23:20:00 UTC", "overrides": {}}))
    intro = "# 02 · Pruning\n\nText.\n\n*How long: 26.7 min in run `idle1`.*\n"
    cell = {"cell_type": "markdown", "id": "c00", "metadata": {}, "source": intro.splitlines(keepends=True)}
    for stem in ("02_prune_magnitude", "03_weight_sharing"):
        (nbs / f"{stem}.ipynb").write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4,
                                                      "nbformat_minor": 5}, indent=1) + "\n")
    changed = report.update_notebook_times(run, nbs)
    assert [p.name for p in changed] == ["02_prune_magnitude.ipynb"]  # 03 was not timed in this run
    text = "".join(json.loads((nbs / "02_prune_magnitude.ipynb").read_text())["cells"][0]["source"])
    assert text.startswith("# 02 · Pruning\n\nText.\n\n*How long: 26.7 min with the default parameters in run `idle9` "
                           "(2026-12-07, ") and "the whole `make run` took 91.3 min there" in text
    assert text.count("*How long:") == 1 and report.update_notebook_times(run, nbs) == []  # once is enough
