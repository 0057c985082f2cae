"""Fast CPU inference: the detector's convolutional and FC parts run in ONNX Runtime, in fp32 or
in int8 (static quantization: real int8 kernels), while Detectron2's own code keeps doing the rest
in float.  Introduced in notebook 04_prune_channels.

Two ONNX graphs stand in for the modules of the ``GeneralizedRCNN`` they were exported from:

``backbone``  MobileNetV2 + FPN + the RPN head's convs, in one graph (one call, one wake-up of
              ONNX Runtime's threads): the normalised, padded image -> p2..p6, and the RPN's
              objectness logits and anchor deltas per level (handed to the RPN through
              :class:`OrtRPNHead`)
``box_head``  the box head's FC layers: pooled 7x7 features -> box features

What stays float, in PyTorch (``FLOAT_PARTS``): input normalisation and padding, anchor generation,
proposal top-k and NMS, ROIAlign, the box predictor, box decoding, per-class NMS and rescaling.
Two of those run leaner, with the same results (:func:`lean`): the RPN decodes only the anchors it
keeps (``TopKFirstRPN``: Detectron2 decodes every anchor, then keeps the top k), and anchors are
computed once per feature-map size (``CachedAnchorGenerator``).

Why ONNX Runtime: measured in notebook 04 (README).  PyTorch's FX graph-mode quantization cannot
trace Detectron2's FrozenBatchNorm/FPN (data-dependent control flow), PT2E needs ``torch.export``
+ Inductor compilation, and Detectron2 0.6's own ``detectron2.export`` imports caffe2.
ONNX Runtime runs the exported fp32 graph about 3x faster than PyTorch eager on this CPU already,
and its static int8 quantization (QDQ, per-channel weights) uses its int8 convolution kernels.

A deployable model is a folder: ``detectron2.yaml`` (widths, input size and test-time settings),
the three ``.onnx`` files, ``predictor.pth`` (the box predictor's weights) and ``manifest.json``
(size and SHA-256 of each file).  Loading checks every file before use: nothing in it runs code.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from .evaluate import LATENCY_WARMUP, accuracy_and_speed
from .modeling import WeightsError, sha256_file
from .stages import D2_CONFIG_FILE

GRAPHS = ("backbone", "box_head")
FLOAT_PARTS = ("input normalisation and padding", "anchor generation", "proposal top-k and NMS", "ROIAlign",
               "box predictor (two small FC layers)", "box decoding, per-class NMS, rescaling")
LATENCY_IMAGES = 20  # validation images the latency runs cycle through (notebook 04)
CALIB_IMAGES = 32    # training images that calibrate the int8 activation ranges (notebook 04, §4)
MAX_MODEL_BYTES = 1 << 30  # an ONNX file larger than this is refused before it is parsed
ALLOWED_DOMAINS = {"", "ai.onnx", "com.microsoft"}
MANIFEST = "manifest.json"
PREDICTOR = "predictor.pth"
CONFIG = D2_CONFIG_FILE  # the stage contract's name for a model's Detectron2 config


# ------------------------------------------------------------------------- test-time settings


def test_time(model, pre_nms: int | None = None, post_nms: int | None = None, detections: int | None = None):
    """Set the test-time compute knobs of ``model`` in place: RPN proposals kept per level before
    NMS, proposals kept after it (what the box head sees), detections kept per image."""
    rpn = model.proposal_generator
    if pre_nms is not None:
        rpn.pre_nms_topk = {True: rpn.pre_nms_topk[True], False: int(pre_nms)}
    if post_nms is not None:
        rpn.post_nms_topk = {True: rpn.post_nms_topk[True], False: int(post_nms)}
    if detections is not None:
        model.roi_heads.box_predictor.test_topk_per_image = int(detections)
    return model


def test_time_of(model) -> dict:
    return {"pre_nms": model.proposal_generator.pre_nms_topk[False],
            "post_nms": model.proposal_generator.post_nms_topk[False],
            "detections": model.roi_heads.box_predictor.test_topk_per_image}


def with_test_time(cfg, pre_nms: int, post_nms: int, detections: int, min_size: int | None = None):
    """``cfg`` with these test-time settings (and test input size: shortest edge ``min_size``, the
    longest edge scaled alike)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = int(pre_nms)
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = int(post_nms)
    cfg.TEST.DETECTIONS_PER_IMAGE = int(detections)
    if min_size is not None and int(min_size) != cfg.INPUT.MIN_SIZE_TEST:
        cfg.INPUT.MAX_SIZE_TEST = int(round(cfg.INPUT.MAX_SIZE_TEST * int(min_size) / cfg.INPUT.MIN_SIZE_TEST))
        cfg.INPUT.MIN_SIZE_TEST = int(min_size)
    cfg.freeze()
    return cfg


