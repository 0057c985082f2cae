"""Run the numbered notebooks with papermill: parameter names checked against each notebook's
``parameters`` cell, paths made absolute, kernel ``python3``, a wall-clock timeout per notebook,
and the executed notebook kept (also when it fails) under ``RUN_DIR/notebooks/``.

    python -m wildlib.runner --run-dir runs/default               # every notebook, in order
    python -m wildlib.runner --run-dir runs/smoke --only 00 01 -p MAX_ITER 20
    python -m wildlib.runner --run-dir runs/x --base-run runs/default --only 02 -p TARGET_SPARSITY 0.9
    python -m wildlib.runner --run-dir runs/x --only 03 -p 03:FT_ITER 200   # one notebook's parameter

Before a kernel starts, every stage a selected notebook reads (:data:`wildlib.layout.STAGE_INPUTS`)
must be in the run folder or made earlier in the same call; ``--base-run`` links the missing ones in
from a finished run (as the sweep links its base run), never copying or writing them.  After the
run, a stage older than a stage it read is named stale.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil  # installed with IPython and Dask: the kernel's process tree, to stop it on Ctrl-C
import yaml

from . import layout
from .io import project_root, read_json, resolve, write_json, write_text

PATH_PARAMS_SUFFIX = "_DIR"  # parameters whose name ends so are paths, made absolute


class ParameterError(ValueError):
    pass


def notebook_dir() -> Path:
    return project_root() / "notebooks"


def list_notebooks(folder: Path | None = None) -> list[Path]:
    folder = folder or notebook_dir()
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def parameters_of(nb_path) -> dict:
    """The literals assigned in the notebook's single cell tagged ``parameters``."""
    nb_path = Path(nb_path)
    nb = json.loads(nb_path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ParameterError(f"{nb_path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    src = "".join(cells[0]["source"]) if isinstance(cells[0]["source"], list) else cells[0]["source"]
    params = {}
    for node in ast.parse(src).body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            raise ParameterError(f"{nb_path}: the parameters cell may only hold NAME = literal lines")
        try:
            params[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise ParameterError(f"{nb_path}: parameter {node.targets[0].id} is not a literal") from None
    return params


RESERVED = {"RUN_DIR": "--run-dir"}  # parameters the runner sets itself


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def check_parameters(nb_path, given: dict) -> None:
    """Names against the notebook's ``parameters`` cell, and each value's type against the
    literal there (an int may stand for a float; a bool only for a bool)."""
    known = parameters_of(nb_path)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ParameterError(f"{nb_path}: unknown parameter(s) {unknown}; this notebook takes {sorted(known)}")
    for k, v in given.items():
        want, got = _kind(known[k]), _kind(v)
        if want != got or (isinstance(known[k], int) and not isinstance(known[k], bool) and isinstance(v, float)
                           and not float(v).is_integer()):
            raise ParameterError(f"{nb_path}: parameter {k} takes a {want} like {known[k]!r}, not {v!r}")


def check_namespace(prefix: str, namespace: dict) -> None:
    """Inside notebook ``prefix``: its parameters as it runs (``namespace``: its ``globals()``),
    checked against its ``parameters`` cell as :func:`check_parameters` checks what the runner is
    given, so that a notebook run by papermill itself, by papermill's Python API or in JupyterLab
    stops in its first cells with the parameter named, not minutes later in a helper.  Papermill's
    ``-p`` passes a list as text: the error then says how to pass it (``-y``, or ``-f`` a YAML file).
    Introduced in notebook 00_explore_data (every notebook calls it)."""
    nb = select(list_notebooks(), [prefix])[0]
    known = parameters_of(nb)
    given = {k: namespace[k] for k in known if k in namespace}
    try:
        check_parameters(nb, given)
    except ParameterError as exc:
        texty = [k for k, v in given.items() if isinstance(v, str) and not isinstance(known[k], str)]
        hint = (f" (papermill's -p passes its value as text: give {texty[0]} with -y \"{{{texty[0]}: {given[texty[0]]}}}\" "
                f"or in a YAML file with -f)") if texty else ""
        raise ParameterError(f"{exc}{hint}") from None


def absolutize(params: dict, base: Path | None = None) -> dict:
    base = base or project_root()
    out = dict(params)
    for k, v in params.items():
        if k.endswith(PATH_PARAMS_SUFFIX) and isinstance(v, str) and v:
            p = Path(v).expanduser()
            out[k] = str(p if p.is_absolute() else (base / p).resolve())
    return out


def stop_tree(pid: int, grace: float = 5.0) -> list[int]:
    """Stop ``pid`` and every process it started — papermill and its kernel, which Jupyter starts in
    a session of its own, so Ctrl-C in a terminal never reaches it: SIGTERM, then SIGKILL after
    ``grace`` seconds.  Returns the pids that were running."""
    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return []
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return [p.pid for p in procs]


def _first_signal_only(signum, frame):
    """While a notebook runs: the first Ctrl-C or SIGTERM raises KeyboardInterrupt and every later
    one is ignored until the notebook's processes are stopped (two Ctrl-Cs in quick succession on a
    loaded machine could otherwise both land before the stopping starts, leaving the kernel)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _signals_to(handler):
    """Ctrl-C and SIGTERM go to ``handler`` inside the block; the previous handlers come back after
    it.  A signal this process was started ignoring (``nohup cmd &``) stays ignored.  Off the main
    thread (a Dask worker's task) no signal is delivered: nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # None: a handler set outside Python, which cannot be put back from here: left alone
    old = {sig: h for sig in (signal.SIGINT, signal.SIGTERM)
           if (h := signal.getsignal(sig)) is not None and h is not signal.SIG_IGN}
    try:
        for sig in old:
            signal.signal(sig, handler)
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def stop_tree_uninterrupted(pid: int) -> None:
    """:func:`stop_tree` with Ctrl-C and SIGTERM held back meanwhile: a second one must not cut it short."""
    with _signals_to(signal.SIG_IGN):
        stop_tree(pid)


def run_notebook(nb_path, params: dict, out_path, timeout: float = 3600, cwd=None, echo: bool = True) -> Path:
    """Execute one notebook in a fresh ``python3`` kernel; raise with the executed notebook's
    path if it fails or runs out of time."""
    nb_path, out_path = Path(nb_path), Path(out_path)
    check_parameters(nb_path, params)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    param_file = out_path.with_suffix(".params.yaml")
    write_text(param_file, yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "papermill", str(nb_path), str(out_path), "-f", str(param_file),
           "-k", "python3", "--cwd", str(cwd or nb_path.parent), "--log-output", "--no-progress-bar"]
    t0 = time.perf_counter()
    log_path = out_path.with_suffix(".log")
    tail: list[str] = []
    # papermill in a session of its own: a Ctrl-C reaches this process only, which then stops
    # papermill and the kernel in order (stop_tree) instead of leaving the kernel running
    expired = threading.Event()
    with _signals_to(_first_signal_only), open(log_path, "w") as log:
        proc = watchdog = None
        try:  # from the start: a Ctrl-C at any point after papermill exists stops it and its kernel
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    start_new_session=True)

            def expire():
                expired.set()
                stop_tree(proc.pid)

            watchdog = threading.Timer(timeout, expire)
            watchdog.daemon = True  # never keeps an interrupted process alive
            watchdog.start()
            for line in proc.stdout:  # stream cell output to the console and to the log
                log.write(line)
                if echo:
                    sys.stdout.write(line)
                tail = (tail + [line.rstrip()])[-25:]
            proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM (as KeyboardInterrupt, see main): no kernel is left behind
            if proc is not None:
                stop_tree_uninterrupted(proc.pid)
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if proc is not None:
                proc.stdout.close()
                proc.wait()
    timed_out = expired.is_set()
    if timed_out:
        raise RuntimeError(f"{nb_path.name}: timed out after {timeout:.0f} s; partial output in {out_path}")
    if proc.returncode != 0:
        raise RuntimeError(f"{nb_path.name} failed (executed notebook kept at {out_path}):\n" + "\n".join(tail))
    print(f"[runner] {nb_path.name}: {time.perf_counter() - t0:.0f} s -> {out_path}", flush=True)
    return out_path


def run_all(run_dir, only=None, overrides: dict | None = None, timeout: float = 3600, echo: bool = True,
            base_run=None, scoped: dict | None = None) -> dict:
    """Run the notebooks in order.  ``overrides`` go to every notebook that declares them, ``scoped``
    (``{"03": {"FT_ITER": 200}}``) to one notebook only, over ``overrides``; ``base_run``: link the
    stages the selected notebooks read but do not make from that run (:func:`link_inputs`);
    ``echo``: stream the cells' output to this console too (always to each notebook's log)."""
    run_dir = resolve(run_dir)  # relative to the project root, as the notebooks resolve it
    overrides, scoped = dict(overrides or {}), {k: dict(v) for k, v in (scoped or {}).items()}
    if not (math.isfinite(timeout) and 0 < timeout <= threading.TIMEOUT_MAX):
        raise ParameterError(f"the timeout must be positive and finite, not {timeout}")
    for k, flag in RESERVED.items():
        if k in overrides or any(k in v for v in scoped.values()):
            raise ParameterError(f"{k} is set by the runner: use {flag}, not -p {k}")
    notebooks = select(list_notebooks(), only)
    declared = {p: parameters_of(p) for p in notebooks}
    stray = set(overrides) - set().union(*[set(v) for v in declared.values()])
    if stray:
        raise ParameterError(f"no selected notebook takes parameter(s) {sorted(stray)}")
    params_of = {nb: {k: v for k, v in overrides.items() if k in declared[nb]} for nb in notebooks}
    for k in overrides:  # one name, several meanings (FT_ITER in 02-04): say where it went
        takers = [nb.name[:2] for nb in notebooks if k in declared[nb]]
        if len(takers) > 1:
            print(f"[runner] -p {k} goes to notebooks {', '.join(takers)}; -p NN:{k} sets one of them only", flush=True)
    by_number = {nb.name[:2]: nb for nb in notebooks}
    for number, given in scoped.items():
        if number not in by_number:
            raise ParameterError(f"-p {number}:NAME: notebook {number} is not selected (--only {' '.join(by_number)})")
        params_of[by_number[number]].update(given)
    for nb in notebooks:  # every name and value's type, before the first notebook starts
        check_parameters(nb, params_of[nb])
    if base_run is not None:
        for stage in link_inputs(run_dir, resolve(base_run), notebooks):
            print(f"[runner] {run_dir / stage} -> {resolve(base_run) / stage} (linked, read only)", flush=True)
    check_inputs(run_dir, notebooks)
    times = {}
    for nb in notebooks:
        params = dict(params_of[nb])
        if "RUN_DIR" in declared[nb]:
            params["RUN_DIR"] = str(run_dir)
        params = absolutize(params)
        t0 = time.perf_counter()
        run_notebook(nb, params, run_dir / "notebooks" / nb.name, timeout=timeout, echo=echo)
        times[nb.stem] = round(time.perf_counter() - t0, 1)
    record_run(run_dir, times, {**source_version(), "overrides": overrides, "scoped_overrides": scoped,
                                "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
    for line in stale_lines(run_dir):
        print(f"[runner] {line}", flush=True)
    return {**times, "total": round(sum(times.values()), 1)}


def _made_here(notebooks: list[Path]) -> list[str]:
    return [layout.folder_of(nb.stem) for nb in notebooks]


def link_inputs(run_dir: Path, base_run: Path, notebooks: list[Path]) -> list[str]:
    """Link into ``run_dir`` each stage the ``notebooks`` read and do not make, from ``base_run``,
    where ``run_dir`` lacks it; the stages linked now.  A base stage that is not finished is refused."""
    made = _made_here(notebooks)
    wanted = [s for s in layout.STAGE_FOLDERS.values()
              if s not in made and any(s in layout.STAGE_INPUTS[m] for m in made)]
    linked = []
    for stage in wanted:
        here = run_dir / stage
        if here.exists() and not here.is_symlink():
            continue  # the run's own stage: kept (check_inputs says if it is unfinished)
        if layout.finished_at(base_run, stage) is None:
            raise ParameterError(f"--base-run {base_run}: its stage {stage} has no {layout.METRICS_FILE} "
                                 f"(make it with python -m wildlib.runner --run-dir {base_run} --only {stage[:2]})")
        if layout.link_stage(run_dir, base_run, stage):
            linked.append(stage)
    return linked


def check_inputs(run_dir: Path, notebooks: list[Path]) -> None:
    """Refuse, before any kernel starts, a run whose notebooks read a stage that is neither finished
    in ``run_dir`` nor made earlier in this call (the error names the stage and the command that
    makes it), or would write a stage that is a link into another run (``--base-run``'s)."""
    made = []
    for nb in notebooks:
        folder = layout.folder_of(nb.stem)
        if (run_dir / folder).is_symlink():  # a base run's stage: running it here would write into that run
            raise ParameterError(f"{run_dir / folder} is a link to {(run_dir / folder).resolve()} (linked from a base "
                                 f"run): {nb.stem} would write into that run; remove the link to run it here")
        missing = layout.missing_inputs(run_dir, folder, made)
        if missing:
            first = missing[0]
            raise ParameterError(
                f"{nb.stem} reads stage {first}, and {run_dir / first} has no {layout.METRICS_FILE}: make it with "
                f"python -m wildlib.runner --run-dir {run_dir} --only {' '.join(s[:2] for s in missing)}, or link "
                f"it from a finished run with --base-run RUN (e.g. --base-run runs/default)")
        made.append(folder)


def stale_lines(run_dir) -> list[str]:
    """One sentence per stage of the run that finished before a stage it read finished again."""
    return [f"stage {stage} is stale: it finished before {', '.join(newer)} last did; re-run it "
            f"(--only {stage[:2]}) or read its results as those of the earlier {', '.join(newer)}"
            for stage, newer in layout.stale_stages(resolve(run_dir)).items()]


def record_run(run_dir, times: dict, info: dict) -> None:
    """``run_times.json`` and ``run_info.json`` of a run folder, merged with what earlier runs of
    other notebooks recorded there: a re-run of 04 and 05 keeps 00-03's times, and each stage's
    commit is kept beside it (``stages``), so a report can say which code produced which stage."""
    run_dir = Path(run_dir)
    old_times = read_json(run_dir / "run_times.json") if (run_dir / "run_times.json").exists() else {}
    old_info = read_json(run_dir / "run_info.json") if (run_dir / "run_info.json").exists() else {}
    merged = {k: v for k, v in old_times.items() if k != "total"}
    merged.update(times)
    merged = dict(sorted(merged.items()))
    merged["total"] = round(sum(merged.values()), 1)
    stage_info = dict(old_info.get("stages", {}))
    stage_info.update({k: {"commit": info.get("commit"), "dirty": info.get("dirty"), "finished": info.get("finished")}
                       for k in times})
    write_json(run_dir / "run_times.json", merged)
    write_json(run_dir / "run_info.json", {**info, "notebooks": list(stage_info), "stages": stage_info})


def source_version() -> dict:
    """The commit the project's files come from, and whether they differ from it."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None}


def select(notebooks: list[Path], only) -> list[Path]:
    """The notebooks whose number is in ``only`` (all when ``only`` is None); every entry of
    ``only`` must name one."""
    if only is None:
        return notebooks
    by_number = {p.name[:2]: p for p in notebooks}
    if not only:
        raise ParameterError(f"--only needs notebook numbers, e.g. --only 00 01 (known: {sorted(by_number)})")
    wrong = [o for o in only if o not in by_number]
    if wrong:
        raise ParameterError(f"--only {' '.join(wrong)}: no such notebook (known: {sorted(by_number)})")
    return [p for p in notebooks if p.name[:2] in only]


def _timeout_default() -> float | None:
    text = os.environ.get("WILDLIB_NB_TIMEOUT")
    if text is None:
        return 3600.0
    try:
        return float(text)
    except ValueError:
        return None  # reported by main(), not at import or --help


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run the numbered notebooks with papermill.")
    ap.add_argument("--run-dir", default="runs/default")
    ap.add_argument("--only", nargs="*", help="notebook number prefixes, e.g. 00 01")
    ap.add_argument("--base-run", help="a finished run whose stages the selected notebooks read are linked in "
                                      "where this run lacks them (read, never written)")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a notebook parameter, for every selected notebook that takes it; NN:NAME for notebook NN only")
    ap.add_argument("--timeout", type=float, default=_timeout_default(),
                    help="seconds per notebook (default $WILDLIB_NB_TIMEOUT or 3600)")
    a = ap.parse_args(argv)
    if a.timeout is None:
        ap.error(f"WILDLIB_NB_TIMEOUT={os.environ['WILDLIB_NB_TIMEOUT']!r} is not a number of seconds")
    params, scoped = {}, {}
    for k, v in a.param:
        number, _, name = k.rpartition(":")
        if number and not (len(number) == 2 and number.isdigit() and name):
            ap.error(f"-p {k}: a notebook's own parameter is NN:NAME, e.g. -p 03:FT_ITER 200")
        target = scoped.setdefault(number, {}) if number else params
        if name in target:
            ap.error(f"-p {k} given twice")
        target[name] = _value(v)
    signal.signal(signal.SIGTERM, as_interrupt)  # a SIGTERM stops the kernel too, like Ctrl-C
    try:
        times = run_all(a.run_dir, a.only, params, a.timeout, base_run=a.base_run, scoped=scoped)
    except ParameterError as exc:
        ap.error(str(exc))
    except KeyboardInterrupt:
        print(f"[runner] interrupted: the running notebook and its kernel were stopped; {unfinished_note(a.run_dir)}",
              file=sys.stderr, flush=True)
        sys.exit(130)
    print(json.dumps(times))


def as_interrupt(signum, frame):
    """A signal handler: SIGTERM stops a run the way Ctrl-C does (kernels included)."""
    raise KeyboardInterrupt(f"signal {signum}")


def unfinished_note(run_dir) -> str:
    """Which stages of a run have no ``metrics.json`` (a stopped stage leaves none), and the command
    that finishes them."""
    run = resolve(run_dir)
    missing = [stem for stem, folder in layout.STAGE_FOLDERS.items() if layout.finished_at(run, folder) is None]
    if not missing:
        return "every stage has its results"
    return (f"stages without results: {missing}; resume with python -m wildlib.runner --run-dir {run_dir} "
            f"--only {' '.join(m[:2] for m in missing)}")


if __name__ == "__main__":
    main()
