"""Runs know when they were disturbed (wildlib.contention): the counters, the rule, and the
report's flag raised by a training that shared its CPU with other processes."""
import os
import signal
import subprocess
import sys
import time

import pytest
from detectron2.engine import HookBase

from wildlib import contention, records, report, stages

IDLE = {"seconds": 600.0, "cpu_count": 2, "threads": 2, "load1_mean": 2.1, "load1_max": 2.4,
        "steal_share": 0.0, "others_share": 0.02, "own_share": 0.9}


def test_summarize_splits_the_cores_time_into_steal_others_and_own():
    cpu0 = dict.fromkeys(("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"), 0)
    # 1000 ticks of two cores: 600 busy (of which this process 200), 300 idle, 100 stolen
    cpu1 = {**cpu0, "user": 500, "system": 100, "idle": 300, "steal": 100}
    s = contention.summarize(10.0, cpu0, cpu1, 50, 250, [1.0, 3.0], threads=2)
    assert s["steal_share"] == 0.1 and s["own_share"] == 0.2 and s["others_share"] == 0.4
    assert s["load1_mean"] == 2.0 and s["load1_max"] == 3.0 and s["threads"] == 2
    assert contention.summarize(1.0, None, cpu1, 0, 0, []) is None  # no /proc: nothing claimed


def test_the_rule_names_each_disturbance_and_passes_an_idle_stage():
    assert contention.reasons(IDLE) == [] and contention.reasons(None) == []
    slow = contention.training_entry("dense_control", 1.40, 0.70, 1.5, IDLE)
    assert slow["step_ratio"] == 2.0
    found = contention.reasons({**IDLE, "trainings": [slow]})
    assert len(found) == 1 and "dense_control" in found[0] and "2.00x" in found[0]
    ok = contention.training_entry("train", 0.80, 0.70, 0.9, IDLE)  # 1.14x: within the limit
    assert contention.reasons({**IDLE, "trainings": [ok]}) == []
    assert "load average 3.10" in contention.reasons({**IDLE, "load1_mean": 3.1})[0]  # 2 threads + 0.5 slack
    assert "other processes used 40%" in contention.reasons({**IDLE, "others_share": 0.4})[0]
    assert "steal 9%" in contention.reasons({**IDLE, "steal_share": 0.09})[0]
    # a training's own watch counts too
    busy_training = contention.training_entry("train", 0.7, 0.7, 0.8, {**IDLE, "others_share": 0.5})
    assert contention.reasons({**IDLE, "trainings": [busy_training]})


def _spin(seconds: float) -> list[int]:
    """Two busy processes that are not this process's children (their CPU time must never be
    counted as ours), stopping by themselves after ``seconds``; their pids."""
    code = f"import time; t = time.time() + {seconds}\nwhile time.time() < t: pass"
    out = subprocess.run(["sh", "-c", " ".join(f"{sys.executable} -c '{code}' >/dev/null 2>&1 & echo $!;"
                                               for _ in range(2))], capture_output=True, text=True, check=True)
    return [int(p) for p in out.stdout.split()]


def _stop(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.alone
@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the counters are Linux's /proc")
def test_a_watch_sees_other_processes_using_the_cores():
    watch = contention.Watch(threads=1, period=0.5).start()
    pids = _spin(30)
    try:
        time.sleep(3.0)
        summary = watch.stop()
    finally:
        _stop(pids)
    # two spinning processes on this machine's cores: most of its CPU went to them, none to us
    assert summary["others_share"] > min(0.5, 1.5 / os.cpu_count()) and summary["own_share"] < 0.1
    assert any("other processes" in r for r in contention.reasons(summary))


@pytest.mark.alone
@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the counters are Linux's /proc")
def test_a_watch_counts_this_process_busy_as_its_own():
    with contention.Watch(threads=1, period=0.5) as watch:
        t = time.perf_counter() + 2.0
        while time.perf_counter() < t:  # one core busy in this process for 2 s
            pass
    assert watch.summary["own_share"] > 0.6 / os.cpu_count() and watch.summary["seconds"] >= 2.0


class LoadWhileTraining(HookBase):
    """A hook that keeps two busy processes running beside the training, and only while it trains:
    the probe right after training then runs on an idle machine."""
    def before_train(self):
        self.pids = _spin(600)

    def after_train(self):
        _stop(self.pids)


@pytest.mark.slow
@pytest.mark.alone
@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the counters are Linux's /proc")
def test_the_report_flags_a_stage_whose_training_shared_the_cpu(smoke_data, tmp_path):
    from wildlib import config, data, train

    data.register(smoke_data, coco_dir=tmp_path / "coco")
    over = stages.baseline_overrides(tmp_path / "01_baseline", device="cpu", max_iter=12, ims_per_batch=2, lr=0.001,
                                     eval_period=0, seed=0)
    cfg = config.get_config("mobilenet_fpn_cpu", {**over, "MODEL.MOBILENET.PRETRAINED": "none"})
    folder = stages.begin_stage(tmp_path, stages.BASELINE, threads=2)

    result = train.train(cfg, hooks=[LoadWhileTraining])
    machine = contention.end(folder)
    entry = machine["trainings"][-1]
    assert entry["name"] == "01_baseline/train" and entry["step_s"] == result["step_s"] and entry["probe_step_s"] > 0
    assert machine["contended"] and entry["step_ratio"] > contention.STEP_RATIO_LIMIT, machine
    assert any("other processes" in r for r in contention.reasons(entry["machine"]))
    # the report: the stage is contended, and says why
    m = {stages.BASELINE: records.BaselineMetrics(bbox={"AP50": 1.0}, machine=machine,
                                                  train=records.TrainingRun(iterations=12, ims_per_batch=2, seconds=1.0))}
    lines = report.machine_lines(m)
    assert "**Contended**" in lines[0] and "training 01_baseline/train:" in lines[0]
    assert report.contended_stages(m) == {stages.BASELINE: machine["reasons"]}


def test_a_stage_run_again_in_its_folder_is_counted_and_reported(tmp_path):
    folder = stages.begin_stage(tmp_path, stages.EXPLORE)
    record = records.ExploreMetrics(images={"train": 1}, instances={"train": 1}, classes=["zebra"])
    stages.save_stage(folder, {}, record)
    assert stages.metrics_of(tmp_path, stages.EXPLORE).reruns == 0
    for expected in (1, 2):  # each run after a finished one counts
        stages.save_stage(stages.begin_stage(tmp_path, stages.EXPLORE), {}, record)
        assert stages.metrics_of(tmp_path, stages.EXPLORE).reruns == expected
    m = {stages.EXPLORE: stages.metrics_of(tmp_path, stages.EXPLORE)}
    assert report.rerun_lines(m)[0] == "Re-run after earlier results were seen: 00 (2 earlier finished runs)."
    assert report.rerun_lines({stages.EXPLORE: record}) == []
