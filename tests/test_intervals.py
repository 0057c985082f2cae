"""The image-level bootstrap of COCO AP50 (wildlib.intervals) against pycocotools itself."""

import contextlib
import io
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from wildlib import intervals


def _gt(n_images=40, n_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": 320, "height": 240, "file_name": f"{i}.jpg"} for i in range(n_images)]
    anns = []
    for i in range(n_images):
        for _ in range(rng.integers(0, 5)):
            x, y, w, h = rng.uniform(0, 200), rng.uniform(0, 150), rng.uniform(8, 100), rng.uniform(8, 80)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(n_classes)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": k, "name": f"c{k}"} for k in range(n_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _detections(gt, seed=1, jitter=6.0, miss=0.2, extra=2):
    """Jittered copies of most ground-truth boxes (some class swaps) plus random false positives."""
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt.dataset["annotations"]:
        if rng.random() < miss:
            continue
        x, y, w, h = (v + rng.normal(0, jitter) for v in a["bbox"])
        cat = a["category_id"] if rng.random() > 0.1 else int(rng.integers(4))
        dets.append({"image_id": a["image_id"], "category_id": cat, "bbox": [x, y, max(w, 2), max(h, 2)],
                     "score": float(rng.uniform(0.3, 1.0))})
    for img in gt.dataset["images"]:
        for _ in range(rng.integers(0, extra + 1)):
            dets.append({"image_id": img["id"], "category_id": int(rng.integers(4)),
                         "bbox": [*rng.uniform(0, 200, 2), *rng.uniform(8, 60, 2)], "score": float(rng.uniform(0, 0.6))})
    return dets


def _pycocotools_ap50(gt, dets, max_dets=100):
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev.stats[1] * 100


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_without_resampling_it_is_pycocotools_ap50(seed):
    gt = _gt(seed=seed)
    dets = _detections(gt, seed=seed)
    assert intervals.ap50(intervals.match(gt, dets)) == pytest.approx(_pycocotools_ap50(gt, dets), abs=1e-6)


def test_max_dets_is_applied_per_image_as_coco_does():
    gt = _gt(seed=4)
    dets = _detections(gt, seed=4, extra=8)
    assert intervals.ap50(intervals.match(gt, dets, max_dets=3)) == pytest.approx(
        _pycocotools_ap50(gt, dets, max_dets=3), abs=1e-6)


def test_identical_detections_give_a_zero_width_difference():
    gt = _gt()
    m = intervals.match(gt, _detections(gt))
    d = intervals.paired(m, m, samples=200)
    assert d["delta"] == 0.0 and d["ci95"] == [0.0, 0.0]


def test_interval_contains_the_estimate_and_a_better_model_is_paired_above_zero():
    gt = _gt(n_images=80)
    worse = intervals.match(gt, _detections(gt, seed=1, jitter=10.0, miss=0.4))
    better = intervals.match(gt, _detections(gt, seed=1, jitter=2.0, miss=0.05))
    iv = intervals.interval(worse, samples=300)
    assert iv["ci95"][0] < iv["AP50"] < iv["ci95"][1]
    d = intervals.paired(better, worse, samples=300)
    assert d["delta"] > 0 and d["ci95"][0] > 0
    # pairing removes the image-to-image spread both models share: the difference is narrower
    # than the sum of both models' own intervals
    width = d["ci95"][1] - d["ci95"][0]
    own = intervals.interval(better, samples=300)["ci95"]
    assert width < (own[1] - own[0]) + (iv["ci95"][1] - iv["ci95"][0])


def test_resamples_depend_only_on_their_arguments():
    a, b = intervals.resamples(50, 10), intervals.resamples(50, 10)
    assert np.array_equal(a, b) and (a.sum(axis=1) == 50).all()
    assert not np.array_equal(a, intervals.resamples(51, 10)[:, :50])


@pytest.mark.parametrize("sample", [0, 1, 2])
def test_weights_count_an_image_as_often_as_it_is_drawn(sample):
    gt = _gt(n_images=10, seed=5)
    dets = _detections(gt, seed=5, extra=1)
    m = intervals.match(gt, dets)
    w = intervals.resamples(10, 3)[sample]
    # the same sample written out: images repeated w times, with new ids
    images, anns, dd = [], [], []
    for i, k in enumerate(w):
        for r in range(k):
            nid = len(images)
            images.append({"id": nid, "width": 320, "height": 240})
            anns += [{**a, "image_id": nid} for a in gt.dataset["annotations"] if a["image_id"] == i]
            dd += [{"image_id": nid, "category_id": d["category_id"], "bbox": d["bbox"], "score": d["score"] - 1e-6 * r}
                   for d in dets if d["image_id"] == i]
    for k, a in enumerate(anns):
        a["id"] = k + 1
    copy = COCO()
    copy.dataset = {"images": images, "annotations": anns, "categories": gt.dataset["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):
        copy.createIndex()
    assert intervals.ap50(m, w) == pytest.approx(_pycocotools_ap50(copy, dd), abs=1e-6)


def test_no_detections_score_zero_and_pairing_needs_the_same_images():
    gt = _gt(n_images=12)
    empty = intervals.match(gt, [])
    assert intervals.ap50(empty) == 0.0
    other = intervals.match(_gt(n_images=13), [])
    with pytest.raises(ValueError, match="same images"):
        intervals.paired(empty, other, samples=5)


def test_verdicts_state_their_rule():
    d = {"delta": -0.5, "ci95": [-2.9, 0.5]}
    assert intervals.verdicts(d, 1.0) == {"within_tolerance": True, "non_inferior": False}
    assert intervals.verdicts({"delta": -0.2, "ci95": [-0.9, 0.4]}, 1.0)["non_inferior"]


def test_resamples_with_more_samples_extend_the_fewer():
    # non_inferiority draws again with more samples: the first draws stay among them
    assert np.array_equal(intervals.resamples(30, 40), intervals.resamples(30, 160)[:40])


@pytest.mark.parametrize("n", [1000, 16000])
def test_quantile_mcse_matches_the_normal_theory(n):
    # the 2.5% quantile of n standard normal draws: its standard error is sqrt(q(1-q)/n) / density
    q, z = 0.025, 1.959964
    theory = math.sqrt(q * (1 - q) / n) / (math.exp(-z * z / 2) / math.sqrt(2 * math.pi))
    estimates = [intervals.quantile_mcse(np.random.default_rng(1000 + s).normal(size=n), q) for s in range(50)]
    assert np.median(estimates) == pytest.approx(theory, rel=0.25)


def test_a_paired_intervals_monte_carlo_error_is_how_far_its_ends_move_with_other_draws():
    """``ci95_mcse``, estimated from one set of draws, against what it stands for: the spread of the
    interval's ends over sets of draws with other seeds (the same models, the same images)."""
    gt = _gt(n_images=80)
    better = intervals.match(gt, _detections(gt, seed=1, jitter=2.0, miss=0.05))
    worse = intervals.match(gt, _detections(gt, seed=1, jitter=10.0, miss=0.4))
    draws = [intervals.paired(better, worse, samples=1000, seed=s) for s in range(30)]
    for end in (0, 1):
        spread = np.std([d["ci95"][end] for d in draws], ddof=1)
        assert 0.1 < spread < 1.0  # the ends do move: a few tenths of AP50 with 80 images
        assert np.median([d["ci95_mcse"][end] for d in draws]) == pytest.approx(spread, rel=0.25)


def test_a_bound_at_the_tolerance_is_drawn_again_until_clear_or_spent():
    calls = []

    def draw(bound, mcse_at_1000):
        def f(n):
            calls.append(n)  # the Monte Carlo error shrinks as 1/sqrt(samples)
            return {"delta": -0.3, "ci95": [bound, 0.4], "ci95_mcse": [mcse_at_1000 * math.sqrt(1000 / n), 0.0],
                    "samples": n}
        return f

    v = intervals.non_inferiority(draw(-0.5, 0.03), 1.0)  # far from -1: one draw
    assert calls == [1000] and v["samples"] == 1000 and v["bound_clear"] and v["non_inferior"]
    calls.clear()
    v = intervals.non_inferiority(draw(-1.05, 0.036), 1.0)  # 0.05 off: clear at 4,000 (2 x 0.018 < 0.05)
    assert calls == [1000, 4000] and v["bound_clear"] and not v["non_inferior"]
    calls.clear()
    v = intervals.non_inferiority(draw(-1.001, 0.036), 1.0, max_samples=16000)  # at the tolerance: all spent
    assert calls == [1000, 4000, 16000] and not v["bound_clear"] and v["samples"] == 16000
    calls.clear()
    assert intervals.non_inferiority(draw(-1.0, 0.0), 1.0)["bound_clear"] and calls == [1000]  # identical models
    calls.clear()
    assert intervals.non_inferiority(draw(-1.0, float("nan")), 1.0)["bound_clear"] and calls == [1000]  # no interval
    calls.clear()
    assert not intervals.non_inferiority(draw(-1.0, 0.03), 1.0, samples=2000, max_samples=500)["bound_clear"]
    assert calls == [2000]  # already past the most: one draw, the verdict marked not clear


def test_paired_records_its_samples_and_the_ends_monte_carlo_error():
    gt = _gt(n_images=60)
    a = intervals.match(gt, _detections(gt, seed=1, jitter=4.0))
    b = intervals.match(gt, _detections(gt, seed=2, jitter=6.0))
    small, large = intervals.paired(a, b, samples=250), intervals.paired(a, b, samples=4000)
    assert small["samples"] == 250 and large["samples"] == 4000
    assert all(m > 0 for m in small["ci95_mcse"])
    assert large["ci95_mcse"][0] < small["ci95_mcse"][0]  # 16x the samples: about a quarter of the error


@pytest.mark.parametrize("n_images, seed", [(40, 0), (6, 1)])
def test_the_bootstrap_in_arrays_is_ap50_sample_by_sample(n_images, seed):
    # 6 images: some samples draw no box of a class (left out, as COCO does) or none at all
    gt = _gt(n_images=n_images, seed=seed)
    m = intervals.match(gt, _detections(gt, seed=seed + 1))
    w = intervals.resamples(m.num_images, 300, seed)
    one_by_one = np.array([intervals.ap50(m, wi) for wi in w])
    many = intervals.ap50_many(m, w, chunk=64)
    assert np.isnan(many).sum() == np.isnan(one_by_one).sum()
    np.testing.assert_allclose(many, one_by_one, rtol=0, atol=1e-9)
    empty = intervals.match(gt, [])  # no detection at all: AP50 0 wherever a box was drawn
    np.testing.assert_allclose(intervals.ap50_many(empty, w[:5]), [intervals.ap50(empty, wi) for wi in w[:5]])


def test_the_two_level_seed_mean_widens_with_the_spread_between_seeds():
    gt = _gt(n_images=60, seed=7)
    good = intervals.match(gt, _detections(gt, seed=8, miss=0.05, extra=0))
    bad = intervals.match(gt, _detections(gt, seed=9, miss=0.5, extra=3))
    gap = (_pycocotools_ap50(gt, _detections(gt, seed=8, miss=0.05, extra=0))
           - _pycocotools_ap50(gt, _detections(gt, seed=9, miss=0.5, extra=3)))
    assert gap > 10
    # seeds that agree: drawing the seeds changes nothing
    same = [(good, bad)] * 3
    assert intervals.paired_mean(same, over_seeds=True)["ci95"] == intervals.paired_mean(same)["ci95"]
    # two seeds with opposite results: over images alone the mean is exactly 0, over seeds it spans both
    opposite = [(good, bad), (bad, good)]
    fixed, drawn = intervals.paired_mean(opposite), intervals.paired_mean(opposite, over_seeds=True)
    assert fixed["delta"] == drawn["delta"] == pytest.approx(0.0, abs=1e-9) and fixed["ci95"] == [0.0, 0.0]
    assert drawn["ci95"][0] < -gap / 2 and drawn["ci95"][1] > gap / 2 and drawn["over_seeds"]
