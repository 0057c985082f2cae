"""wildlib.sweep: specs checked before anything runs, a tiny sweep through a real Dask
LocalCluster (two points that share one dense control, one point that fails), resumed, and a
sweep stopped by Ctrl-C."""

import json

import pandas as pd
import pytest
import yaml

from wildlib import runner, sweep
from .conftest import SMOKE, TEST_THREADS, threaded

# The tiny sweep's base run: the smoke data's 00, and a 01 of 4 iterations (no profile, no periodic
# evaluation; a score threshold of 0.4 keeps the untrained box head's thousands of boxes per image
# out of NMS).  The sweep checks orchestration (workers, shared controls, failures, resuming), not
# accuracy, so it does not wait for the notebooks' smoke chain: `make test` runs it in the other
# lane (tools/test_lanes.py).
QUICK_01 = {"MAX_ITER": 4, "IMS_PER_BATCH": 2, "EVAL_PERIOD": 0, "PROFILE_RUNS": 0,
            "CFG_OVERRIDES": {"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.4}}
QUICK_02 = {**SMOKE["02"], "SWEEP_RATIOS": [], "SENS_RATIOS": [], "FT_ITER": 4, "AP50_FLOOR": 0.0,
            "DISTILL_CLS": 0.0, "DISTILL_RPN": 0.0}


@pytest.fixture(scope="module")
def quick_base(tmp_path_factory, smoke_data):
    run_dir = tmp_path_factory.mktemp("quick_base")
    runner.run_all(run_dir, only=["00"], overrides=threaded("00", {**SMOKE["00"], "DATA_DIR": str(smoke_data)}))
    runner.run_all(run_dir, only=["01"], overrides=threaded("01", QUICK_01))
    return run_dir


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
    # distillation does not change the control; the fine-tunings' LR schedule does
    path = _spec(tmp_path, [{"name": "d", "grid": {"DISTILL_CLS": [0.0, 1.0], "FT_SCHEDULE": ["step", "rewind"]},
                             "seeds": [0]}])
    spec = sweep.load_spec(path, tmp_path / "out2", base_run=str(tmp_path / "base"))
    owners = {p.params["FT_SCHEDULE"]: p.id for p in spec.points if p.control_owner is None}
    assert len(spec.points) == 4 and set(owners) == {"step", "rewind"}
    assert all(p.control_owner in (None, owners[p.params["FT_SCHEDULE"]]) for p in spec.points)


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


def test_the_seed_mean_verdict_draws_the_seeds_too():
    from wildlib import intervals

    from .test_intervals import _detections, _gt

    gt = _gt(n_images=60, seed=7)
    good = intervals.match(gt, _detections(gt, seed=8, miss=0.05, extra=0))
    bad = intervals.match(gt, _detections(gt, seed=9, miss=0.5, extra=3))
    # seed 1 loses nothing, seed 2 loses a lot: over images alone the mean drop looks sure, over
    # seeds it is as unsure as two seeds that disagree are
    v = sweep.seed_verdict([(good, good), (bad, good)], tolerance=1.0)
    assert v["ci95_images"][1] < 0 and v["ci95"][0] < v["ci95_images"][0] and v["ci95"][1] >= 0.0
    assert v["delta"] < -1.0 and not v["within_tolerance"] and not v["non_inferior"]
    agree = sweep.seed_verdict([(good, good)] * 3, tolerance=1.0)
    assert agree["ci95"] == agree["ci95_images"] == [0.0, 0.0] and agree["non_inferior"]


def test_default_layout_fits_the_machine():
    assert sweep.default_layout(2) == (1, 2)
    assert sweep.default_layout(16) == (8, 2)
    assert sweep.default_layout(1) == (1, 1)


@pytest.mark.notebooks
def test_tiny_sweep_on_a_local_cluster_resumes_and_records_a_failure(quick_base, tmp_path):
    base = quick_base
    smoke02 = QUICK_02
    groups = [{"name": "t", "grid": {"TARGET_SPARSITY": [0.3, 0.5]}, "seeds": [0]},
              {"name": "bad", "grid": {"AP50_FLOOR": [101.0]}, "seeds": [0]}]  # fails at its first check
    spec = sweep.load_spec(_spec(tmp_path, groups, params=smoke02), tmp_path / "out", base_run=str(base))
    records = sweep.run_sweep(spec, workers=1, threads=TEST_THREADS, timeout=900, progress=False)
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
    assert m2["environment"]["env"] == {v: str(TEST_THREADS) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}

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
    assert [(t["points_run"], t["points_failed"], t["layout"]) for t in timing] == [(2, 1, f"1 worker(s) x {TEST_THREADS} thread(s)")]
    assert "## Wall time" in (out / "report.md").read_text()

    # resumed: the finished points are not run again, the failed one is
    before = {p: (out / p / "point.json").stat().st_mtime_ns for p in ok.index}
    again = sweep.run_sweep(spec, workers=1, threads=TEST_THREADS, timeout=900, progress=False)
    assert {p: (out / p / "point.json").stat().st_mtime_ns for p in ok.index} == before
    assert [r["status"] for r in again] == ["ok", "ok", "failed"]
    assert [t["points_run"] for t in json.loads((out / "timing.json").read_text())["runs"]] == [2, 0]


FAKE_POINTS = '''
"""What each point of the Ctrl-C test runs on the Dask worker instead of the notebooks: the first
point finishes at once (with the results a dense control leaves); any other starts a stand-in
papermill in a session of its own, as runner.run_notebook does, writes its pid and waits."""
import subprocess
import sys
import time
from pathlib import Path

from wildlib import runner, sweep


def run_all(folder, only=(), overrides=None, timeout=None, echo=True):
    folder = Path(folder)
    if folder.name.startswith("t-target_sparsity0.3-"):
        (folder / "02_prune").mkdir()
        (folder / "02_prune" / "metrics.json").write_text("{}")
        return
    kernel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    (folder / "kernel.pid").write_text(str(kernel.pid))
    time.sleep(300)


def run_point(*args):
    runner.run_all, sweep.STAGGER_S = run_all, 0.0
    return sweep.run_point(*args)
'''


@pytest.mark.slow  # a LocalCluster started and stopped: about 25 s
def test_ctrl_c_stops_the_sweep_its_worker_and_the_points_kernels_and_keeps_what_finished(tmp_path):
    """Ctrl-C during a sweep on a LocalCluster (the points' notebooks replaced by the stand-ins
    above): exit status 130 with a message, the nanny, its worker and the running point's papermill
    (in a session of its own) stopped, the finished point kept as done, the unfinished ones not,
    and the invocation recorded in timing.json.  SIGINT goes to the sweep's process alone: whatever
    stops, the sweep stopped it (a terminal's would reach the workers too)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from wildlib.modeling import sha256_file

    base = tmp_path / "base"
    for stage in sweep.SHARED_STAGES:
        (base / stage).mkdir(parents=True)
        (base / stage / "metrics.json").write_text("{}")
    (base / "01_baseline" / "model_final.pth").write_bytes(b"a baseline")
    path = _spec(tmp_path, [{"name": "t", "grid": {"TARGET_SPARSITY": [0.3, 0.5, 0.7]}, "seeds": [0]}])
    (tmp_path / "fake_points.py").write_text(FAKE_POINTS)
    code = ("import signal, sys\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as started from a terminal
            "import fake_points\nfrom wildlib import sweep\n"
            "sweep.run_point = fake_points.run_point\n"
            f"sys.exit(sweep.main([{str(path)!r}, '--out-root', {str(tmp_path / 'out')!r}, '--base-run', {str(base)!r},"
            " '--workers', '1', '--threads', '1']))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=err, env=env,
                                start_new_session=True)  # its own process group, as a shell gives a foreground job
    folder = tmp_path / "out" / "tiny"
    pid_file = folder / "t-target_sparsity0.5-seed0" / "kernel.pid"
    deadline = time.time() + 120
    # Ctrl-C once the first point is recorded as done (the progress bar at 1/3) and the second runs
    while not (pid_file.exists() and pid_file.read_text() and "| 1/3 " in (tmp_path / "stderr").read_text()):
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "stderr").read_text()[-3000:]
        time.sleep(0.2)
    kernel = int(pid_file.read_text())
    tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert kernel in tree and len(tree) >= 3  # the nanny, its worker, the point's papermill
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    time.sleep(1)
    left = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"still running after Ctrl-C: {left}"
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert ("[sweep] interrupted: stopping 2 unfinished point(s): "
            "['t-target_sparsity0.5-seed0', 't-target_sparsity0.7-seed0']") in stdout
    assert "[sweep] stopped; finished points are kept and skipped on the next run" in stderr
    # the finished point counts as done on the next run; the stopped and the unstarted ones do not
    spec = sweep.load_spec(path, tmp_path / "out", base_run=str(base))
    for p in spec.points:
        p.base = sha256_file(base / "01_baseline" / "model_final.pth")[:16]
    status = [sweep.point_status(folder / p.id, p) for p in spec.points]
    assert status[0] == "ok" and "ok" not in status[1:], status  # stopped: no record, or "failed"
    timing = json.loads((folder / "timing.json").read_text())["runs"]
    assert [(t["points_run"], t["points_failed"], t["points_left"]) for t in timing] == [(1, 0, 2)]
