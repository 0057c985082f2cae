"""Gradual pruning while fine-tuning: Zhu & Gupta's cubic schedule as a Detectron2 hook.
Introduced in notebook 02, section 4."""

from __future__ import annotations

from detectron2.engine import HookBase

from ..train import unwrap
from .masks import check_ranking, global_magnitude, make_permanent, sparsity


def cubic_schedule(step: int, start: int, end: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3, clamped."""
    if step <= start:
        return initial
    if step >= end:
        return final
    frac = (step - start) / max(1, end - start)
    return final + (initial - final) * (1 - frac) ** 3


END_FRACTION = 0.5  # gradual pruning reaches its target after this fraction of the fine-tuning
MASK_UPDATES = 25   # mask updates over the whole fine-tuning run, at most (every 20 iterations of 500)


def schedule_of(iterations: int) -> tuple[int, int]:
    """``(end, every)`` of a gradual pruning run over ``iterations``: the target is reached at
    :data:`END_FRACTION` of the run, the masks move every ``iterations / MASK_UPDATES`` steps, and
    the rest of the run recovers at the final sparsity.  Introduced in notebook 02, section 4."""
    return max(1, int(iterations * END_FRACTION)), max(1, iterations // MASK_UPDATES)


class GradualPruning(HookBase):
    """Raises the global sparsity of ``scopes`` on the cubic schedule while training goes on.

    Masks are attached before training (the optimizer keeps updating ``weight_orig``; the masked
    entries stay zero in the forward pass); every ``every`` iterations between ``start`` and
    ``end`` the smallest surviving weights are masked until the scheduled sparsity is reached.
    Introduced in notebook 02_prune_magnitude, section "4 · Gradual pruning while fine-tuning"."""

    def __init__(self, scopes="all", final: float = 0.8, start: int = 0, end: int = 1000, every: int = 20,
                 ranking: str = "l1"):
        self.scopes, self.final, self.start, self.end, self.every = scopes, final, start, end, max(1, every)
        self.ranking = check_ranking(ranking)
        self.history: list[tuple[int, float]] = []

    def _model(self):
        return unwrap(self.trainer.model)

    def before_train(self):
        global_magnitude(self._model(), self.scopes, 0.0, self.ranking)  # masks of ones, on contiguous tensors
        self._apply(self.trainer.start_iter)

    def _apply(self, step: int):
        model = self._model()
        target = cubic_schedule(step, self.start, self.end, self.final)
        current = sparsity(model, self.scopes)
        if target > current + 1e-6:
            amount = (target - current) / (1 - current)  # a fraction of the surviving weights
            global_magnitude(model, self.scopes, amount, self.ranking)
        self.history.append((step, sparsity(model, self.scopes)))
        self.trainer.storage.put_scalar("sparsity", self.history[-1][1], smoothing_hint=False)

    def after_step(self):
        done = self.trainer.iter + 1
        if (done % self.every == 0 and done <= self.end + self.every) or done == self.trainer.max_iter:
            self._apply(done)

    def state(self) -> dict:
        """What the run hands back (also from worker processes): ``(iteration, sparsity)`` pairs."""
        return {"history": [list(h) for h in self.history]}

    def finalize(self, model) -> None:
        """Fold the masks into the weights before the trained model is saved."""
        make_permanent(model)