# ----------------------------------------------------------------- leaner float parts


from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator  # noqa: E402
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY  # noqa: E402
from detectron2.modeling.proposal_generator.rpn import RPN  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402


class TopKFirstRPN(RPN):
    """Detectron2's RPN, except that at test time it decodes only the anchors it keeps: each
    level's logits are sorted as Detectron2 sorts them, the first ``pre_nms_topk`` are kept, and only
    their deltas are applied (Detectron2 decodes all anchors, ~19k at 240x320, then keeps the top
    k).  The rest is ``find_top_rpn_proposals``' inference path, step for step: same proposals,
    ties included.  Training is unchanged."""

    def predict_proposals(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes):
        if self.training:
            return super().predict_proposals(anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes)
        k = self.pre_nms_topk[False]
        boxes, scores, levels = [], [], []
        with torch.no_grad():
            for level, (a, lg, d) in enumerate(zip(anchors, pred_objectness_logits, pred_anchor_deltas)):
                n = min(k, lg.shape[1])
                top, idx = lg.sort(descending=True, dim=1)
                top, idx = top.narrow(1, 0, n), idx.narrow(1, 0, n)
                rows = torch.arange(lg.shape[0], device=lg.device)[:, None]
                picked = a.tensor[idx]
                b = self.box2box_transform.apply_deltas(d[rows, idx].reshape(-1, d.shape[-1]),
                                                        picked.reshape(-1, picked.shape[-1]))
                boxes.append(b.view(lg.shape[0], n, -1))
                scores.append(top)
                levels.append(torch.full((n,), level, dtype=torch.int64, device=lg.device))
            boxes, scores, levels = torch.cat(boxes, dim=1), torch.cat(scores, dim=1), torch.cat(levels)
            return [self._select(Boxes(boxes[i]), scores[i], levels, size) for i, size in enumerate(image_sizes)]

    def _select(self, boxes, scores, levels, image_size):
        from detectron2.layers import batched_nms
        from detectron2.structures import Instances

        valid = torch.isfinite(boxes.tensor).all(dim=1) & torch.isfinite(scores)
        if not valid.all():
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        boxes.clip(image_size)
        keep = boxes.nonempty(threshold=self.min_box_size)
        if keep.sum().item() != len(boxes):
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes.tensor, scores, levels, self.nms_thresh)[: self.post_nms_topk[False]]
        out = Instances(image_size)
        out.proposal_boxes, out.objectness_logits = boxes[keep], scores[keep]
        return out


class CachedAnchorGenerator(DefaultAnchorGenerator):
    """Detectron2's anchors, computed once per set of feature-map sizes and then reused (a fresh
    copy each call: a caller may clip them in place).  In a latency measurement the cache is warm
    after the first image of a size: what a camera's fixed-size stream sees."""

    MAX_SIZES = 32  # distinct input sizes remembered

    def forward(self, features):
        cache = self.__dict__.setdefault("_wl_cache", {})
        key = tuple(tuple(f.shape[-2:]) for f in features) + (str(features[0].device),)
        if key not in cache:
            if len(cache) >= self.MAX_SIZES:
                cache.clear()
            cache[key] = self._grid_anchors([f.shape[-2:] for f in features])
        return [Boxes(t.clone()) for t in cache[key]]


for _cls, _registry in ((TopKFirstRPN, PROPOSAL_GENERATOR_REGISTRY), (CachedAnchorGenerator, ANCHOR_GENERATOR_REGISTRY)):
    if _cls.__name__ not in _registry:
        _registry.register(_cls)

LEAN_NAMES = {"MODEL.PROPOSAL_GENERATOR.NAME": ("RPN", "TopKFirstRPN"),
              "MODEL.ANCHOR_GENERATOR.NAME": ("DefaultAnchorGenerator", "CachedAnchorGenerator")}


def lean(model):
    """``model`` (in place) with :class:`TopKFirstRPN` and :class:`CachedAnchorGenerator` in place of
    Detectron2's RPN and anchor generator (the same state: only methods change)."""
    pg = model.proposal_generator
    if type(pg) is RPN:
        pg.__class__ = TopKFirstRPN
    if type(pg.anchor_generator) is DefaultAnchorGenerator:
        pg.anchor_generator.__class__ = CachedAnchorGenerator
    return model


