"""The whole detector as one ONNX graph: image in, boxes out, in a single ONNX Runtime session.
Introduced in notebook 04_prune_channels, section 6.

:class:`WholeDetector` re-states the inference path of a Detectron2 ``GeneralizedRCNN`` (FPN, RPN,
standard ROI heads) with operators ONNX has, reusing the model's own modules and box transforms:

1. input normalisation (the image arrives padded to the graph's canvas with the pixel mean, so it
   normalises to the zeros Detectron2 pads with)
2. backbone + FPN, the RPN head's convs
3. per level, the ``pre_nms`` best anchors (``TopK``, on the head's outputs as they lie: the
   anchors are stored in that order), then all levels' decoded at once and clipped to the image,
   empty boxes dropped, NMS across levels (``NonMaxSuppression``, one offset per level), the best
   ``post_nms`` kept
4. each proposal assigned to its FPN level and pooled there (``RoiAlign``, half-pixel = Detectron2's
   ``ROIAlignV2``)
5. the box head's FCs, the predictor, softmax, per-class box decoding and clipping, the score
   threshold, per-class NMS, the best ``detections`` kept

The anchors are constants of the graph: a graph is made for one canvas (padded input size, a
multiple of the backbone's size divisibility), as a camera's fixed-size stream needs.  An image
smaller than the canvas is padded to it (its features near the right and bottom edges then see
the pad through a few more layers than Detectron2's own padding: the tests hold the graph to the
PyTorch model's boxes on images that fill the canvas, and only check that smaller ones run).

:func:`quantize_graph` makes the convolutions and FC layers int8 (QDQ, per channel) and leaves the
box arithmetic, ROIAlign and NMS in float; :class:`OneGraphDetector` runs the file in one ONNX
Runtime session behind Detectron2's model interface (inputs and ``Instances`` out).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
import torchvision
from detectron2.modeling.backbone.fpn import FPN
from detectron2.structures import Boxes, Instances
from torch import nn

from ..io import atomic_write
from ..parts import OTHER
from .graphs import quantize_file
from .runtime import OrtGraph, RuntimeSettings

INPUTS = ("image", "image_size")
OUTPUTS = ("boxes", "scores", "classes")
# the parts of the graph whose convolutions and FC layers int8 may take (node-name prefixes: the
# module names of WholeDetector); the predictor, box arithmetic, ROIAlign and NMS stay float
QUANTIZED_PARTS = ("/backbone/", "/rpn_head/", "/box_head/")
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Add", "Resize", "MaxPool", "Clip", "Relu")  # Resize: a backbone's own


def canvas_of(cfg, size_divisibility: int = 32) -> tuple[int, int]:
    """The canvas (height, width) a landscape image of ``cfg``'s test size fits in: the longest
    edge ``MAX_SIZE_TEST`` and the shortest ``MIN_SIZE_TEST``, each rounded up to the divisibility.
    Introduced in notebook 04_prune_channels, section 6."""
    up = lambda v: int(math.ceil(v / size_divisibility) * size_divisibility)  # noqa: E731
    return up(cfg.INPUT.MIN_SIZE_TEST), up(cfg.INPUT.MAX_SIZE_TEST)


def _clip(boxes, size):
    """Boxes (..., 4) clipped to ``size`` = (height, width), a tensor: what ``Boxes.clip`` does."""
    h, w = size[0], size[1]
    zero = torch.zeros((), dtype=boxes.dtype)
    x1 = torch.minimum(torch.maximum(boxes[..., 0], zero), w)
    y1 = torch.minimum(torch.maximum(boxes[..., 1], zero), h)
    x2 = torch.minimum(torch.maximum(boxes[..., 2], zero), w)
    y2 = torch.minimum(torch.maximum(boxes[..., 3], zero), h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def _batched_nms(boxes, scores, groups, iou: float, span: float):
    """NMS within each group: ``torchvision.ops.batched_nms``' coordinate trick with a constant
    offset ``span`` (larger than any coordinate: the canvas), so an empty input needs no maximum."""
    return torchvision.ops.nms(boxes + (groups.to(boxes.dtype) * span)[:, None], scores, iou)


def _nonempty(boxes, scores, threshold: float = 0.0):
    keep = torch.nonzero(((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)
                         & torch.isfinite(scores)).squeeze(1)
    return keep


def _upsample2x(x):
    """Nearest-neighbour 2x upsampling (the FPN's top-down path) as Unsqueeze, Concat and Reshape:
    in the int8 graph they run in float between a DequantizeLinear and a QuantizeLinear, and still
    0.2 ms faster per image than ONNX Runtime's generic ``Resize`` on uint8 (docs/speed.md)."""
    n, c, h, w = x.shape
    x = torch.cat([x.unsqueeze(-1), x.unsqueeze(-1)], dim=-1).reshape(n, c, h, 2 * w)
    return torch.cat([x.unsqueeze(3), x.unsqueeze(3)], dim=3).reshape(n, c, 2 * h, 2 * w)


class TopDown(nn.Module):
    """Detectron2's ``FPN`` forward (sum fusion) with its own modules, registered under the same
    names (``bottom_up``, ``fpn_lateral*``, ``fpn_output*``, ``top_block``), upsampling with
    :func:`_upsample2x`: the same features."""

    def __init__(self, fpn):
        super().__init__()
        if getattr(fpn, "_fuse_type", "sum") != "sum":
            raise ValueError("one graph re-states the FPN with sum fusion only")
        for name, child in fpn.named_children():
            self.add_module(name, child)
        self.top_block = fpn.top_block  # a module, or None (then not among the children)
        self.lateral, self.output = list(fpn.lateral_convs), list(fpn.output_convs)
        self.in_features, self.out_features = list(fpn.in_features), list(fpn._out_features)
        self.size_divisibility = fpn.size_divisibility

    def forward(self, x):
        bottom_up = self.bottom_up(x)
        prev = self.lateral[0](bottom_up[self.in_features[-1]])
        results = [self.output[0](prev)]
        for idx in range(1, len(self.lateral)):
            prev = self.lateral[idx](bottom_up[self.in_features[-idx - 1]]) + _upsample2x(prev)
            results.insert(0, self.output[idx](prev))
        if self.top_block is not None:
            block = self.top_block
            source = (bottom_up[block.in_feature] if block.in_feature in bottom_up
                      else results[self.out_features.index(block.in_feature)])
            results.extend(block(source))
        return dict(zip(self.out_features, results))


class ProposalSelection(nn.Module):
    """The RPN's test-time selection: per level the ``pre_nms`` best anchors, decoded, clipped,
    empty ones dropped, NMS across levels, the best ``post_nms`` kept (``find_top_rpn_proposals``)."""

    def __init__(self, rpn, anchors, shapes, span: float):
        super().__init__()
        self.transform = rpn.box2box_transform
        self.pre_nms, self.post_nms = int(rpn.pre_nms_topk[False]), int(rpn.post_nms_topk[False])
        self.nms, self.min_box_size, self.span = float(rpn.nms_thresh), float(rpn.min_box_size), span
        self.cells = []  # per level: H * W
        for i, (a, (h, w)) in enumerate(zip(anchors, shapes)):
            # the anchors of the canvas, constants of the graph, in the order of the head's outputs
            # as they come, (A, H, W): no transpose of the logits or deltas in the graph
            # (Detectron2 orders them (H, W, A): the same anchors, permuted)
            a = a.detach().reshape(h, w, -1, 4).permute(2, 0, 1, 3).reshape(-1, 4).clone()
            self.register_buffer(f"anchors_{i}", a)
            self.cells.append(int(h * w))
        self.n_levels = len(anchors)

    def forward(self, logits, deltas, size):
        picked, kept, scores, levels = [], [], [], []
        for i, (lg, d) in enumerate(zip(logits, deltas)):
            anchors, cells = getattr(self, f"anchors_{i}"), self.cells[i]
            k = min(self.pre_nms, anchors.shape[0])
            top, idx = lg.reshape(-1).topk(k)  # index a * H * W + cell
            # anchor a's 4 deltas sit H * W apart, from (a * 4) * H * W + cell on
            first = idx + torch.div(idx, cells, rounding_mode="floor") * (3 * cells)
            picked.append(d.reshape(-1)[first[:, None] + torch.arange(4) * cells])
            kept.append(anchors[idx])
            scores.append(top)
            levels.append(torch.full((k,), i, dtype=torch.int64))
        # decoded once for all levels (the same arithmetic, a fifth of the graph's nodes)
        boxes = _clip(self.transform.apply_deltas(torch.cat(picked), torch.cat(kept)), size)
        scores, levels = torch.cat(scores), torch.cat(levels)
        keep = _nonempty(boxes, scores, self.min_box_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = _batched_nms(boxes, scores, levels, self.nms, self.span)
        return boxes[keep[: self.post_nms]]


class LevelPooler(nn.Module):
    """Detectron2's ``ROIPooler`` (ROIAlignV2): each proposal pooled on its FPN level (FPN paper's
    eq. 1).  Returns the pooled features level by level and the proposals' order in them."""

    def __init__(self, pooler, levels):
        super().__init__()
        first = pooler.level_poolers[0]
        if type(first).__name__ != "ROIAlign" or not first.aligned:
            raise ValueError("one graph needs ROIAlignV2 (ONNX RoiAlign, half_pixel); this model pools otherwise")
        self.levels = list(levels)
        self.scales = [float(p.spatial_scale) for p in pooler.level_poolers]
        self.sampling, self.size = int(first.sampling_ratio), tuple(pooler.output_size)
        self.min_level, self.max_level = int(pooler.min_level), int(pooler.max_level)
        self.canonical_size, self.canonical_level = float(pooler.canonical_box_size), float(pooler.canonical_level)

    def forward(self, features, proposals):
        side = torch.sqrt((proposals[:, 2] - proposals[:, 0]) * (proposals[:, 3] - proposals[:, 1]))
        level = torch.floor(self.canonical_level + torch.log2(side / self.canonical_size + 1e-8))
        level = torch.clamp(level, min=self.min_level, max=self.max_level).to(torch.int64) - self.min_level
        rois = torch.cat([torch.zeros_like(proposals[:, :1]), proposals], dim=1)
        pooled, order = [], []
        for i, (name, scale) in enumerate(zip(self.levels, self.scales)):
            idx = torch.nonzero(level == i).squeeze(1)
            pooled.append(torchvision.ops.roi_align(features[name], rois[idx], self.size, scale, self.sampling,
                                                    aligned=True))
            order.append(idx)
        return torch.cat(pooled), torch.cat(order)


class Detections(nn.Module):
    """``fast_rcnn_inference``: softmax, per-class box decoding and clipping, the score threshold,
    per-class NMS, the best ``detections`` kept, best first."""

    def __init__(self, predictor, span: float):
        super().__init__()
        self.transform = predictor.box2box_transform
        self.score_thresh, self.nms = float(predictor.test_score_thresh), float(predictor.test_nms_thresh)
        self.detections, self.span = int(predictor.test_topk_per_image), span

    def forward(self, logits, deltas, proposals, size):
        probs = torch.softmax(logits, dim=-1)[:, :-1]
        n_class = probs.shape[1]
        boxes = _clip(self.transform.apply_deltas(deltas, proposals).view(-1, deltas.shape[1] // 4, 4), size)
        if boxes.shape[1] == 1:  # class-agnostic box regression
            boxes = boxes.expand(-1, n_class, 4)
        flat = probs.reshape(-1)
        keep = torch.nonzero(flat > self.score_thresh).squeeze(1)
        scores, boxes = flat[keep], boxes.reshape(-1, 4)[keep]
        classes = keep % n_class
        keep = _batched_nms(boxes, scores, classes, self.nms, self.span)[: self.detections]
        return boxes[keep], scores[keep], classes[keep]


class WholeDetector(nn.Module):
    """A ``GeneralizedRCNN``'s inference, batch 1, at one canvas: ``image`` (1, 3, H, W) float, in
    the model's channel order, padded with the pixel mean; ``image_size`` (2,) float: the image's
    (height, width) before padding -> ``boxes`` (D, 4) in that image's pixels, ``scores`` (D,),
    ``classes`` (D,) int64, best first.  Test-time settings are the model's own.  Its submodules'
    names (``backbone``, ``rpn_head``, ``rpn_select``, ``pooler``, ``box_head``, ``predictor``,
    ``detections``) name the graph's nodes: what :data:`GRAPH_PARTS` maps to the detector's parts."""

    def __init__(self, model, canvas: tuple[int, int]):
        super().__init__()
        model = copy.deepcopy(model).eval().to("cpu")
        rpn, heads = model.proposal_generator, model.roi_heads
        self.canvas = tuple(int(v) for v in canvas)
        div = int(getattr(model.backbone, "size_divisibility", 0) or 1)
        if any(v % div for v in self.canvas):
            raise ValueError(f"canvas {self.canvas} must be a multiple of the backbone's size divisibility {div}")
        span = float(max(self.canvas) + 1)
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone().view(1, -1, 1, 1))
        self.register_buffer("pixel_std", model.pixel_std.detach().clone().view(1, -1, 1, 1))
        backbone = model.backbone
        if type(backbone) is FPN:  # Detectron2's own (a subclass may have a forward of its own)
            backbone = TopDown(backbone)
        self.backbone, self.rpn_head, self.levels = backbone, rpn.rpn_head, list(rpn.in_features)
        with torch.no_grad():
            features = self.backbone(torch.zeros(1, 3, *self.canvas))
            maps = [features[f] for f in self.levels]
            anchors = [a.tensor for a in rpn.anchor_generator(maps)]
        self.rpn_select = ProposalSelection(rpn, anchors, [m.shape[-2:] for m in maps], span)
        self.pooler = LevelPooler(heads.box_pooler, heads.box_in_features)
        self.box_head, self.predictor = heads.box_head, heads.box_predictor
        self.detections = Detections(heads.box_predictor, span)

    def forward(self, image, image_size):
        features = self.backbone((image - self.pixel_mean) / self.pixel_std)
        logits, deltas = self.rpn_head([features[f] for f in self.levels])
        proposals = self.rpn_select(logits, deltas, image_size)
        pooled, order = self.pooler(features, proposals)
        logits, deltas = self.predictor(self.box_head(pooled))
        return self.detections(logits, deltas, proposals[order], image_size)


# The graph's node-name prefixes (WholeDetector's submodules) -> the detector's parts
# (wildlib.parts); nodes of no submodule (input normalisation) are "other".
GRAPH_PARTS = {"/backbone/bottom_up/": "backbone", "/backbone/": "fpn", "/rpn_head/": "rpn", "/rpn_select/": "rpn",
               "/pooler/": "roi_pooler", "/box_head/": "box_head", "/predictor/": "box_predictor",
               "/detections/": "roi_other"}


def graph_part_of(node_name: str) -> str:
    """The detector part (:mod:`wildlib.parts`) an ONNX node of the one graph belongs to (a
    quantized graph's nodes keep their names, with a suffix)."""
    for prefix, part in GRAPH_PARTS.items():
        if node_name.startswith(prefix):
            return part
    return OTHER


def pad_to(image: torch.Tensor, canvas, fill: torch.Tensor) -> np.ndarray:
    """``image`` (3, h, w) as a (1, 3, H, W) float32 array on the canvas, padded right and bottom
    with ``fill`` (the pixel mean, per channel)."""
    c, h, w = image.shape
    H, W = canvas
    if h > H or w > W:
        raise ValueError(f"an image of {h}x{w} does not fit this graph's canvas {H}x{W}: resize it to the config's "
                         "test size (or export a graph for a larger canvas)")
    out = np.empty((1, c, H, W), dtype=np.float32)
    out[0] = fill.numpy().reshape(c, 1, 1)
    # numpy casts the uint8 image as it copies: torch's .float() took 7.9 ms of a 20 ms inference
    # here (2 busy cores), this 0.02 ms
    out[0, :, :h, :w] = image.detach().cpu().numpy()
    return out


def export_graph(model, canvas, path, opset: int = 17) -> Path:
    """``model``'s whole inference path (:class:`WholeDetector`) as one fp32 ONNX file at ``path``,
    for images on ``canvas`` (height, width).
    Introduced in notebook 04_prune_channels, section 6."""
    module = WholeDetector(model, canvas).eval()
    image = module.pixel_mean.expand(1, -1, *module.canvas).contiguous()
    size = torch.tensor([float(canvas[0]), float(canvas[1])])

    def write(tmp):
        with torch.no_grad():
            torch.onnx.export(module, (image, size), tmp, opset_version=opset, dynamo=False,
                              input_names=list(INPUTS), output_names=list(OUTPUTS),
                              dynamic_axes={n: {0: "detections"} for n in OUTPUTS})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), write)
    return _name_by_scope(Path(path))


def _name_by_scope(path: Path) -> Path:
    """Give the nodes torchvision's ONNX functions emit without a module scope (``RoiAlign``,
    ``NonMaxSuppression`` and their helpers) the scope of the node before them: the exporter
    writes nodes in the order they ran, so each lands in the part that called it."""
    import onnx  # ONNX: a heavy optional dependency, loaded where used

    proto = onnx.load(str(path))
    scope, seen = "", set()
    for node in proto.graph.node:
        own = next((p for p in GRAPH_PARTS if node.name.startswith(p)), None)
        if own:
            scope = own
        elif scope:  # before the first scoped node: the input's normalisation, left as it is
            node.name = f"{scope}{node.name.lstrip('/')}"
        while node.name in seen:
            node.name += "_"
        seen.add(node.name)
    atomic_write(path, lambda tmp: onnx.save(proto, tmp))
    return path


def _feed(image: torch.Tensor, canvas, fill: torch.Tensor) -> dict:
    """The graph's inputs (name -> array) for one image at the test size: it on the canvas, its size."""
    return {"image": pad_to(image, canvas, fill), "image_size": np.array(image.shape[-2:], dtype=np.float32)}


def graph_inputs(images: list[dict], canvas, pixel_mean) -> list[dict]:
    """The graph's feeds (name -> array) for Detectron2 model inputs: what calibration reads.
    Introduced in notebook 04_prune_channels, section 6."""
    fill = pixel_mean.detach().cpu().view(-1).float()
    return [_feed(x["image"], canvas, fill) for x in images]


def quantize_graph(fp32, calibration: list[dict], path, method: str = "minmax", fmt: str = "qdq") -> Path:
    """The one graph with its convolutions and FC layers (:data:`QUANTIZED_PARTS`) in int8: weights
    per output channel, activations uint8 with ranges from ``calibration`` (feeds of
    :func:`graph_inputs`, training images), ``fmt``: ``qdq`` (QuantizeLinear/DequantizeLinear pairs
    ONNX Runtime fuses into int8 kernels) or ``qoperator`` (QLinearConv, ... directly).  Box
    arithmetic, ROIAlign, NMS and the predictor stay float.
    Introduced in notebook 04_prune_channels, section 6."""
    def nodes(proto):
        return [n.name for n in proto.graph.node if n.op_type in QUANTIZED_OPS and n.name.startswith(QUANTIZED_PARTS)]

    if not calibration:
        raise ValueError("no calibration data: graph_inputs of some training images first")
    return quantize_file(fp32, path, calibration, method, fmt, select=(QUANTIZED_OPS, nodes))


class OneGraphDetector(nn.Module):
    """One ONNX file (:func:`export_graph`, :func:`quantize_graph`) in one ONNX Runtime session
    behind Detectron2's model interface: a list of inputs (``image`` (3, h, w) at the test size,
    ``height``/``width`` of the original) in, ``[{"instances": Instances}]`` out, boxes in the
    original's pixels.  Python only pads the image and rescales the boxes.
    Introduced in notebook 04_prune_channels, section 6."""

    def __init__(self, graph: OrtGraph, canvas, pixel_mean):
        super().__init__()
        self.graph, self.canvas = graph, tuple(int(v) for v in canvas)
        graph.expect(list(INPUTS), [(n, None) for n in OUTPUTS])
        self.register_buffer("fill", torch.as_tensor(pixel_mean, dtype=torch.float32).view(-1).clone())

    @classmethod
    def from_file(cls, path, canvas, pixel_mean, settings: RuntimeSettings | None = None, sha256: str | None = None):
        return cls(OrtGraph(path, settings=settings, sha256=sha256), canvas, pixel_mean)

    def feed(self, x: dict) -> dict:
        """The graph's inputs for one Detectron2 input: the image on the canvas, its size."""
        return _feed(x["image"], self.canvas, self.fill)

    @staticmethod
    def instances(outputs, x: dict) -> Instances:
        """The graph's outputs as Detectron2's ``Instances``, in the original image's pixels: what
        ``detector_postprocess`` does (scale, clip, drop empty boxes), in numpy on three arrays
        (Detectron2's own took 0.6 ms of a 10 ms inference here)."""
        boxes, scores, classes = outputs
        h, w = x["image"].shape[-2:]
        height, width = int(x.get("height", h)), int(x.get("width", w))
        boxes = boxes * np.array([width / w, height / h, width / w, height / h], dtype=np.float32)
        np.clip(boxes, 0, np.array([width, height, width, height], dtype=np.float32), out=boxes)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        r = Instances((height, width))
        r.pred_boxes = Boxes(torch.from_numpy(np.ascontiguousarray(boxes[keep])))
        r.scores = torch.from_numpy(scores[keep])
        r.pred_classes = torch.from_numpy(classes[keep])
        return r

    def forward(self, batched_inputs):
        return [{"instances": self.instances(self.graph.session.run(None, self.feed(x)), x)} for x in batched_inputs]
