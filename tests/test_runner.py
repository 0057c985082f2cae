import json
import signal

import pytest

from wildlib import runner

EXPECTED = {  # the data (DATA_DIR, CLASSES, ALIASES) is given to stage 00 alone: later stages read its record
    "00_explore_data": {"RUN_DIR", "DATA_DIR", "CLASSES", "ALIASES", "CONFIG", "SYNTH_SCENE", "SYNTH_SEED", "SYNTH_SCALE",
                        "DIFFICULTY", "N_SAMPLES"},
    "01_train_baseline": {"RUN_DIR", "CONFIG", "MAX_ITER", "IMS_PER_BATCH", "LR", "LR_STEPS", "EVAL_PERIOD", "DEVICE",
                          "NUM_GPUS", "SEED", "NUM_THREADS", "TILE", "CFG_OVERRIDES", "FIT_TO_DATA", "RESUME", "PROFILE_RUNS"},
    "02_prune_magnitude": {"RUN_DIR", "AP50_FLOOR", "SWEEP_SCOPES", "SWEEP_RATIOS", "SENS_RATIOS", "RANKING",
                           "TARGET_SPARSITY", "FT_ITER", "FT_LR", "SEED", "IMS_PER_BATCH", "DEVICE", "NUM_GPUS",
                           "NUM_THREADS", "DENSE_CONTROL_DIR", "FT_SCHEDULE", "DISTILL_CLS", "DISTILL_RPN", "DISTILL_FPN", "DISTILL_T",
                           "DISTILL_NEAR_OBJECTS"},
    "03_weight_sharing": {"RUN_DIR", "BITS_SWEEP", "INIT_BITS", "CONV_BITS", "FC_BITS", "FT_ITER", "FT_LR",
                          "IMS_PER_BATCH", "DEVICE", "NUM_THREADS"},
    "04_prune_channels": {"RUN_DIR", "PROPOSALS", "COMBINED_PROPOSALS", "DETECTIONS", "INPUT_SIZES", "KNOB_DROP",
                          "SCAN_FAMILIES", "SCAN_RATIOS", "SCAN_DROP", "SCAN_MIN_SPEEDUP", "FT_ITER", "FT_LR",
                          "CALIBRATION", "COMBINED_DROP", "INT8_FORMATS", "RUNTIME_RUNS", "LATENCY_RUNS", "DEVICE",
                          "NUM_THREADS", "NI_PROPOSALS", "NI_INPUT_SIZES", "SWEEP_RUNS"},
    "05_evaluate": {"RUN_DIR", "LATENCY_RUNS", "NUM_THREADS", "N_SHOW", "SURVEY_GRID", "SURVEY_IMAGES"},
}


def test_notebooks_are_found_in_order():
    names = [p.stem for p in runner.list_notebooks()]
    assert names[: len(EXPECTED)] == list(EXPECTED)


@pytest.mark.parametrize("stem", list(EXPECTED))
def test_parameters_cell(stem):
    path = runner.notebook_dir() / f"{stem}.ipynb"
    params = runner.parameters_of(path)
    assert set(params) == EXPECTED[stem]
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), "commit without outputs"


@pytest.mark.parametrize("stem", list(EXPECTED))
def test_notebooks_only_narrate(stem):
    """Short code cells that call wildlib: no plotting, no path patching in a notebook (the
    parameters cell holds only literals, one per line, and is as long as its parameters)."""
    nb = json.loads((runner.notebook_dir() / f"{stem}.ipynb").read_text())
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code":
            assert len(src.splitlines()) <= 15 or "parameters" in cell["metadata"].get("tags", []), src[:200]
            assert "plt." not in src and "matplotlib" not in src and "sys.path" not in src, src[:200]


def test_unknown_parameter_is_refused_before_running(tmp_path):
    nb = runner.notebook_dir() / "00_explore_data.ipynb"
    with pytest.raises(runner.ParameterError, match="unknown parameter"):
        runner.run_notebook(nb, {"NOT_A_PARAM": 1}, tmp_path / "out.ipynb")
    assert not (tmp_path / "out.ipynb").exists()


def test_parameters_cell_must_be_literals(tmp_path):
    nb = json.loads((runner.notebook_dir() / "00_explore_data.ipynb").read_text())
    for c in nb["cells"]:
        if "parameters" in c["metadata"].get("tags", []):
            c["source"] = "RUN_DIR = str(1)\n"
    bad = tmp_path / "bad.ipynb"
    bad.write_text(json.dumps(nb))
    with pytest.raises(runner.ParameterError, match="not a literal"):
        runner.parameters_of(bad)