def lean_config(cfg):
    """``cfg`` naming the lean RPN and anchor generator (what :func:`load` then builds directly)."""
    cfg = cfg.clone()
    cfg.defrost()
    for key, (old, new) in LEAN_NAMES.items():
        node, last = cfg.MODEL[key.split(".")[1]], key.split(".")[2]
        if node[last] == old:
            node[last] = new
    cfg.freeze()
    return cfg


# ----------------------------------------------------------------------------------- export


class _ConvGraph(nn.Module):
    """Backbone + FPN + RPN head: the image -> features, then RPN logits and deltas per level."""

    def __init__(self, backbone, rpn_head, levels):
        super().__init__()
        self.backbone, self.head, self.levels = backbone, rpn_head, list(levels)
        self.names = list(backbone._out_features)

    def forward(self, x):
        out = self.backbone(x)
        logits, deltas = self.head([out[n] for n in self.levels])
        return tuple(out[n] for n in self.names) + tuple(logits) + tuple(deltas)


def _inputs_of(model, image: dict):
    """One real input of each graph, from running ``model`` on ``image``."""
    seen = {}
    hooks = [model.backbone.register_forward_pre_hook(lambda m, a: seen.setdefault("backbone", a[0])),
             model.roi_heads.box_head.register_forward_pre_hook(lambda m, a: seen.setdefault("box_head", a[0]))]
    try:
        with torch.no_grad():
            model([image])
    finally:
        for h in hooks:
            h.remove()
    return seen["backbone"].contiguous(), seen["box_head"].contiguous()


def export(model, image: dict, out_dir, opset: int = 17) -> dict[str, Path]:
    """The graphs of ``model`` (:data:`GRAPHS`) as fp32 ONNX files in ``out_dir``, with dynamic image
    size and proposal count.  ``image``: one model input, to trace with."""
    from .io import atomic_write

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).eval().to("cpu").to(memory_format=torch.contiguous_format)
    x, pooled = _inputs_of(model, image)
    levels = list(model.proposal_generator.in_features)
    names = list(model.backbone._out_features)
    graphs = {
        "backbone": (_ConvGraph(model.backbone, model.proposal_generator.rpn_head, levels), (x,), ["image"],
                     names + [f"logits_{n}" for n in levels] + [f"deltas_{n}" for n in levels],
                     {"image": {0: "batch", 2: "height", 3: "width"}}),
        "box_head": (model.roi_heads.box_head, (pooled,), ["pooled"], ["box_features"], {"pooled": {0: "boxes"}}),
    }
    paths = {}
    for name, (module, args, in_names, out_names, dynamic) in graphs.items():
        def write(tmp, module=module, args=args, in_names=in_names, out_names=out_names, dynamic=dynamic):
            with torch.no_grad():
                torch.onnx.export(module.eval(), args, tmp, opset_version=opset, dynamo=False, input_names=in_names,
                                  output_names=out_names, dynamic_axes=dynamic)
        paths[name] = atomic_write(out_dir / f"{name}.onnx", write)
    return paths


# ------------------------------------------------------------------------------ quantization


def calibration_data(model, images: list[dict], max_boxes: int = 512) -> dict[str, list[dict]]:
    """Each graph's inputs (name -> array) while the fp32 ``model`` (on the CPU) runs on ``images``:
    what static quantization measures its activation ranges on; at most ``max_boxes`` box-head
    inputs per image, so memory stays bounded."""
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("calibration runs the model on the CPU: move it there first (model.to('cpu'))")
    data = {g: [] for g in GRAPHS}

    def on_backbone(_m, args):
        data["backbone"].append({"image": args[0].contiguous().numpy()})

    def on_box(_m, args):
        x = args[0]
        if len(x) > max_boxes:  # evenly spaced over the ranking: a bounded sample of each image
            x = x[torch.linspace(0, len(x) - 1, max_boxes).long()]
        if len(x):
            data["box_head"].append({"pooled": x.contiguous().numpy()})

    hooks = [model.backbone.register_forward_pre_hook(on_backbone),
             model.roi_heads.box_head.register_forward_pre_hook(on_box)]
    try:
        with torch.no_grad():
            for im in images:
                model([im])
    finally:
        for h in hooks:
            h.remove()
    return data


