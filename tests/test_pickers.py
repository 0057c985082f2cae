"""The "best within the tolerance" pickers, on tables with known answers (the smoke runs score
AP50 near 0, where every picker passes everything)."""

import pandas as pd
import pytest

from wildlib import channels, evaluate, intervals, prune, speed


def test_one_shot_pick_takes_the_sparsest_within_and_the_mildest_otherwise():
    rows = [{"scope": "all", "ratio": 0.3, "ranking": "l1", "sparsity_all": 0.3, "AP50": 90.0},
            {"scope": "all", "ratio": 0.5, "ranking": "lamp", "sparsity_all": 0.5, "AP50": 89.2},
            {"scope": "all", "ratio": 0.8, "ranking": "l1", "sparsity_all": 0.8, "AP50": 88.9},  # 1.1 below
            {"scope": "backbone", "ratio": 0.9, "ranking": "l1", "sparsity_all": 0.4, "AP50": 20.0}]
    assert prune.one_shot_pick(rows, 90.0) == {"scope": "all", "ratio": 0.5, "ranking": "lamp"}
    assert prune.one_shot_pick(rows, 90.0, tolerance=1.2) == {"scope": "all", "ratio": 0.8, "ranking": "l1"}
    assert prune.one_shot_pick(rows, 99.0) == {"scope": "all", "ratio": 0.3, "ranking": "l1"}  # none within
    assert prune.one_shot_pick([], 90.0) is None  # the sweep was skipped


def test_ratios_from_scan_takes_each_familys_largest_ratio_within():
    scan = pd.DataFrame([{"family": "m2", "ratio": 0.25, "AP50": 89.5}, {"family": "m2", "ratio": 0.5, "AP50": 88.1},
                         {"family": "fpn", "ratio": 0.25, "AP50": 86.0}, {"family": "fpn", "ratio": 0.5, "AP50": 85.0},
                         {"family": "rpn", "ratio": 0.25, "AP50": 90.0}, {"family": "rpn", "ratio": 0.5, "AP50": 88.0}])
    assert channels.ratios_from_scan(scan, 90.0, 2.0) == {"m2": 0.5, "fpn": 0.0, "rpn": 0.5}
    assert channels.ratios_from_scan(scan, 90.0, 1.0) == {"m2": 0.25, "fpn": 0.0, "rpn": 0.25}
    # latency-aware: a ratio that buys no time is not worth its accuracy
    timed = scan.assign(speedup=[1.01, 1.10, 1.2, 1.3, 1.00, 1.01])
    assert channels.ratios_from_scan(timed, 90.0, 2.0, min_speedup=1.02) == {"m2": 0.5, "fpn": 0.0, "rpn": 0.0}
    assert channels.ratios_from_scan(timed, 90.0, 1.0, min_speedup=1.02) == {"m2": 0.0, "fpn": 0.0, "rpn": 0.0}
    assert channels.ratios_from_scan(scan, 90.0, 2.0, min_speedup=1.02) == {"m2": 0.5, "fpn": 0.0, "rpn": 0.5}


def test_ratios_from_sensitivity_keeps_the_largest_ratio_within():
    scan = pd.DataFrame([{"group": "fpn", "ratio": 0.5, "AP50": 89.5}, {"group": "fpn", "ratio": 0.9, "AP50": 80.0},
                         {"group": "rpn", "ratio": 0.5, "AP50": 70.0}])
    assert prune.ratios_from_sensitivity(scan, 90.0, tolerance=1.0) == {"fpn": 0.5, "rpn": 0.0}


def test_fastest_within_takes_the_lowest_latency_that_keeps_ap50():
    sweep = pd.DataFrame([
        {"pre_nms": 500, "post_nms": 300, "detections": 100, "min_size": 240, "AP50": 90.0, "latency_median_ms": 30.0},
        {"pre_nms": 100, "post_nms": 100, "detections": 100, "min_size": 240, "AP50": 89.1, "latency_median_ms": 20.0},
        {"pre_nms": 100, "post_nms": 50, "detections": 50, "min_size": 208, "AP50": 88.0, "latency_median_ms": 12.0}])
    assert speed.fastest_within(sweep, 90.0, 1.0) == {"pre_nms": 100, "post_nms": 100, "detections": 100, "min_size": 240}
    assert speed.fastest_within(sweep, 90.0, 2.5)["min_size"] == 208
    assert speed.fastest_within(sweep, 95.0, 1.0) is None


