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
                           "DISTILL_NEAR_OBJECTS", "SIDE_BY_SIDE"},
    "03_weight_sharing": {"RUN_DIR", "BITS_SWEEP", "INIT_BITS", "CONV_BITS", "FC_BITS", "FT_ITER", "FT_LR",
                          "IMS_PER_BATCH", "DEVICE", "NUM_THREADS"},
    "04_prune_channels": {"RUN_DIR", "PROPOSALS", "COMBINED_PROPOSALS", "DETECTIONS", "INPUT_SIZES", "KNOB_DROP",
                          "SCAN_FAMILIES", "SCAN_RATIOS", "SCAN_DROP", "SCAN_MIN_SPEEDUP", "FT_ITER", "FT_LR",
                          "CALIBRATION", "COMBINED_DROP", "INT8_FORMATS", "RUNTIME_RUNS", "LATENCY_RUNS", "DEVICE",
                          "NUM_THREADS", "NI_PROPOSALS", "NI_INPUT_SIZES", "SWEEP_RUNS", "QAT_ITER", "QAT_LR"},
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


def _finished(run, *stages_, at=None):
    """Fake finished stages: each a folder with a metrics.json (its time ``at``, seconds since the epoch)."""
    import os

    for stage in stages_:
        (run / stage).mkdir(parents=True, exist_ok=True)
        (run / stage / "metrics.json").write_text("{}")
        if at is not None:
            os.utime(run / stage / "metrics.json", (at, at))


def _no_kernel(monkeypatch):
    """run_notebook replaced by a recorder: what each notebook would have been given."""
    started = []
    monkeypatch.setattr(runner, "run_notebook", lambda nb, params, out, **kw: started.append((nb.name[:2], params)))
    return started


def test_a_rerun_on_a_fresh_folder_is_refused_before_a_kernel_starts(tmp_path, monkeypatch):
    """The README's example (`--only 02` into a new folder) used to start a kernel and fail a minute
    later on 01_baseline/detectron2.yaml: now it stops first, naming the stage and the fix."""
    started = _no_kernel(monkeypatch)
    with pytest.raises(runner.ParameterError) as err:
        runner.run_all(tmp_path / "x", only=["02"], overrides={"TARGET_SPARSITY": 0.9})
    msg = str(err.value)
    assert "02_prune_magnitude reads stage 00_explore" in msg and "--only 00 01" in msg and "--base-run" in msg
    assert started == []


def test_base_run_links_what_the_notebooks_read_and_nothing_else(tmp_path, monkeypatch, capsys):
    started = _no_kernel(monkeypatch)
    base, run = tmp_path / "default", tmp_path / "x"
    _finished(base, "00_explore", "01_baseline", "02_prune", "03_share", "04_prune_channels")
    runner.run_all(run, only=["02", "03"], overrides={"FT_ITER": 7}, scoped={"03": {"FT_ITER": 9}}, base_run=base)
    linked = sorted(p.name for p in run.iterdir() if p.is_symlink())
    assert linked == ["00_explore", "01_baseline"]  # 02 and 03 are made here; 04 is read by neither
    assert (run / "01_baseline").resolve() == (base / "01_baseline").resolve()
    assert [(n, p["FT_ITER"]) for n, p in started] == [("02", 7), ("03", 9)]  # -p 03:FT_ITER over -p FT_ITER
    assert "-p FT_ITER goes to notebooks 02, 03; -p NN:FT_ITER sets one of them only" in capsys.readouterr().out
    runner.run_all(run, only=["02"], base_run=base)  # again: the links are already there
    with pytest.raises(runner.ParameterError, match="01_baseline is a link to .* would write into that run"):
        runner.run_all(run, only=["01"])  # a linked stage is read, never written
    assert len(started) == 3


def test_base_run_never_replaces_a_stage_and_refuses_an_unfinished_one(tmp_path, monkeypatch):
    _no_kernel(monkeypatch)
    base, run = tmp_path / "default", tmp_path / "x"
    _finished(base, "00_explore")
    (base / "01_baseline").mkdir()  # stopped half-way: no metrics.json
    with pytest.raises(runner.ParameterError, match="its stage 01_baseline has no metrics.json"):
        runner.run_all(run, only=["02"], base_run=base)
    _finished(run, "01_baseline")  # the run's own 01 is kept, not linked over
    runner.run_all(run, only=["02"], base_run=base)
    assert not (run / "01_baseline").is_symlink() and (run / "00_explore").is_symlink()