def quantize(fp32: dict[str, Path], calibration: dict[str, list[dict]], out_dir, method: str = "minmax",
             graphs=GRAPHS) -> dict[str, Path]:
    """Static int8 quantization of each fp32 graph in ``graphs`` (the others are kept fp32) with ONNX
    Runtime: QDQ format, per-channel int8 weights, uint8 activations whose ranges come from
    ``calibration`` (``method``: minmax | percentile | entropy)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    from .io import atomic_write, copy_file

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"calibration method must be one of {sorted(methods)}, not {method!r}")

    class Reader(CalibrationDataReader):
        def __init__(self, rows):
            self.rows = iter(rows)

        def get_next(self):
            return next(self.rows, None)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, src in fp32.items():
        if name not in graphs:
            paths[name] = copy_file(src, out_dir / f"{name}.onnx")
            continue
        if not calibration.get(name):
            raise ValueError(f"no calibration data for {name}: run calibration_data on some images first")
        pre = out_dir / f"{name}.pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        paths[name] = atomic_write(out_dir / f"{name}.onnx", lambda tmp, pre=pre, name=name: quantize_static(
            str(pre), tmp, Reader(calibration[name]), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=methods[method]))
        pre.unlink()
    return paths


# ------------------------------------------------------------------------------ ORT modules


def _walk(graph):
    """Every node and tensor of an ONNX graph, its subgraphs (If/Loop/Scan bodies) included."""
    from onnx import AttributeProto

    tensors = list(graph.initializer) + [t.values for t in graph.sparse_initializer]
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                tensors.append(attr.t)
            elif attr.type == AttributeProto.TENSORS:
                tensors.extend(attr.tensors)
            subgraphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for g in subgraphs:
                n, t = _walk(g)
                nodes += n
                tensors += t
    return nodes, tensors


def read_onnx(path, sha256: str | None = None) -> bytes:
    """The bytes of an ONNX file, once checked: refused (``WeightsError`` naming the file) if
    missing, too large, not matching ``sha256``, not a valid model (truncated or damaged), holding
    weights in external files, or using operators outside the standard domains.  Hand these very
    bytes to ONNX Runtime: the file is not read twice."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: not found")
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise WeightsError(f"{path}: {size} bytes, more than the {MAX_MODEL_BYTES} an ONNX model may have here")
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise WeightsError(f"{path}: its SHA-256 does not match the manifest (altered or damaged?)")

    def invalid(exc):
        return WeightsError(f"{path}: not a valid ONNX model, truncated or damaged? ({type(exc).__name__}: "
                            f"{str(exc)[:200]})")

    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError, ...
        raise invalid(exc) from None
    nodes, tensors = _walk(proto.graph)
    for f in proto.functions:
        nodes += list(f.node)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
        raise WeightsError(f"{path}: refers to external data files; a model here must hold its own weights")
    domains = {n.domain for n in nodes} - ALLOWED_DOMAINS
    if domains:
        raise WeightsError(f"{path}: uses operators from {sorted(domains)}, not a standard domain")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx's ValidationError
        raise invalid(exc) from None
    return data


def check_onnx(path) -> None:
    """:func:`read_onnx`'s checks, without keeping the bytes."""
    read_onnx(path)


class OrtGraph:
    """One ONNX file in an ONNX Runtime session: CPU torch tensors in, CPU torch tensors out."""

    def __init__(self, path, threads: int = 2, sha256: str | None = None):
        import onnxruntime as ort

        data = read_onnx(path, sha256)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # no busy-waiting between runs: spinning threads would steal the CPU from whatever runs
        # next (the PyTorch baseline measured beside it, above all)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise WeightsError(f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}: {str(exc)[:200]})") from None
        self.path = Path(path)
        self.threads = int(threads)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [(o.name, o.shape) for o in self.session.get_outputs()]

    def __deepcopy__(self, memo):  # a session holds no per-call state: copies of a model share it
        return self

    def expect(self, inputs: list[str], outputs: list[tuple[str, int | None]]) -> None:
        """The graph must take ``inputs`` and give ``outputs`` (name, channels at dim 1, or None
        for any): else a ``WeightsError`` naming the file (an ONNX file of another model)."""
        got = [(n, shape[1] if len(shape) > 1 and isinstance(shape[1], int) else None) for n, shape in self.outputs]
        want = [(n, c) for n, c in outputs]
        if self.inputs != inputs or [n for n, _ in got] != [n for n, _ in want] or any(
                c is not None and g != c for (_, g), (_, c) in zip(got, want)):
            raise WeightsError(f"{self.path}: takes {self.inputs} and gives {got}, but this model needs {inputs} -> "
                               f"{want} (an ONNX file of another model or config?)")

    def __call__(self, *tensors):
        if any(t.device.type != "cpu" for t in tensors):
            raise ValueError(f"{self.path}: ONNX Runtime runs on the CPU here; move the model to the CPU first")
        feed = {n: t.detach().contiguous().numpy() for n, t in zip(self.inputs, tensors)}
        return [torch.from_numpy(o) for o in self.session.run(None, feed)]


