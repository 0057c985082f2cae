"""Was the machine idle while we measured?  A time of a busy machine is not a time of this code.

A stage watches the machine from :func:`wildlib.stages.open_stage` to :func:`wildlib.stages.save_stage`
(:func:`begin` / :func:`end`), and each training inside it adds what it saw (:func:`note_training`):

* the **load average** (``/proc/loadavg``, its 1-minute value sampled every few seconds): threads
  that wanted a core;
* **CPU steal** (``/proc/stat``): time the hypervisor gave this virtual machine's cores to another;
* the **CPU used by other processes**: the whole machine's busy time (``/proc/stat``) less this
  process's own (``/proc/self/stat``, finished children included);
* for each training, its **step time** (Detectron2's per-iteration ``time``, periodic evaluations
  excluded) beside a **probe** of the same step timed right after training in the same process.

:func:`reasons` turns that into a verdict: a list of what disturbed the run, empty when nothing did.
The report calls a stage with reasons *contended*, and none of its times (or speedups) is a headline.
Linux only: elsewhere nothing is recorded (``None``), and the report says the times are unchecked.
Why our own code and not psutil: the three counters are a few lines of ``/proc``, and the project
needs them in the kernel that measures, the trainer's process and the tests alike.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

STEP_RATIO_LIMIT = 1.3   # a training whose steps took longer than this times its probe was slowed by something else
LOAD_SLACK = 0.5         # load above the stage's threads + this (the kernel, papermill, the runner) is someone else
OTHERS_SHARE_LIMIT = 0.25  # other processes used more than this share of all cores
STEAL_SHARE_LIMIT = 0.05   # the hypervisor took more than this share of the cores' time
SAMPLE_SECONDS = 5.0     # the kernel updates the load average every 5 s

_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _cpu_times() -> dict | None:
    """The machine's CPU time so far in clock ticks, by kind (``/proc/stat``'s first line)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if first[0] != "cpu":
        return None
    return {k: int(v) for k, v in zip(_CPU_FIELDS, first[1:1 + len(_CPU_FIELDS)])}


