"""Distillation from the dense teacher while a compressed student fine-tunes (issue 33).

A compressed model fine-tunes beside the dense model it came from; with labels alone it learns
nothing of what that model knew.  :class:`Distill` is a Detectron2 hook (a factory for
:func:`wildlib.train.train`'s ``hooks``) that loads the teacher (frozen, in eval mode) once in the
training's process and adds up to three terms to the student's loss dict at every training step:

``loss_distill_cls``  the box head's class logits: KL(teacher || student) of the softmax at a
                      temperature T, times T^2 (Hinton et al. 2015), on the proposals the *student*
                      sampled (the teacher's box head runs on the student's proposals, over the
                      teacher's own features), averaged over proposals.
``loss_distill_rpn``  the RPN's objectness: the Bernoulli KL of the student's objectness from the
                      teacher's, anchor by anchor (binary cross-entropy minus the teacher's entropy,
                      so it is 0 when they agree), averaged over anchors and levels.
``loss_distill_fpn``  FPN feature imitation: the mean squared difference of the two models' FPN
                      outputs, level by level; with ``near_objects`` only at locations inside a
                      ground-truth box (Wang et al. 2019 imitate near objects, where the detectors
                      differ, not the background), each level's mask the boxes divided by its stride.

Each term has its own weight (0: off, and not computed).  The student's intermediate values are
captured with forward hooks on its modules (its backbone's input and output, its RPN head's
logits, the boxes its ROI pooler received, its box predictor's logits); the terms are added by a
forward hook on the whole model, which returns the loss dict with them.  So Detectron2's own
training loop sums and logs them like its own losses, the checkpoints hold the student alone, and
nothing of the teacher enters the optimizer.  The hooks act only in training mode: the periodic
evaluations see the student unchanged.  The teacher's share of a step is timed (``state()``).

Feature imitation needs the teacher's and the student's FPN outputs to have the same channels:
a student whose FPN outputs were channel-pruned (``fpn_out``) is refused by name with a weight of
the FPN term above 0 (a learned adapter, as in FitNets, is not implemented).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from detectron2.engine import HookBase

from .config import get_config
from .modeling import build_model, load_exact, no_imagenet_init

LOSS_KEYS = ("loss_distill_cls", "loss_distill_rpn", "loss_distill_fpn")


def load_teacher(config_file, weights, device: str = "cpu"):
    """The teacher: the model of the Detectron2 config ``config_file`` with exactly the weights
    ``weights`` (:func:`wildlib.modeling.load_exact`: a file of another model is refused by name),
    in eval mode, every parameter frozen."""
    for f in (config_file, weights):
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f}: the teacher's {'config' if f == config_file else 'weights'} is not there")
    cfg = no_imagenet_init(get_config(str(config_file), {"MODEL.WEIGHTS": ""}, freeze=False))
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    teacher = load_exact(build_model(cfg, weights=""), weights).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def class_kl(student_logits, teacher_logits, temperature: float):
    """KL(teacher || student) of the softmax at ``temperature``, times its square, mean over rows."""
    t = float(temperature)
    # in fp32 where the forward ran under bf16 autocast (SOLVER.PRECISION)
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean") * t * t


def objectness_kl(student_logits: list, teacher_logits: list):
    """The Bernoulli KL of each anchor's objectness, teacher || student, averaged per level, then over levels."""
    out = []
    for s, t in zip(student_logits, teacher_logits):
        s, t = s.float(), t.float()
        p = torch.sigmoid(t)
        entropy = F.binary_cross_entropy_with_logits(t, p, reduction="none")
        out.append((F.binary_cross_entropy_with_logits(s, p, reduction="none") - entropy).mean())
    return torch.stack(out).mean()


def object_masks(gt_boxes: list, shape, stride: int) -> torch.Tensor:
    """(N, 1, H, W) masks of a feature level of ``stride``: 1 where a location lies in one of its
    image's boxes (``gt_boxes``: one (K, 4) XYXY tensor per image, in the padded input's pixels)."""
    n, _, h, w = shape
    mask = torch.zeros((n, 1, h, w))
    for i, boxes in enumerate(gt_boxes):
        for x0, y0, x1, y1 in boxes.tolist():
            c0, r0 = max(0, math.floor(x0 / stride)), max(0, math.floor(y0 / stride))
            c1, r1 = min(w, math.ceil(x1 / stride)), min(h, math.ceil(y1 / stride))
            mask[i, 0, r0:r1, c0:c1] = 1.0
    return mask


def feature_imitation(student: dict, teacher: dict, strides: dict, gt_boxes: list | None = None):
    """Mean squared difference of the FPN levels, averaged over levels; with ``gt_boxes``, only
    inside the boxes (a level whose mask is empty adds 0)."""
    out = []
    for name, s in student.items():
        s, t = s.float(), teacher[name].float()
        if s.shape != t.shape:
            raise ValueError(f"FPN level {name}: student {list(s.shape)} against teacher {list(t.shape)}; feature "
                             f"imitation needs the same channels (set its weight to 0 for a student whose FPN outputs "
                             f"were channel-pruned)")
        sq = (s - t) ** 2
        if gt_boxes is None:
            out.append(sq.mean())
            continue
        mask = object_masks(gt_boxes, s.shape, strides[name]).to(s.device, s.dtype)
        out.append((sq * mask).sum() / (mask.sum() * s.shape[1]).clamp(min=1.0))
    return torch.stack(out).mean()


