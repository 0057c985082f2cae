"""`make test`: the whole suite as two lanes of pytest side by side, one core each; the tests that
measure the machine's load start in the first lane's place when it ends.

    python tools/test_lanes.py [PYTEST_ARGS...]

Why lanes and not pytest-xdist: on 2 cores, two 1-thread processes train about 1.55x the steps per
second of one 2-thread process (``wildlib.train.train_together``: 1.55x, measured), and most of the suite's time is notebooks that train.
The notebook smoke chain (00 -> 05) shares one session's fixtures, so it must stay in one process;
a lane per process keeps that, with no worker protocol in between (two xdist workers, tried in session 2 of issue 32, died with "cannot send").
Each lane runs with ``WILDLIB_TEST_THREADS=1`` (the notebooks' ``NUM_THREADS``, tests/conftest.py)
and ``OMP_NUM_THREADS=1``.  Tests marked ``alone`` load the CPU themselves (busy processes beside a
training) and compare CPU shares: they never run beside each other, and their assertions hold with
one more busy process on the machine (each asks for others' share > 0.5, or its own share above a
third, or more than the others', where a lane beside them adds at most one core of "others"), so they run as a
third step, at the machine's threads, in the slot the first finished lane frees (in session 5 of
issue 32 they ran after both lanes: 89 s with one core idle for the 78 s before).  Each step's log is written to
``--logs`` (default ``runs/test-lanes``) and its tail printed; a failed step's whole log is printed.
Exit status: 0 only when every step passed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the smoke chain's session (smoke_run); the library lane has everything else, the sweep tests with
# their own quick base run among them, so that the two lanes take about as long (about 480 s each)
CHAIN = ["tests/test_notebooks.py"]
LANES = {  # name -> (pytest selection, PyTorch threads)
    "chain": ([*CHAIN, "-m", "not alone"], 1),
    "library": (["tests", *[f"--ignore={p}" for p in CHAIN], "-m", "not alone"], 1),
}
ALONE = (["tests", "-m", "alone"], 0)  # 0: the notebooks' and PyTorch's own default
TAIL = 25  # lines of a passing lane's log printed


def lane_env(threads: int) -> dict:
    env = dict(os.environ)
    if threads:
        env.update({"WILDLIB_TEST_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
                    "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)})
    return env


def start(name: str, selection: list, threads: int, extra: list, logs: Path, tmp: Path) -> tuple:
    log = open(logs / f"{name}.log", "w")
    cmd = [sys.executable, "-m", "pytest", *selection, f"--basetemp={tmp / name}", "-p", "no:cacheprovider",
           "--durations=10", *extra]
    print(f"[{name}] {' '.join(cmd[1:])}  (threads {threads or 'default'}; log {log.name})", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=lane_env(threads), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own group: Ctrl-C here stops the lane's whole tree
    return proc, log, time.perf_counter()


def finish(name: str, proc, log, t0: float) -> int:
    rc = proc.wait()
    log.close()
    lines = Path(log.name).read_text(errors="replace").splitlines()
    print(f"\n[{name}] exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
    print("\n".join(lines if rc not in (0, 5) else lines[-TAIL:]), flush=True)
    return 0 if rc == 5 else rc  # 5: nothing selected (an empty lane under a -k filter)


def interrupt(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGINT)  # pytest stops, and the runner stops its kernels
            except ProcessLookupError:
                pass
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--logs", default=str(ROOT / "runs" / "test-lanes"))
    a, extra = ap.parse_known_args(argv)
    logs = Path(a.logs)
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    steps = [(name, selection, threads) for name, (selection, threads) in LANES.items()] + [("alone", *ALONE)]
    with tempfile.TemporaryDirectory(prefix="wildlib-tests-") as tmp:
        running, codes = {}, {}
        try:
            while steps or running:
                while steps and len(running) < len(LANES):  # one slot per lane (a core each)
                    name, selection, threads = steps.pop(0)
                    running[name] = start(name, selection, threads, extra, logs, Path(tmp))
                ended = next((n for n, (proc, _, _) in running.items() if proc.poll() is not None), None)
                if ended is None:
                    time.sleep(0.5)
                    continue
                codes[ended] = finish(ended, *running.pop(ended))
        except KeyboardInterrupt:
            interrupt([p for p, _, _ in running.values()])
            print("interrupted", file=sys.stderr)
            return 130
    failed = [n for n, rc in codes.items() if rc]
    print(f"\nmake test: {time.perf_counter() - t0:.0f} s in all; "
          + (f"FAILED lanes: {', '.join(failed)}" if failed else "every lane passed"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
