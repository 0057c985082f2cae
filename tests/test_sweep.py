"""wildlib.sweep: specs checked before anything runs, and a tiny sweep through a real Dask
LocalCluster (two points that share one dense control, one point that fails), resumed."""

import json

import pandas as pd
import pytest
import yaml

from wildlib import sweep
from .conftest import SMOKE


def _spec(tmp_path, groups, **extra):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "groups": groups, **extra}))
    return path


def test_spec_expands_the_grid_and_shares_dense_controls(tmp_path):
    path = _spec(tmp_path, [{"name": "t", "grid": {"TARGET_SPARSITY": [0.5, 0.8], "FT_LR": [0.01, 0.001]},
                             "seeds": [0, 1], "follow_up": {"notebooks": ["03"], "seeds": [0]}}])
    spec = sweep.load_spec(path, tmp_path / "out", base_run=str(tmp_path / "base"))
    assert len(spec.points) == 8 and len({p.id for p in spec.points}) == 8
    assert all(p.notebooks == ["02"] and p.follow_up == (["03"] if p.seed == 0 else []) for p in spec.points)
    # the grid goes to the group's notebooks only: 03's own FT_LR is not the grid's
    assert all(p.follow_params == {} and "FT_LR" in p.params for p in spec.points)
    owners = {p.id for p in spec.points if p.control_owner is None}
    assert len(owners) == 4  # one per (LR, seed): the targets share it
    for p in spec.points:
        if p.control_owner:
            owner = next(q for q in spec.points if q.id == p.control_owner)
            assert (owner.params["FT_LR"], owner.seed) == (p.params["FT_LR"], p.seed)


@pytest.mark.parametrize("groups, message", [
    ([{"name": "t", "grid": {"NO_SUCH_PARAM": [1]}}], "take no parameter"),
    ([{"name": "t", "grid": {"TARGET_SPARSITY": ["high"]}}], "takes a number"),
    ([{"name": "t", "notebooks": ["99"], "grid": {"X": [1]}}], "no notebook"),
    ([{"name": "t", "grid": {"TARGET_SPARSITY": 0.5}}], "non-empty lists"),
    ([], "non-empty list of groups"),
])
def test_bad_specs_are_refused_by_name(tmp_path, groups, message):
    with pytest.raises(sweep.SpecError, match=message) as exc:
        sweep.load_spec(_spec(tmp_path, groups), tmp_path / "out")
    assert "spec.yaml" in str(exc.value)


def test_default_layout_fits_the_machine():
    assert sweep.default_layout(2) == (1, 2)
    assert sweep.default_layout(16) == (8, 2)
    assert sweep.default_layout(1) == (1, 1)


@pytest.mark.notebooks
def test_tiny_sweep_on_a_local_cluster_resumes_and_records_a_failure(smoke_run, tmp_path):
    base = smoke_run("01")
    smoke02 = {**SMOKE["02"], "SWEEP_RATIOS": [], "SENS_RATIOS": []}
    groups = [{"name": "t", "grid": {"TARGET_SPARSITY": [0.3, 0.5]}, "seeds": [0]},
              {"name": "bad", "grid": {"AP50_FLOOR": [101.0]}, "seeds": [0]}]  # fails at its first check
    spec = sweep.load_spec(_spec(tmp_path, groups, params=smoke02), tmp_path / "out", base_run=str(base))
    records = sweep.run_sweep(spec, workers=1, threads=2, timeout=900, progress=False)
    status = {r["id"]: r["status"] for r in records}
    assert status == {"t-target_sparsity0.3-seed0": "ok", "t-target_sparsity0.5-seed0": "ok",
                      "bad-ap50_floor101-seed0": "failed"}
    # one worker runs them in the spec's order (the dependent point as soon as its control exists)
    assert [r["id"] for r in sorted(records, key=lambda r: r["started_unix"])] == [r["id"] for r in records]
    bad = next(r for r in records if r["status"] == "failed")
    assert "under the floor of 101" in bad["error"]
    out = spec.out
    # each point is an ordinary run folder; the second point reused the first one's dense control
    second = out / "t-target_sparsity0.5-seed0"
    assert (second / "01_baseline").is_symlink() and (second / "02_prune" / "metrics.json").exists()
    m2 = json.loads((second / "02_prune" / "metrics.json").read_text())
    assert m2["dense_control"]["trained_in"] == str(out / "t-target_sparsity0.3-seed0" / "02_prune")
    m1 = json.loads((out / "t-target_sparsity0.3-seed0" / "02_prune" / "metrics.json").read_text())
    assert m2["dense_control"]["AP50"] == m1["dense_control"]["AP50"]
    # the kernel ran with the point's threads and without the memory trimming Dask gives its workers
    assert m2["environment"]["env"] == {v: "2" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}

    headline = sweep.collate(spec, records)
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 3 and set(rows["status"]) == {"ok", "failed"}
    ok = rows[rows["status"] == "ok"].set_index("point")
    assert ok.loc["t-target_sparsity0.5-seed0", "sparsity"] == pytest.approx(0.5, abs=1e-3)
    for col in ("AP50", "AP50_lo", "AP50_hi", "delta_vs_control", "delta_vs_control_lo", "delta_vs_control_hi"):
        assert ok[col].notna().all(), col
    assert (ok["AP50_lo"] <= ok["AP50"]).all() and (ok["AP50"] <= ok["AP50_hi"]).all()
    assert (out / "frontier.png").exists() and "bad-ap50_floor101-seed0" in (out / "report.md").read_text()
    assert headline["points_ok"] == 2
    timing = json.loads((out / "timing.json").read_text())["runs"]
    assert [(t["points_run"], t["points_failed"], t["layout"]) for t in timing] == [(2, 1, "1 worker(s) x 2 thread(s)")]
    assert "## Wall time" in (out / "report.md").read_text()

    # resumed: the finished points are not run again, the failed one is
    before = {p: (out / p / "point.json").stat().st_mtime_ns for p in ok.index}
    again = sweep.run_sweep(spec, workers=1, threads=2, timeout=900, progress=False)
    assert {p: (out / p / "point.json").stat().st_mtime_ns for p in ok.index} == before
    assert [r["status"] for r in again] == ["ok", "ok", "failed"]
    assert [t["points_run"] for t in json.loads((out / "timing.json").read_text())["runs"]] == [2, 0]
