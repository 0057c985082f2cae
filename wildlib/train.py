"""Training through Detectron2's own machinery: DefaultTrainer, hooks, EventStorage,
DetectionCheckpointer, and ``launch`` (the same code runs on several GPUs)."""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import torch

from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, HookBase, SimpleTrainer, hooks as d2_hooks, launch
from detectron2.utils.env import seed_all_rng
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.events import JSONWriter

from . import contention, tiles
from .io import read_json, write_json
from .modeling import SafeCheckpointer, build_model, save_weights, with_memory_format
from .evaluate import max_dets
from .profile import step_seconds


class ProgressBar(HookBase):
    """A tqdm bar over iterations, showing the smoothed total loss."""
    def before_train(self):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=self.trainer.max_iter, initial=self.trainer.start_iter, desc="train", mininterval=2.0)

    def after_step(self):
        self._bar.update(1)
        if self.trainer.iter % 10 == 0:
            s = self.trainer.storage
            try:
                self._bar.set_postfix(loss=f"{s.history('total_loss').median(10):.3f}", lr=f"{s.history('lr').latest():.4f}")
            except KeyError:
                pass

    def after_train(self):
        self._bar.close()


class LossRecorder(HookBase):
    """Keeps every iteration's losses and every evaluation, for metrics.json and the plots."""
    def __init__(self):
        self.rows: list[dict] = []
        self.evals: list[dict] = []

    def after_step(self):
        s = self.trainer.storage
        row = {"iter": self.trainer.iter}
        for k, (v, it) in s.latest().items():
            if it == self.trainer.iter and (k.startswith("loss") or k in ("total_loss", "lr", "time", "data_time")):
                row[k] = float(v)
        self._collect_eval(done=self.trainer.iter + 1)
        self.rows.append(row)

    def after_train(self):  # EvalHook runs the final evaluation in its after_train
        self._collect_eval(done=self.trainer.iter)

    def _collect_eval(self, done: int):
        """Record the evaluation (if any) made at this point, as ``iter`` = iterations done."""
        it = self.trainer.iter
        found = {k[5:]: float(v) for k, (v, i) in self.trainer.storage.latest().items()
                 if k.startswith("bbox/") and i == it}
        if found and not (self.evals and self.evals[-1]["iter"] == done):
            self.evals.append({"iter": done, **found})


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # SOLVER.PRECISION: the training forward's autocast dtype
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bfloat16 in hardware


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), from Linux's
    ``/proc/cpuinfo`` (``cpuinfo``: its text, for a test); False where it cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[-1].split()}
    return any(f in flags for f in BF16_FLAGS)


def resolve_precision(name: str, device: str = "cpu", cpuinfo: str | None = None) -> str:
    """``SOLVER.PRECISION`` as a training runs it: ``"auto"`` is ``"bf16"`` on a CPU with bfloat16 in
    hardware (:func:`native_bf16`; measured there to train 1.4x faster at the same accuracy,
    docs/evidence.md) and ``"fp32"`` anywhere else (emulated bfloat16 is slower; a GPU has its own AMP)."""
    name = str(name)
    if name == "auto":
        return "bf16" if str(device).startswith("cpu") and native_bf16(cpuinfo) else "fp32"
    if name not in PRECISIONS:
        raise ValueError(f"SOLVER.PRECISION {name!r}: one of auto, {', '.join(PRECISIONS)}")
    return name


def train_dtype(cfg):
    """The autocast dtype of ``cfg``'s training steps (``SOLVER.PRECISION``, :func:`resolve_precision`), None for fp32."""
    return PRECISIONS[resolve_precision(cfg.SOLVER.get("PRECISION", "fp32"), cfg.MODEL.DEVICE)]