class OrtBackbone(nn.Module):
    """Stands in for the FPN backbone (same outputs, same padding rules); its graph computes the
    RPN head's outputs in the same call and keeps them for :class:`OrtRPNHead`."""

    def __init__(self, graph: OrtGraph, like, levels):
        super().__init__()
        self.graph = graph
        self._out_features = list(like._out_features)
        self._levels = list(levels)
        self._shapes = like.output_shape()
        self._size_divisibility = like.size_divisibility
        self._padding_constraints = dict(getattr(like, "padding_constraints", {}) or {})
        self.rpn_outputs = None

    @property
    def size_divisibility(self):
        return self._size_divisibility

    @property
    def padding_constraints(self):
        return self._padding_constraints

    def output_shape(self):
        return self._shapes

    def forward(self, x):
        out = self.graph(x)
        n, k = len(self._out_features), len(self._levels)
        features = dict(zip(self._out_features, out[:n]))
        self.rpn_outputs = (features[self._levels[0]], out[n:n + k], out[n + k:])
        return features


class OrtRPNHead(nn.Module):
    """Stands in for the RPN head: hands over what the backbone's graph computed for these features."""

    def __init__(self, backbone: OrtBackbone):
        super().__init__()
        self._backbone = [backbone]  # a plain list: not a submodule twice

    def forward(self, features):
        backbone = self._backbone[0]
        stash, backbone.rpn_outputs = backbone.rpn_outputs, None  # handed over once, not kept alive
        if stash is None or stash[0] is not features[0]:
            raise RuntimeError("the RPN head of an ONNX Runtime model runs inside the backbone's graph: "
                               "call the model, not the head alone")
        return list(stash[1]), list(stash[2])


class OrtBoxHead(nn.Module):
    def __init__(self, graph: OrtGraph, like):
        super().__init__()
        self.graph = graph
        self._output_shape = like.output_shape
        self.out_dim = like.output_shape.channels

    @property
    def output_shape(self):
        return self._output_shape

    def forward(self, x):
        if len(x) == 0:
            return x.new_zeros((0, self.out_dim))
        return self.graph(x)[0]


def attach(model, graphs: dict, threads: int = 2):
    """A copy of ``model``, on the CPU, whose backbone, RPN head and box head run the ONNX files
    ``graphs`` (name -> path, or a loaded :class:`OrtGraph`) in ONNX Runtime, and whose RPN and
    anchors run leaner (:func:`lean`).  Each graph's inputs and outputs must fit ``model``."""
    model = lean(copy.deepcopy(model).eval().to("cpu"))
    levels = list(model.proposal_generator.in_features)
    shapes = model.backbone.output_shape()
    anchors = model.proposal_generator.anchor_generator.num_cell_anchors[0]
    conv = graphs["backbone"] if isinstance(graphs["backbone"], OrtGraph) else OrtGraph(graphs["backbone"], threads)
    conv.expect(["image"], [(n, shapes[n].channels) for n in model.backbone._out_features]
                + [(f"logits_{n}", anchors) for n in levels] + [(f"deltas_{n}", 4 * anchors) for n in levels])
    fc = graphs["box_head"] if isinstance(graphs["box_head"], OrtGraph) else OrtGraph(graphs["box_head"], threads)
    fc.expect(["pooled"], [("box_features", model.roi_heads.box_head.output_shape.channels)])
    backbone = OrtBackbone(conv, model.backbone, levels)
    box_head = OrtBoxHead(fc, model.roi_heads.box_head)
    model.backbone, model.roi_heads.box_head = backbone, box_head
    model.proposal_generator.rpn_head = OrtRPNHead(backbone)
    return model


# ------------------------------------------------------------------------------ deployable


def save(out_dir, cfg, model, graphs: dict, threads: int = 2) -> Path:
    """A deployable folder: ``cfg`` (with the pruned widths and test-time settings), the ONNX files
    ``graphs``, the box predictor's weights of ``model`` and a manifest of them all."""
    from .io import atomic_write, copy_file, write_json, write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CONFIG, lean_config(cfg).dump())
    for name in GRAPHS:
        if Path(graphs[name]).resolve() != (out / f"{name}.onnx").resolve():
            copy_file(graphs[name], out / f"{name}.onnx")
    state = {k: v.detach().cpu().contiguous() for k, v in model.roi_heads.box_predictor.state_dict().items()}
    atomic_write(out / PREDICTOR, lambda tmp: torch.save(state, tmp))
    files = [CONFIG, PREDICTOR] + [f"{g}.onnx" for g in GRAPHS]
    write_json(out / MANIFEST, {"format": "wildlib-deploy", "version": 1, "threads": int(threads),
                                "files": {f: {"bytes": (out / f).stat().st_size, "sha256": sha256_file(out / f)}
                                          for f in files}})
    return out