def test_a_notebooks_own_parameter_is_checked_like_the_others(tmp_path, monkeypatch):
    _no_kernel(monkeypatch)
    _finished(tmp_path, "00_explore", "01_baseline", "02_prune")
    with pytest.raises(runner.ParameterError, match="FT_ITER takes a number"):
        runner.run_all(tmp_path, only=["03"], scoped={"03": {"FT_ITER": "200"}})
    with pytest.raises(runner.ParameterError, match="notebook 04 is not selected"):
        runner.run_all(tmp_path, only=["03"], scoped={"04": {"FT_ITER": 1}})
    with pytest.raises(SystemExit):
        runner.main(["--run-dir", str(tmp_path), "--only", "03", "-p", "3:FT_ITER", "1"])


def test_a_stage_older_than_a_stage_it_read_is_stale(tmp_path):
    _finished(tmp_path, "00_explore", "01_baseline", at=1000)
    _finished(tmp_path, "02_prune", at=2000)
    _finished(tmp_path, "03_share", "05_evaluate", at=3000)
    assert runner.stale_lines(tmp_path) == []
    _finished(tmp_path, "02_prune", at=4000)  # 02 re-run alone: 03 and 05 read the old one
    lines = runner.stale_lines(tmp_path)
    assert [ln.split()[1] for ln in lines] == ["03_share", "05_evaluate"]
    assert "before 02_prune last did" in lines[0]


def _documented_commands() -> list[tuple[str, list[str]]]:
    """Every runner command the README and the notebooks' markdown show, in order, as argv."""
    import re
    import shlex

    from wildlib.io import project_root

    texts = [("README.md", (project_root() / "README.md").read_text())]
    for nb in runner.list_notebooks():
        cells = json.loads(nb.read_text())["cells"]
        texts.append((nb.name, "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")))
    found = []
    for where, text in texts:
        for cmd in re.findall(r"python -m wildlib\.runner ([^`\n]*)", text):
            found.append((where, shlex.split(cmd)))
    return found


def test_every_documented_runner_command_works_on_a_fresh_folder(tmp_path, monkeypatch):
    """Names, types and inputs of each command the docs show, run against fresh folders with the
    kernels replaced by fakes that finish their stage: a Try-it-yourself that would clobber
    runs/default or fail on a fresh folder fails here."""
    from wildlib import layout

    commands = _documented_commands()
    assert len(commands) >= 8
    _finished(tmp_path / "runs" / "default", *layout.STAGE_FOLDERS.values())

    def fake(nb, params, out, **kw):
        _finished(runner.resolve(params["RUN_DIR"]), layout.folder_of(nb.stem))

    monkeypatch.setattr(runner, "run_notebook", fake)
    for where, argv in commands:
        argv = [str(tmp_path / v) if k in ("--run-dir", "--base-run") else v for k, v in zip([""] + argv, argv)]
        assert "runs/default" not in argv[argv.index("--run-dir") + 1], f"{where}: {argv} writes into runs/default"
        try:
            runner.main(argv)
        except SystemExit as exc:
            pytest.fail(f"{where}: python -m wildlib.runner {' '.join(argv)} -> exit {exc.code}")


@pytest.mark.parametrize("stem", list(EXPECTED))
def test_each_intro_is_short_says_how_long_and_links_the_glossary(stem):
    """Intros of at most 150 words (details where they are used), the last recorded run's time, and
    the glossary one click away."""
    nb = json.loads((runner.notebook_dir() / f"{stem}.ipynb").read_text())
    intro = "".join(nb["cells"][0]["source"])
    assert len(intro.split()) <= 150, f"{stem}: intro of {len(intro.split())} words"
    assert "](../docs/glossary.md)" in intro and "*How long:" in intro


def test_the_glossary_explains_the_jargon_the_notebooks_use():
    import re

    from wildlib.io import project_root

    text = (project_root() / "docs" / "glossary.md").read_text()
    defined = {t.lower() for t in re.findall(r"^- \*\*([^*]+)\*\*", text, flags=re.M)}
    for term in ("reference", "dense control", "paired interval", "non-inferior", "cold", "twin",
                 "qdq / qoperator", "delta", "stale", "contended", "base run", "lamp", "deployable"):
        assert any(d == term or d.startswith(term) for d in defined), f"docs/glossary.md does not define {term!r}"