class AutocastTrainer(SimpleTrainer):
    """Detectron2's ``SimpleTrainer`` step with the forward, losses included, under ``torch.autocast``
    at ``dtype`` (bfloat16: oneDNN's convolutions and matrix products at half the bytes, in
    hardware on CPUs with AVX512-BF16 or AMX).  The backward follows the forward's dtypes; weights,
    gradients and the SGD step stay fp32, as PyTorch's autocast recipe has it.  No loss scaling:
    bfloat16 keeps fp32's exponent range.  Detectron2 0.6's ``AMPTrainer`` is CUDA's float16 only."""
    def __init__(self, model, data_loader, optimizer, dtype=torch.bfloat16):
        super().__init__(model, data_loader, optimizer)
        self.dtype = dtype

    @classmethod
    def taking_over(cls, trainer: SimpleTrainer, dtype) -> "AutocastTrainer":
        """``trainer``'s loop (its model, optimizer, loader and the loader's iterator) with its steps
        autocast: no second iterator over the loader, which could draw from the global RNG."""
        new = cls.__new__(cls)
        new.__dict__.update(vars(trainer))
        new.dtype = dtype
        return new

    def run_step(self):
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(next(self.model.parameters()).device.type, dtype=self.dtype):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        loss_dict = {k: v.float() for k, v in loss_dict.items()}  # logged and NaN-checked at fp32
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def step_trainer(model, data_loader, optimizer, dtype=None) -> SimpleTrainer:
    """The loop that runs each training step: Detectron2's own, or :class:`AutocastTrainer` at
    ``dtype`` (:func:`train_dtype`)."""
    if dtype is None:
        return SimpleTrainer(model, data_loader, optimizer)
    return AutocastTrainer(model, data_loader, optimizer, dtype)


class Trainer(DefaultTrainer):
    """DefaultTrainer with the evaluator and writers that suit this project (no TensorBoard),
    loading ``MODEL.WEIGHTS`` and resumed checkpoints without running code from them."""
    def __init__(self, cfg):
        super().__init__(cfg)
        self.checkpointer = SafeCheckpointer(self.checkpointer.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        for h in self._hooks:  # the periodic checkpointer saves through the same object
            if hasattr(h, "checkpointer"):
                h.checkpointer = self.checkpointer
        dtype = train_dtype(cfg)
        if dtype is not None:  # DefaultTrainer built a plain SimpleTrainer: the same loop, its steps autocast
            if cfg.SOLVER.AMP.ENABLED:
                raise ValueError("SOLVER.PRECISION bf16 and SOLVER.AMP.ENABLED: one or the other (AMP is CUDA's float16)")
            self._trainer = AutocastTrainer.taking_over(self._trainer, dtype)

    def state_dict(self):
        """Detectron2 0.6's trainer state (iteration, the LR scheduler's position) with the optimizer's
        (SGD's momentum buffers): without it a resumed training restarts its momentum from zero."""
        return {**super().state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "optimizer" in state_dict:  # checkpoints written before it was saved have none
            self.optimizer.load_state_dict(state_dict["optimizer"])

    def resume_or_load(self, resume=True):
        """Detectron2's, then the optimizer's learning rates set from this config's schedule at the
        iteration it starts at: a loaded optimizer holds the rates of the run that saved it, and a
        fresh scheduler's (set until its first step) are its warm-up start."""
        super().resume_or_load(resume=resume)
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_lr()):
            group["lr"] = lr

    @classmethod
    def build_model(cls, cfg):

        return with_memory_format(super().build_model(cfg), cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):

        return COCOEvaluator(dataset_name, tasks=("bbox",), distributed=True, max_dets_per_image=max_dets(cfg),
                             output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "eval"),
                             use_fast_impl=False)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):

        return tiles.test_loader(cfg, dataset_name) if tiles.tile_setting(cfg) else super().build_test_loader(cfg, dataset_name)

    @classmethod
    def test(cls, cfg, model, evaluators=None):

        tile = tiles.tile_setting(cfg)
        return super().test(cfg, tiles.SlicedDetector(model, cfg, *tile) if tile else model, evaluators)

    def build_writers(self):
        return [JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "log.jsonl"), window_size=20)]

    def build_hooks(self):
        hooks = super().build_hooks()
        self.recorder = LossRecorder()
        # EvalHook puts bbox/* into storage in after_step: the recorder must run after it.
        return hooks + [self.recorder, ProgressBar()]


PROBE_STEPS = 12  # training steps timed right after a training (their mean), to hold its own mean step against
HISTORY_FILE = "history.json"   # what a training run hands back, next to its checkpoints
TRAINED_FILE = "model_trained.pth"  # its final weights, with hooks' finishing touches applied