def deploy_bytes(folder) -> int:
    """Bytes on disk of everything a deployable folder needs (the manifest included)."""
    folder = Path(folder)
    return sum((folder / f).stat().st_size for f in [CONFIG, PREDICTOR, MANIFEST] + [f"{g}.onnx" for g in GRAPHS])


MAX_MANIFEST_BYTES = 1 << 20


def _check_manifest(folder: Path) -> dict:
    """The manifest, with every file present at its listed size, and the config's and predictor's
    SHA-256 checked (each ONNX file's is checked on the very bytes ONNX Runtime gets)."""
    from .io import read_json

    path = folder / MANIFEST
    if not path.is_file():
        raise WeightsError(f"{path}: not found (not a deployable folder written by wildlib.fast.save?)")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError("too large")
        manifest = read_json(path)
        files = manifest["files"]
        threads = manifest.get("threads", 2)
        assert isinstance(files, dict) and all(isinstance(e, dict) for e in files.values())
    except Exception:
        raise WeightsError(f"{path}: not a deployable manifest") from None
    if not isinstance(threads, int) or not 1 <= threads <= (os.cpu_count() or 1) * 4:
        raise WeightsError(f"{path}: threads must be an integer from 1 to {(os.cpu_count() or 1) * 4}, not {threads!r}")
    for name in [CONFIG, PREDICTOR] + [f"{g}.onnx" for g in GRAPHS]:
        f = folder / name
        entry = files.get(name)
        if entry is None or not f.is_file():
            raise WeightsError(f"{f}: missing (or not listed in {path})")
        size = f.stat().st_size
        if size != entry.get("bytes"):
            raise WeightsError(f"{f}: {size} bytes, the manifest says {entry.get('bytes')} (truncated or altered?)")
        if not name.endswith(".onnx") and sha256_file(f) != entry.get("sha256"):
            raise WeightsError(f"{f}: its SHA-256 does not match {path} (altered or damaged?)")
    return manifest


def _deploy_config(path: Path):
    """A deployable's config: safe YAML, no ``_BASE_`` (it would pull in a file the manifest does not
    cover, or a URL), built for the CPU without any weights download."""
    import yaml

    from .config import ConfigError, get_config

    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid config ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict) or "_BASE_" in raw:
        raise ConfigError(f"{path}: a deployable's config must be one self-contained mapping (no _BASE_)")
    cfg = get_config(str(path), freeze=False)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MOBILENET.PRETRAINED = "none"
    cfg.MODEL.DEVICE = "cpu"  # ONNX Runtime runs on the CPU here
    cfg.freeze()
    return cfg


def load(folder, threads: int | None = None):
    """(cfg, model) of a deployable folder written by :func:`save`, on the CPU: the manifest's sizes
    and digests, the config, each ONNX file (and that it fits the config) and the predictor's
    weights are checked before use; every refusal names its file."""
    from .config import ConfigError
    from .modeling import build_model

    folder = Path(folder)
    manifest = _check_manifest(folder)
    cfg = _deploy_config(folder / CONFIG)
    try:
        model = build_model(cfg, weights="")
    except (ConfigError, ValueError, KeyError, AssertionError, NotImplementedError) as exc:
        raise ConfigError(f"{folder / CONFIG}: does not build a model ({type(exc).__name__}: {exc})") from None
    path = folder / PREDICTOR
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: not a weights file that can be loaded safely ({exc})") from None
    pred = model.roi_heads.box_predictor
    expected = {k: tuple(v.shape) for k, v in pred.state_dict().items()}
    if not isinstance(state, dict) or {k: tuple(getattr(v, "shape", ())) for k, v in state.items()} != expected:
        raise WeightsError(f"{path}: the box predictor's weights do not fit {folder / CONFIG} "
                           f"(expected {expected})")
    pred.load_state_dict(state)
    threads = threads or manifest.get("threads", 2)
    graphs = {g: OrtGraph(folder / f"{g}.onnx", threads, sha256=manifest["files"][f"{g}.onnx"].get("sha256"))
              for g in GRAPHS}
    return cfg, attach(model, graphs, threads)


# ------------------------------------------------------------------------------ measuring


def macs(model, image: dict) -> float:
    """Multiply-accumulates of one forward pass on ``image`` (fvcore: one fused multiply-add = one),
    of a PyTorch model (for an ONNX Runtime model, count its PyTorch twin)."""
    from .profile import flops

    return float(sum(flops(model, [image]).values()))