def test_best_within_uses_the_named_verdict():
    rows = [{"name": "a", "speedup": 3.0, "within_1ap50": True, "non_inferior": False},
            {"name": "b", "speedup": 2.0, "within_1ap50": True, "non_inferior": True},
            {"name": "c", "speedup": 5.0, "within_1ap50": False, "non_inferior": False}]
    assert evaluate.best_within(rows, "speedup", verdict="within_1ap50")["name"] == "a"
    assert evaluate.best_within(rows, "speedup", verdict="non_inferior")["name"] == "b"
    assert evaluate.best_within(rows[2:], "speedup", verdict="within_1ap50") is None


def test_the_verdict_is_against_the_reference_and_the_baseline_only_beside_it():
    from tests.test_intervals import _detections, _gt

    gt = _gt()
    good = intervals.match(gt, _detections(gt, jitter=2.0, miss=0.05))
    bad = intervals.match(gt, _detections(gt, jitter=10.0, miss=0.4))
    on = lambda split, m: evaluate.Scored(split, {"AP50": intervals.ap50(m)}, m)  # noqa: E731
    # the variant is the baseline's twin: nothing lost against it, a real drop against the reference
    v = evaluate.against(on("test", bad), on("test", good), baseline=on("test", bad))
    assert v["baseline_delta_ap50"] == 0.0 and v["baseline_delta_ap50_ci95"] == [0.0, 0.0]
    assert v["delta_ap50"] < -1.0 and v["non_inferior"] is False and v["reference_ap50"] == intervals.ap50(good)
    # the reference's twin passes, whatever the baseline scored
    w = evaluate.against(on("test", good), on("test", good), baseline=on("test", bad))
    assert w["delta_ap50"] == 0.0 and w["non_inferior"] is True and w["baseline_delta_ap50"] > 1.0
    assert "baseline_delta_ap50" not in evaluate.against(on("test", good), on("test", good))
    with pytest.raises(ValueError, match="baseline on valid"):
        evaluate.against(on("test", good), on("test", good), baseline=on("valid", bad))
    assert evaluate.REFERENCE == "dense control"  # fixed, never chosen on valid


def test_best_within_never_picks_a_nan():
    rows = [{"name": "a", "AP50": 95.0, "speedup": float("nan")}, {"name": "b", "AP50": 95.0, "speedup": 1.5}]
    assert evaluate.best_within(rows, "speedup", 95.0)["name"] == "b"
    assert evaluate.best_within(rows, "speedup", 95.0, lowest=True)["name"] == "b"


def test_speed_noise_is_the_baselines_largest_speedup_against_itself():
    assert evaluate.speed_noise({"speedup": 0.96, "speedup_cold": 1.03}) == pytest.approx(1 / 0.96)
    assert evaluate.speed_noise({"speedup": 1.0}) == 1.0 and evaluate.speed_noise({}) == 1.0


def test_a_speedup_within_the_noise_is_never_the_fastest():
    """The smoke run once called an unstructured-sparse model (the dense model's compute) the
    fastest variant at 1.04x: with the baseline against itself at 1.05x, that is noise."""
    rows = [{"name": "80% sparse", "AP50": 95.0, "speedup": 1.04, "within_1ap50": True},
            {"name": "int8", "AP50": 94.5, "speedup": 2.5, "within_1ap50": True}]
    assert evaluate.best_within(rows, "speedup", verdict="within_1ap50", above=1.05)["name"] == "int8"
    assert evaluate.best_within(rows[:1], "speedup", verdict="within_1ap50", above=1.05) is None
    assert evaluate.best_within(rows[:1], "speedup", verdict="within_1ap50")["name"] == "80% sparse"