def _own_ticks() -> int | None:
    """This process's CPU time in clock ticks: its threads' and its finished children's."""
    try:
        text = Path("/proc/self/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (name) ": field 3 onwards
    return sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime


def load1() -> float | None:
    """The 1-minute load average now (``/proc/loadavg``), or None where there is none."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Watch:
    """Watches the machine between :meth:`start` and :meth:`stop` (or as a ``with`` block):
    the load average sampled in a daemon thread, CPU steal and other processes' CPU from the
    counters at both ends.  :meth:`stop` returns the summary (:func:`summarize`)."""

    def __init__(self, threads: int | None = None, period: float = SAMPLE_SECONDS):
        self.threads, self.period = threads, period
        self.loads: list[float] = []
        self._stop = threading.Event()
        self._thread = None
        self._t0 = self._cpu0 = self._own0 = None

    def start(self) -> "Watch":
        self._t0, self._cpu0, self._own0 = time.monotonic(), _cpu_times(), _own_ticks()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="wildlib-contention", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        value = load1()
        if value is not None:
            self.loads.append(value)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def snapshot(self) -> dict | None:
        """The summary (:func:`summarize`) from :meth:`start` to now, one load reading more; watching goes on."""
        self._sample()
        return summarize(time.monotonic() - self._t0, self._cpu0, _cpu_times(), self._own0, _own_ticks(),
                         self.loads, self.threads)

    def stop(self) -> dict | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        return self.snapshot()

    def __enter__(self) -> "Watch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.summary = self.stop()


def summarize(seconds: float, cpu0: dict | None, cpu1: dict | None, own0: int | None, own1: int | None,
              loads: list[float], threads: int | None = None) -> dict | None:
    """What the counters say about ``seconds`` of wall time: the load average's mean and maximum,
    the shares of all cores' time that the hypervisor stole and that other processes used, and
    the cores and threads they are judged against.  None without ``/proc``."""
    if cpu0 is None or cpu1 is None:
        return None
    delta = {k: cpu1[k] - cpu0[k] for k in _CPU_FIELDS}
    total = sum(delta.values())
    busy = total - delta["idle"] - delta["iowait"] - delta["steal"]
    own = (own1 - own0) if own0 is not None and own1 is not None else 0
    share = (lambda x: round(max(0.0, x) / total, 4)) if total > 0 else (lambda x: 0.0)
    return {"seconds": round(seconds, 2), "cpu_count": os.cpu_count(),
            "threads": threads or _torch_threads(),
            "load1_mean": round(sum(loads) / len(loads), 3) if loads else None,
            "load1_max": max(loads) if loads else None, "load_samples": len(loads),
            "steal_share": share(delta["steal"]), "others_share": share(busy - own), "own_share": share(own)}


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")  # only if this process uses it: importing torch here would cost seconds
    return torch.get_num_threads() if torch is not None else None


def training_entry(name: str, step_s: float | None, probe_step_s: float | None, s_per_iter: float | None,
                   machine: dict | None) -> dict:
    """One training as a stage records it: its mean step (evaluations excluded), the probe's step,
    their ratio, its s/iter with evaluations, and the machine while it trained."""
    ratio = step_s / probe_step_s if step_s and probe_step_s else None
    return {"name": name, "step_s": step_s, "probe_step_s": probe_step_s,
            "step_ratio": round(ratio, 3) if ratio else None, "s_per_iter": s_per_iter, "machine": machine}


def reasons(machine: dict | None) -> list[str]:
    """What disturbed a stage (its :func:`end` record), each as a sentence; [] if nothing did.
    The rule: a training's steps slower than ``STEP_RATIO_LIMIT`` x its probe; the load average's
    mean above the stage's threads + ``LOAD_SLACK``; other processes above ``OTHERS_SHARE_LIMIT``
    of the cores; steal above ``STEAL_SHARE_LIMIT``."""
    if not machine:
        return []
    out = []
    for t in machine.get("trainings") or []:
        if t.get("step_ratio") and t["step_ratio"] > STEP_RATIO_LIMIT:
            out.append(f"training {t['name']}: {t['step_s']:.2f} s/step against {t['probe_step_s']:.2f} s probed "
                       f"({t['step_ratio']:.2f}x, limit {STEP_RATIO_LIMIT}x)")
    for what in [machine] + [t["machine"] for t in machine.get("trainings") or [] if t.get("machine")]:
        span = f" over {what['seconds'] / 60:.1f} min" if what.get("seconds") else " (one reading)"
        threads = what.get("threads") or what.get("cpu_count") or 1
        if what.get("load1_mean") is not None and what["load1_mean"] > threads + LOAD_SLACK:
            out.append(f"load average {what['load1_mean']:.2f}{span} with "
                       f"{threads} threads (limit {threads + LOAD_SLACK:g})")
        if what.get("others_share", 0) > OTHERS_SHARE_LIMIT:
            out.append(f"other processes used {100 * what['others_share']:.0f}% of the cores{span} "
                       f"(limit {100 * OTHERS_SHARE_LIMIT:.0f}%)")
        if what.get("steal_share", 0) > STEAL_SHARE_LIMIT:
            out.append(f"CPU steal {100 * what['steal_share']:.0f}%{span} (limit {100 * STEAL_SHARE_LIMIT:.0f}%)")
    return list(dict.fromkeys(out))


# The stage this process is running (a notebook's kernel runs one stage at a time).
_stage: dict = {}


def begin(stage, threads: int | None = None) -> None:
    """Start watching the machine for ``stage`` (a stage folder); a stage begun again starts over.
    Introduced in notebook 01_train_baseline (through wildlib.stages.open_stage)."""
    if _stage.get("watch") is not None:
        _stage["watch"].stop()
    _stage.clear()
    _stage.update(stage=str(stage), watch=Watch(threads).start(), trainings=[])


def note_training(entry: dict) -> None:
    """Add one training (:func:`training_entry`) to the stage being watched, if any."""
    if _stage:
        _stage["trainings"].append(entry)


def end(stage) -> dict | None:
    """The machine over ``stage`` since :func:`begin` (its summary, its trainings, and the
    ``reasons`` it was contended); a stage never begun gets the load average of this moment only.
    The watch goes on, so a stage saved twice records its whole span."""
    if _stage.get("stage") == str(stage):
        summary = _stage["watch"].snapshot()
        if summary is None:
            return None
        summary["trainings"] = list(_stage["trainings"])
    else:
        value = load1()
        if value is None:
            return None
        summary = {"seconds": None, "cpu_count": os.cpu_count(), "threads": _torch_threads(), "load1_mean": value,
                   "load1_max": value, "load_samples": 1, "trainings": []}
    summary["reasons"] = reasons(summary)
    summary["contended"] = bool(summary["reasons"])
    return summary