def measure(name: str, model, cfg, dataset: str, baseline, inputs: list[dict], *, file_bytes: int,
            variant_inputs: list[dict] | None = None, twin=None, runs: int = 30, warmup: int = LATENCY_WARMUP,
            count_macs: bool = True) -> dict:
    """One row of the speed table: COCO AP50/AP of ``model`` on ``dataset`` (``cfg``'s test input
    size), its latency measured side by side with ``baseline`` (:func:`wildlib.evaluate.side_by_side`;
    PyTorch and ONNX Runtime at the same thread count), MACs and parameters (of ``twin``, the
    PyTorch model an ONNX Runtime one was exported from; MACs depend on the proposals its weights
    keep, so ``count_macs=False`` where the twin has no trained weights) and the bytes of the
    file(s) it is stored in."""
    m, t = accuracy_and_speed(model, cfg, dataset, baseline, inputs, variant_inputs, runs, warmup)
    # an ONNX Runtime model's MACs are its PyTorch twin's, at the same test-time settings
    twin = model if twin is None else test_time(copy.deepcopy(twin), **test_time_of(model))
    x = (variant_inputs or inputs)[0]
    return {"name": name, "AP50": m["AP50"], "AP50_ci95": m["AP50_ci95"], "AP": m["AP"],
            "latency_ms_median": t["variant_ms_median"],
            "latency_ms_p90": t["variant_ms_p90"], "speedup": t["speedup"],
            "baseline_ms_median": t["baseline_ms_median"], "macs": macs(twin, x) if count_macs else None,
            "params": int(sum(p.numel() for p in twin.parameters())), "file_bytes": int(file_bytes),
            "threads": t["threads"]}


def knob_settings(cfg, proposals, detections, input_sizes) -> list[dict]:
    """One knob at a time, the others at ``cfg``'s values: the settings a test-time sweep measures
    (``cfg``'s own setting once, first)."""
    base = {"pre_nms": int(cfg.MODEL.RPN.PRE_NMS_TOPK_TEST), "post_nms": int(cfg.MODEL.RPN.POST_NMS_TOPK_TEST),
            "detections": int(cfg.TEST.DETECTIONS_PER_IMAGE), "min_size": int(cfg.INPUT.MIN_SIZE_TEST)}
    out = [{"knob": "proposals", **base, "pre_nms": int(a), "post_nms": int(b)} for a, b in proposals]
    out += [{"knob": "detections", **base, "detections": int(d)} for d in detections]
    out += [{"knob": "input size", **base, "min_size": int(s)} for s in input_sizes]
    seen, unique = set(), []
    for s in [{"knob": "proposals", **base}] + out:
        key = tuple(s[k] for k in base)
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


def sweep_test_time(model, cfg, dataset: str, records: list[dict], baseline, inputs: list[dict], settings,
                    runs: int = 30, warmup: int = LATENCY_WARMUP, twin=None):
    """AP50 and side-by-side latency of ``model`` at each test-time setting (see :func:`knob_settings`);
    ``twin``: the PyTorch model whose MACs an ONNX Runtime ``model`` has."""
    import pandas as pd

    from .evaluate import load_inputs

    rows = []
    for s in settings:
        c = with_test_time(cfg, s["pre_nms"], s["post_nms"], s["detections"], s["min_size"])
        m = test_time(copy.deepcopy(model), s["pre_nms"], s["post_nms"], s["detections"])
        xs = load_inputs(c, records[:len(inputs)]) if s["min_size"] != cfg.INPUT.MIN_SIZE_TEST else inputs
        row = measure("", m, c, dataset, baseline, inputs, variant_inputs=xs, file_bytes=0, runs=runs, warmup=warmup,
                      twin=twin)
        rows.append({**s, **{k: row[k] for k in ("AP50", "AP", "latency_ms_median", "latency_ms_p90", "speedup",
                                                  "macs")}})
    return pd.DataFrame(rows)


def fastest_within(sweep, reference_ap50: float, tolerance: float) -> dict | None:
    """The setting (row of :func:`sweep_test_time`) with the lowest measured latency among those
    whose AP50 is within ``tolerance`` of ``reference_ap50``; None if none is."""
    ok = sweep[sweep["AP50"] >= reference_ap50 - tolerance]
    if not len(ok):
        return None
    row = ok.sort_values("latency_ms_median").iloc[0]
    return {k: int(row[k]) for k in ("pre_nms", "post_nms", "detections", "min_size")}


