"""Training through Detectron2's own machinery: DefaultTrainer, hooks, EventStorage,
DetectionCheckpointer, and ``launch`` (the same code runs on several GPUs)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from detectron2.engine import DefaultTrainer, HookBase, launch
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.events import JSONWriter

from . import modeling  # noqa: F401  (registers the MobileNetV2-FPN backbone)


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


class Trainer(DefaultTrainer):
    """DefaultTrainer with the evaluator and writers that suit this project (no TensorBoard)."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return COCOEvaluator(dataset_name, tasks=("bbox",), distributed=True,
                             output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "eval"),
                             use_fast_impl=False)

    def build_writers(self):
        return [JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "log.jsonl"), window_size=20)]

    def build_hooks(self):
        hooks = super().build_hooks()
        self.recorder = LossRecorder()
        # EvalHook puts bbox/* into storage in after_step: the recorder must run after it.
        return hooks + [self.recorder, ProgressBar()]


def _train_worker(cfg, resume: bool, hooks=None) -> dict:
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    setup_logger(output=os.path.join(cfg.OUTPUT_DIR, "log.txt"), distributed_rank=comm.get_rank(), name="detectron2")
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + comm.get_rank())
    trainer = Trainer(cfg)
    extra = list(hooks()) if hooks else []
    trainer.register_hooks(extra)
    trainer.resume_or_load(resume=resume)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    iters = cfg.SOLVER.MAX_ITER - trainer.start_iter
    return {"model": trainer.model, "hooks": extra, "losses": trainer.recorder.rows, "evals": trainer.recorder.evals,
            "train_seconds": wall, "iterations_run": iters, "start_iter": trainer.start_iter,
            "s_per_iter": wall / iters if iters > 0 else math.nan}


def train(cfg, resume: bool = False, num_gpus: int = 1, hooks=None) -> dict:
    """Train ``cfg`` (output in ``cfg.OUTPUT_DIR``); returns the trained model and its history.

    ``hooks`` is a callable returning extra Detectron2 hooks (a callable, so that each process
    started by ``launch`` makes its own); they are returned under ``"hooks"``.

    With ``num_gpus > 1`` Detectron2's ``launch`` starts one process per GPU; the model and
    history then come back only from the files written under ``cfg.OUTPUT_DIR``.
    """
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    if num_gpus <= 1:
        return _train_worker(cfg, resume, hooks)
    launch(_train_worker, num_gpus, args=(cfg, resume, hooks))
    return {}


def unwrap(model):
    """The plain model inside a DistributedDataParallel wrapper, if any."""
    return model.module if hasattr(model, "module") else model


def pick_device(requested: str = "auto") -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE={requested!r} asked for, but torch sees no CUDA device; use 'cpu' or 'auto'")
    return requested