def test_paths_are_made_absolute(tmp_path):
    out = runner.absolutize({"RUN_DIR": "runs/x", "DATA_DIR": "", "MAX_ITER": 3}, base=tmp_path)
    assert out == {"RUN_DIR": str(tmp_path / "runs" / "x"), "DATA_DIR": "", "MAX_ITER": 3}


def test_a_partial_rerun_keeps_the_other_stages_times_and_commits(tmp_path):
    runner.record_run(tmp_path, {"00_a": 1.0, "01_b": 2.0}, {"commit": "aaa", "finished": "t1"})
    runner.record_run(tmp_path, {"01_b": 5.0}, {"commit": "bbb", "finished": "t2"})
    assert json.loads((tmp_path / "run_times.json").read_text()) == {"00_a": 1.0, "01_b": 5.0, "total": 6.0}
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["commit"] == "bbb" and info["notebooks"] == ["00_a", "01_b"]
    assert info["stages"]["00_a"]["commit"] == "aaa" and info["stages"]["01_b"]["commit"] == "bbb"


@pytest.mark.notebooks
def test_ctrl_c_stops_the_runner_papermill_and_the_kernel(tmp_path):
    """Two SIGINTs to the runner's process group (a terminal's Ctrl-C) used to leave papermill
    and the kernel (in a session of its own) running: now the runner stops the whole tree."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import nbformat
    import psutil

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("SLEEP = 300")
    params.metadata["tags"] = ["parameters"]
    # a cell deaf to the kernel interrupt, like training inside native code and loader workers
    nb.cells = [params, nbformat.v4.new_code_cell(
        "import os, signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('KERNEL', os.getpid(), flush=True)\ntime.sleep(SLEEP)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "sleepy.ipynb"
    nbformat.write(nb, path)
    code = ("from wildlib import runner; import signal, sys\n"  # as started from a terminal (not `cmd &`)
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "signal.signal(signal.SIGTERM, runner.as_interrupt)\n"
            f"runner.run_notebook({str(path)!r}, {{}}, {str(tmp_path / 'out.ipynb')!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as a shell gives a foreground job
    kernel = None
    deadline = time.time() + 120
    for line in proc.stdout:
        if line.startswith("KERNEL"):
            kernel = int(line.split()[1])
            break
        assert time.time() < deadline, "the kernel did not start"
    assert kernel and psutil.pid_exists(kernel)
    tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) != 0
    time.sleep(1)
    left = [p for p in tree + [kernel] if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"still running after Ctrl-C: {left}"


@pytest.fixture
def sigint_raises():
    """Ctrl-C raising KeyboardInterrupt in this process, as in a terminal, also where pytest was
    started in the background (``nohup``, ``cmd &``: SIGINT ignored from the start); put back after."""
    started = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, started)


def test_the_first_signal_raises_and_later_ones_wait_until_the_block_ends(sigint_raises):
    """What a notebook run installs: the first Ctrl-C raises, a second one (while the kernel is
    being stopped) is ignored; the handlers come back after; a signal the process was started
    ignoring stays ignored; off the main thread nothing changes."""
    import os
    import signal
    import threading
    import time

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    seen = []
    with runner._signals_to(runner._first_signal_only):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(2)
        except KeyboardInterrupt:
            seen.append({s: signal.getsignal(s) for s in before})
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C: ignored
            time.sleep(0.2)
    assert seen == [{signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN}]
    assert {s: signal.getsignal(s) for s in before} == before

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under `nohup cmd &`
    try:
        with runner._signals_to(runner._first_signal_only):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is runner._first_signal_only
    finally:
        signal.signal(signal.SIGINT, before[signal.SIGINT])

    inside = []

    def off_main():
        with runner._signals_to(runner._first_signal_only):
            inside.append({s: signal.getsignal(s) for s in before})

    t = threading.Thread(target=off_main)
    t.start()
    t.join()
    assert inside == [before]


@pytest.mark.notebooks
def test_a_notebook_run_by_papermill_itself_stops_at_a_list_given_as_text(tmp_path):
    import papermill

    nb = runner.select(runner.list_notebooks(), ["02"])[0]
    with pytest.raises(papermill.PapermillExecutionError) as err:  # what `papermill ... -p SWEEP_RATIOS '[]'` passes
        papermill.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), progress_bar=False, kernel_name="python3",
                                   parameters={"RUN_DIR": str(tmp_path / "run"), "SWEEP_RATIOS": "[]"})
    assert err.value.ename == "ParameterError"
    assert "SWEEP_RATIOS takes a list" in err.value.evalue and '-y "{SWEEP_RATIOS: []}"' in err.value.evalue
    assert not (tmp_path / "run").exists()  # stopped before the stage opened its folder