class Distill(HookBase):
    """Distil the teacher (config ``teacher_config``, weights ``teacher_weights``) into the model
    being trained.  ``cls``, ``rpn``, ``fpn``: each term's weight (module docstring); ``temperature``
    of the class logits; ``near_objects``: feature imitation only inside ground-truth boxes.
    A factory for :func:`wildlib.train.train` is ``functools.partial(Distill, ...)``."""

    def __init__(self, teacher_config, teacher_weights, cls: float = 1.0, rpn: float = 0.0, fpn: float = 0.0,
                 temperature: float = 2.0, near_objects: bool = False):
        weights = {"cls": float(cls), "rpn": float(rpn), "fpn": float(fpn)}
        if any(not math.isfinite(v) or v < 0 for v in weights.values()) or not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"distillation weights must be finite and >= 0 and the temperature > 0, not {weights}, "
                             f"T={temperature}")
        self.teacher_config, self.teacher_weights = str(teacher_config), str(teacher_weights)
        self.weights, self.temperature, self.near_objects = weights, float(temperature), bool(near_objects)
        self.teacher = None
        self._handles, self._seen = [], {}
        self.teacher_seconds, self.steps = 0.0, 0

    # --- Detectron2's hook interface
    def before_train(self):
        model = getattr(self.trainer.model, "module", self.trainer.model)  # inside a DDP wrapper, if any
        self.teacher = load_teacher(self.teacher_config, self.teacher_weights, str(next(model.parameters()).device))
        self.attach(model)

    def after_train(self):
        self.detach()

    def state(self) -> dict:
        return {"teacher_config": self.teacher_config, "teacher_weights": self.teacher_weights,
                "weights": self.weights, "temperature": self.temperature, "near_objects": self.near_objects,
                "steps": self.steps,
                "teacher_s_per_step": self.teacher_seconds / self.steps if self.steps else None}

    # --- the student's forward, observed
    def attach(self, model) -> None:
        """Put the forward hooks on ``model`` (the student); :meth:`detach` removes them."""
        if self.teacher is None:
            raise RuntimeError("no teacher loaded (before_train loads it)")
        if model.roi_heads.num_classes != self.teacher.roi_heads.num_classes:
            raise ValueError(f"the teacher has {self.teacher.roi_heads.num_classes} classes, the student "
                             f"{model.roi_heads.num_classes}")
        seen = self._seen

        def keep(key, from_output=True, index=None):
            def hook(module, args, output):
                if module.training:
                    value = output if from_output else args
                    seen[key] = value if index is None else value[index]
            return hook

        self._handles = [
            model.backbone.register_forward_hook(keep("images", from_output=False, index=0)),
            model.backbone.register_forward_hook(keep("features")),
            model.proposal_generator.rpn_head.register_forward_hook(keep("objectness", index=0)),
            model.roi_heads.box_pooler.register_forward_hook(keep("boxes", from_output=False, index=1)),
            model.roi_heads.box_predictor.register_forward_hook(keep("logits", index=0)),
            model.register_forward_hook(self._add_terms),
        ]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._seen.clear()

    def _add_terms(self, model, args, losses):
        seen = dict(self._seen)
        self._seen.clear()  # in place: the capturing hooks hold this dict
        if not model.training or not isinstance(losses, dict):
            return None
        t0 = time.perf_counter()
        terms = self.terms(seen, args[0], model)
        self.teacher_seconds += time.perf_counter() - t0
        self.steps += 1
        return {**losses, **terms}

    def terms(self, seen: dict, batched_inputs, model) -> dict:
        """The weighted distillation terms of one training step, from what the student's forward left
        in ``seen`` (the teacher runs here, without gradients)."""
        w, teacher, out = self.weights, self.teacher, {}
        if not any(w.values()):
            return out
        with torch.no_grad():
            t_features = teacher.backbone(seen["images"])
            if w["rpn"]:
                gen = teacher.proposal_generator
                t_objectness = gen.rpn_head([t_features[f] for f in gen.in_features])[0]
            if w["cls"]:
                heads = teacher.roi_heads
                pooled = heads.box_pooler([t_features[f] for f in heads.box_in_features], seen["boxes"])
                t_logits = heads.box_predictor(heads.box_head(pooled))[0]
        if w["cls"]:
            out["loss_distill_cls"] = w["cls"] * class_kl(seen["logits"], t_logits, self.temperature)
        if w["rpn"]:
            out["loss_distill_rpn"] = w["rpn"] * objectness_kl(seen["objectness"], t_objectness)
        if w["fpn"]:
            boxes = ([x["instances"].gt_boxes.tensor for x in batched_inputs] if self.near_objects else None)
            strides = model.backbone.output_shape()
            out["loss_distill_fpn"] = w["fpn"] * feature_imitation(
                seen["features"], t_features, {k: v.stride for k, v in strides.items()}, boxes)
        return out