def _train_worker(cfg, resume: bool, hooks=(), probe_together=None) -> dict:
    """What each process runs (one process, or one per GPU under ``launch``).  The main
    process writes the history and the final weights to ``cfg.OUTPUT_DIR``, so that the
    results also come back from worker processes.  ``probe_together``: a barrier that the
    trainings of :func:`train_together` meet at before each probes its step, so that each probe
    shares the machine with its siblings as its steps did (a broken barrier: probed alone)."""
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger


    setup_logger(output=os.path.join(cfg.OUTPUT_DIR, "log.txt"), distributed_rank=comm.get_rank(), name="detectron2")
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + comm.get_rank())
    trainer = Trainer(cfg)
    extra = [make() for make in hooks]  # built here, inside the process that uses them
    trainer.register_hooks(extra)
    trainer.resume_or_load(resume=resume)
    t0 = time.perf_counter()
    with contention.Watch(torch.get_num_threads()) as watch:
        trainer.train()
    wall, trained_until = time.perf_counter() - t0, time.time()
    iters = cfg.SOLVER.MAX_ITER - trainer.start_iter
    model = unwrap(trainer.model)
    if probe_together is not None:
        try:
            probe_together.wait()
        except threading.BrokenBarrierError:  # a sibling has ended (failed): this probe runs alone
            pass
    probe_started = time.time()
    # the same step again, right after: a training far slower than this was slowed by something else
    probe = (step_seconds(model, trainer._trainer._data_loader_iter, runs=probe_steps(iters), dtype=train_dtype(cfg))
             if iters > 0
             else None)
    for h in extra:
        if hasattr(h, "finalize"):
            h.finalize(model)
    history = {"losses": trainer.recorder.rows, "evals": trainer.recorder.evals, "train_seconds": wall,
               "iterations_run": iters, "start_iter": trainer.start_iter,
               "s_per_iter": wall / iters if iters > 0 else math.nan,
               "step_s": mean_step(trainer.recorder.rows), "probe_step_s": probe, "machine": watch.summary,
               "trained_until": trained_until, "probe_started": probe_started,
               "hook_states": [h.state() if hasattr(h, "state") else {} for h in extra],
               "world_size": comm.get_world_size()}
    if comm.is_main_process():
        save_weights(model, Path(cfg.OUTPUT_DIR) / TRAINED_FILE)
        write_json(Path(cfg.OUTPUT_DIR) / HISTORY_FILE, history)
    comm.synchronize()
    return {**history, "model": model}


def short_finetune(model, cfg, params, iters: int, lr: float, progress: bool = True, extra_hooks=(),
                   deterministic: bool = False, precision: str | None = None) -> dict:
    """A short fine-tuning of ``params`` (the others stay as they are) of ``model``, in this process,
    with Detectron2's ``SimpleTrainer`` on ``cfg``'s training set: SGD (momentum 0.9) at ``lr`` for
    ``iters`` iterations, no checkpoints, no evaluations; ``extra_hooks``: hook factories (the dense
    teacher's :class:`wildlib.distill.Distill`, a method's own hook).  Seeded from ``cfg.SEED`` as
    :func:`train` is (the loader's image order would otherwise come from the process's global RNG);
    ``deterministic``: with PyTorch's deterministic algorithms (a scatter-add's threaded float sums
    otherwise differ run to run); ``precision``: ``SOLVER.PRECISION``'s value for this run (None: ``cfg``'s).
    The model is left in eval mode.  Returns the loss rows, the seconds and each hook's ``state()``."""
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    model.train()
    dtype = train_dtype(cfg) if precision is None else PRECISIONS[precision]
    trainer = step_trainer(model, build_detection_train_loader(cfg), torch.optim.SGD(params, lr=lr, momentum=0.9), dtype)
    recorder = LossRecorder()
    made = [make() for make in extra_hooks]
    trainer.register_hooks([d2_hooks.IterationTimer(), recorder] + made + ([ProgressBar()] if progress else []))
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    t = time.perf_counter()
    try:
        trainer.train(0, iters)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    seconds = time.perf_counter() - t
    model.eval()
    return {"losses": recorder.rows, "seconds": seconds, "hook_states": [h.state() for h in made if hasattr(h, "state")]}