def pick_test_time(sweep, cfg, max_drop: float) -> dict:
    """Per knob, the cheapest setting swept whose AP50 is at most ``max_drop`` below the AP50 of
    ``cfg``'s own setting (the sweep's first row): what each knob costs, not where the model
    stands; ``cfg``'s own value if none is cheaper.  One combined test-time setting."""
    defaults = {"pre_nms": int(cfg.MODEL.RPN.PRE_NMS_TOPK_TEST), "post_nms": int(cfg.MODEL.RPN.POST_NMS_TOPK_TEST),
                "detections": int(cfg.TEST.DETECTIONS_PER_IMAGE), "min_size": int(cfg.INPUT.MIN_SIZE_TEST)}
    own = sweep.iloc[0]
    if any(int(own[k]) != v for k, v in defaults.items()):
        raise ValueError("the sweep's first row must be cfg's own setting (as knob_settings puts it)")
    out = dict(defaults)
    for knob, keys in (("proposals", ("post_nms", "pre_nms")), ("detections", ("detections",)),
                       ("input size", ("min_size",))):
        df = sweep[(sweep["knob"] == knob) & (sweep["AP50"] >= own["AP50"] - max_drop)]
        if len(df):
            best = df.sort_values(list(keys)).iloc[0]
            if all(best[k] <= defaults[k] for k in keys):
                out.update({k: int(best[k]) for k in keys})
    return out


# ------------------------------------------------------------------- reloaded, fresh process


def remeasure(spec: dict) -> dict:
    """Load the deployable folder ``spec["deploy"]`` from disk and measure it as :func:`measure`
    does, beside the baseline ``spec["baseline_dir"]`` (what :func:`in_fresh_process` runs)."""
    from .data import load_split, register
    from .evaluate import load_inputs
    from .stages import load_trained

    torch.set_num_threads(int(spec["threads"]))
    data_dir = Path(spec["data_dir"])
    classes, aliases = tuple(spec["classes"]), dict(spec.get("aliases") or {})
    datasets = register(data_dir, classes, aliases=aliases, coco_dir=Path(spec["work_dir"]) / "coco")
    base_cfg, baseline = load_trained(spec["baseline_dir"])
    cfg, model = load(spec["deploy"], threads=int(spec["threads"]))
    records = load_split(data_dir, "valid", classes, aliases=aliases)[: int(spec["images"])]
    inputs, own = load_inputs(base_cfg, records), load_inputs(cfg, records)
    row = measure("reloaded", model, cfg, datasets["valid"], baseline, inputs, variant_inputs=own,
                  file_bytes=deploy_bytes(spec["deploy"]), twin=twin_of(cfg), runs=int(spec["runs"]),
                  warmup=int(spec["warmup"]), count_macs=False)
    return {**row, "pid": os.getpid()}


def reload_spec(deploy, run_dir, *, threads: int, runs: int, warmup: int = LATENCY_WARMUP,
                images: int = LATENCY_IMAGES) -> dict:
    """What :func:`in_fresh_process` needs to reload ``deploy`` and measure it beside the run's
    baseline on the run's data (as stage 00 recorded it), ``runs`` timed passes at ``threads``.
    Introduced in notebook 04, §5."""
    from .stages import BASELINE, classes_for, data_dir_for

    run = Path(run_dir)
    classes, aliases = classes_for(run)
    return {"deploy": str(deploy), "baseline_dir": str(run / BASELINE), "data_dir": str(data_dir_for(run)),
            "classes": list(classes), "aliases": aliases, "threads": int(threads), "runs": int(runs),
            "warmup": int(warmup), "images": int(images)}


def twin_of(cfg):
    """A PyTorch model of ``cfg``'s shapes (random weights): what parameters are counted on."""
    from .modeling import build_model

    return build_model(cfg, weights="")


def in_fresh_process(spec: dict, work_dir, timeout: float = 900) -> dict:
    """Run :func:`remeasure` in a new Python process (nothing shared with this one but files)."""
    import subprocess
    import sys

    from .io import read_json, write_json

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "work_dir": str(work_dir)}
    write_json(work_dir / "remeasure_spec.json", spec)
    out = work_dir / "remeasure.json"
    proc = subprocess.run([sys.executable, "-m", "wildlib.fast", str(work_dir / "remeasure_spec.json"), str(out)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"re-measuring {spec['deploy']} in a fresh process failed:\n{proc.stderr[-3000:]}")
    return read_json(out)


def main(argv=None) -> int:
    import argparse

    from .io import read_json, write_json

    ap = argparse.ArgumentParser(description="Reload a deployable folder and measure it beside the baseline.")
    ap.add_argument("spec", help="JSON: deploy, baseline_dir, data_dir, classes, aliases, threads, runs, warmup, images")
    ap.add_argument("out", help="where the measured row is written (JSON)")
    args = ap.parse_args(argv)
    write_json(args.out, remeasure(read_json(args.spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