def probe_steps(iterations: int) -> int:
    """How many steps the probe after a training of ``iterations`` times: :data:`PROBE_STEPS`, but at
    most half the training's own, and at least 2: a 4-iteration smoke training is not probed 12 times."""
    return max(2, min(PROBE_STEPS, iterations // 2))


def train(cfg, resume: bool = False, num_gpus: int = 1, hooks=()) -> dict:
    """Train ``cfg`` (output in ``cfg.OUTPUT_DIR``); returns the trained model and its history
    (``losses``, ``evals``, ``train_seconds``, ``s_per_iter``, ``hook_states``, ...).

    ``hooks`` is a list of hook *factories* (a hook class, or ``functools.partial`` of one):
    each process builds its own hooks, as Detectron2's ``launch`` can only send picklable
    objects to the processes it starts (a lambda cannot travel).  A hook may define
    ``state()`` (returned in ``hook_states``) and ``finalize(model)`` (called once training
    ends, before the weights are saved).

    With ``num_gpus > 1`` Detectron2's ``launch`` starts one process per GPU; the history and
    the model then come back through ``cfg.OUTPUT_DIR`` (:func:`load_result`).
    Introduced in notebook 01_train_baseline, section "Training"."""
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    hooks = list(hooks or ())
    if num_gpus <= 1:
        return _noted(cfg, _train_worker(cfg, resume, hooks))
    try:
        pickle.dumps(hooks)
    except Exception as exc:
        raise TypeError(f"hooks must be picklable factories (a class or functools.partial), not {hooks!r}: "
                        f"launch sends them to each GPU's process ({exc})") from None
    launch(_train_worker, num_gpus, args=(cfg, resume, hooks))
    return _noted(cfg, load_result(cfg))


def _noted(cfg, result: dict) -> dict:
    """``result``, after telling the stage being watched (wildlib.contention) how this training went."""
    contention.note_training(contention.training_entry(
        "/".join(Path(cfg.OUTPUT_DIR).parts[-2:]), result.get("step_s"), result.get("probe_step_s"), result.get("s_per_iter"),
        result.get("machine")))
    return result


def mean_step(rows: list[dict]) -> float | None:
    """The mean of Detectron2's per-iteration ``time`` (data, forward, backward, optimizer: the
    periodic evaluations and checkpoints excluded), or None where none was recorded."""
    times = [r["time"] for r in rows if isinstance(r.get("time"), (int, float))]
    return sum(times) / len(times) if times else None


def train_in_process(cfg, hooks=(), threads: int = 1, setup=None, resume: bool = False, probe_together=None) -> None:
    """A training in a process of its own (one of :func:`train_together`'s, or a process pool's):
    its threads, its datasets (``setup``: a spawned process starts with none), its training; the
    results come back through ``cfg.OUTPUT_DIR`` (:func:`load_result`).  ``probe_together``: as
    :func:`_train_worker`'s."""
    torch.set_num_threads(threads)
    if setup is not None:
        setup()
    _train_worker(cfg, resume, hooks, probe_together)


def train_together(jobs: list, threads_each: int = 1, setup=None) -> list[dict]:
    """Independent trainings at once, each in a spawned process with ``threads_each`` PyTorch
    threads: ``jobs`` is ``[(cfg, hooks), ...]`` (hooks as for :func:`train`), ``setup`` a picklable
    callable each process runs first (registering the datasets its config names: a spawned process
    starts with none).  Meant for 2 cores, where the scaling sweep (on Dask workers) measured two
    1-thread trainings at 1.56x the steps per second of one 2-thread training.  Measured again on a
    2-core AMD EPYC (AVX2), nothing else running, two fine-tunings of the baseline of run ``idle1``
    (all layers training, 30 iterations at batch 4): 1.07 and 1.10 s per step side by side against
    0.84 s one after the other, 1.55x the steps per second (67 s against 92 s of wall time with the
    start-up); an earlier ad-hoc 4-5 s per step was not reproduced.  The trainings meet at a barrier
    before their probes, so that the probes run side by side as the steps did (before it, the probe
    of the training that ended last ran alone: its steps looked 1.22x slower than its probe in that
    measurement, against the 1.3 contention limit); once one has ended (a failure), the barrier is
    broken and the others probe alone.  What each costs, and its machine, is recorded as
    :func:`train` records it, the machine of the whole span (this process's children counted as its own).  Returns each job's result (:func:`load_result`).
    Introduced in notebook 02_prune_magnitude, section "The baseline, re-measured here, and the reference"."""
    jobs = [(cfg, list(hooks or ())) for cfg, hooks in jobs]
    try:
        pickle.dumps([(h, setup) for _, h in jobs])
    except Exception as exc:
        raise TypeError(f"hooks and setup must be picklable (a class, a function or functools.partial): {exc}") from None
    for cfg, _ in jobs:
        Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
        (Path(cfg.OUTPUT_DIR) / HISTORY_FILE).unlink(missing_ok=True)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(jobs))
    with contention.Watch(torch.get_num_threads()) as watch:
        procs = [ctx.Process(target=train_in_process, args=(cfg, hooks, threads_each, setup, False, barrier), daemon=False)
                 for cfg, hooks in jobs]
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            if any(p.exitcode is not None for p in procs):
                barrier.abort()  # one that ended before the barrier never reaches it: the others probe alone
            time.sleep(1.0)
        for p in procs:
            p.join()
    failed = [(cfg.OUTPUT_DIR, p.exitcode) for (cfg, _), p in zip(jobs, procs) if p.exitcode != 0]
    if failed:
        raise RuntimeError("training side by side failed: " + "; ".join(
            f"{out} exited {code} (its log: {Path(out) / 'log.txt'})" for out, code in failed))
    results = []
    for cfg, _ in jobs:
        result = load_result(cfg)
        result["machine"] = watch.summary  # the span of all of them: a sibling is no other load
        results.append(_noted(cfg, result))
    return results


def load_result(cfg) -> dict:
    """The history and trained model that a finished run left in ``cfg.OUTPUT_DIR``."""
    out = Path(cfg.OUTPUT_DIR)
    history = read_json(out / HISTORY_FILE)
    model = build_model(cfg, weights=str(out / TRAINED_FILE), eval_mode=False)
    return {**history, "model": model}


def plateau_gain(evals: list[dict], at: float = 0.75, key: str = "AP50") -> float:
    """How much ``key`` still rose over the last quarter of training: its value at the last
    evaluation minus its value at ``at`` of the schedule (interpolated between evaluations).
    Near zero (or below) means the model had stopped improving.  NaN with < 2 evaluations.
    Introduced in notebook 01_train_baseline, section "Has it converged?"."""
    pts = sorted((e["iter"], e[key]) for e in evals if key in e)
    if len(pts) < 2:
        return math.nan
    its, vals = map(np.asarray, zip(*pts))
    return float(vals[-1] - np.interp(at * its[-1], its, vals))


def final_eval(evals: list[dict], iterations: int) -> dict | None:
    """The COCO metrics of the evaluation made after the last of ``iterations`` (the periodic
    evaluation on ``valid`` at the end of training), or None where there was none: a later
    stage takes it instead of evaluating the same model on the same images again.
    Introduced in notebook 02_prune_magnitude, section "The baseline, re-measured here, and the reference"."""
    last = evals[-1] if evals else {}
    ap50 = last.get("AP50")  # NaN (or null, read back) where nothing was detected: evaluate again
    if last.get("iter") != iterations or not isinstance(ap50, (int, float)) or not math.isfinite(ap50):
        return None
    return {k: v for k, v in last.items() if k != "iter"}


def learning_curve(evals: list[dict], key: str = "AP50") -> list[dict]:
    """``[{iter, AP50}, ...]`` from the periodic evaluations.

    Introduced in notebook 01_train_baseline, section "Has it converged?"."""
    return [{"iter": int(e["iter"]), key: float(e[key])} for e in evals if key in e]


def unwrap(model):
    """The plain model inside a DistributedDataParallel wrapper, if any.

    Introduced in notebook 01_train_baseline, section "Training"."""
    return model.module if hasattr(model, "module") else model


def pick_device(requested: str = "auto") -> str:
    """``"auto"``: CUDA if torch sees a GPU, else the CPU; a CUDA device asked for without one is an
    error.  Introduced in notebook 01_train_baseline."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE={requested!r} asked for, but torch sees no CUDA device; use 'cpu' or 'auto'")
    return requested
