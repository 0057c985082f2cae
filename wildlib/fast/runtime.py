"""ONNX Runtime in place of the detector's modules: an ONNX file checked before it is parsed
(:func:`read_onnx`), run in a session (:class:`OrtGraph`), standing in for the backbone, the RPN
head and the box head of a ``GeneralizedRCNN`` (:func:`attach`), while Detectron2's own code keeps
doing the rest in float (:data:`FLOAT_PARTS`).  Introduced in notebook 04_prune_channels, section 4."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..modeling import WeightsError
from .lean_parts import lean

FLOAT_PARTS = ("input normalisation and padding", "anchor generation", "proposal top-k and NMS", "ROIAlign",
               "box predictor (two small FC layers)", "box decoding, per-class NMS, rescaling")
MAX_MODEL_BYTES = 1 << 30  # an ONNX file larger than this is refused before it is parsed
ALLOWED_DOMAINS = {"", "ai.onnx", "com.microsoft"}


def _walk(graph):
    """Every node and tensor of an ONNX graph, its subgraphs (If/Loop/Scan bodies) included."""
    from onnx import AttributeProto  # ONNX: a heavy optional dependency, loaded where used

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
    import onnx  # ONNX: a heavy optional dependency, loaded where used

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


@dataclass(frozen=True)
class RuntimeSettings:
    """ONNX Runtime's session settings: intra-op ``threads``, graph ``optimization`` (basic |
    extended | all: which fusions ONNX Runtime applies when it loads the graph), ``execution``
    (sequential | parallel: independent branches at once, ``inter_threads`` of them).  Which is
    fastest depends on the CPU: notebook 04 chooses them by a short benchmark
    (:func:`wildlib.speed.choose_runtime`).  Threads never spin between runs: a spinning thread
    would steal the CPU from whatever runs next (the PyTorch baseline measured beside it, above all)."""

    threads: int = 2
    optimization: str = "all"
    execution: str = "sequential"
    inter_threads: int = 1

    def __post_init__(self):
        if self.optimization not in ("basic", "extended", "all") or self.execution not in ("sequential", "parallel"):
            raise ValueError(f"unknown ONNX Runtime settings: {self}")
        if not (isinstance(self.threads, int) and isinstance(self.inter_threads, int)
                and 1 <= self.threads <= 256 and 1 <= self.inter_threads <= 256):
            raise ValueError(f"threads must be integers from 1 to 256: {self}")

    def to_dict(self) -> dict:
        return asdict(self)

    def session_options(self):
        import onnxruntime as ort  # ONNX Runtime: a heavy optional dependency, loaded where used

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = self.inter_threads
        so.execution_mode = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
                             "parallel": ort.ExecutionMode.ORT_PARALLEL}[self.execution]
        so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                       "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                       "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[self.optimization]
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return so


class OrtGraph:
    """One ONNX file in an ONNX Runtime session: CPU torch tensors in, CPU torch tensors out.
    ``settings`` (:class:`RuntimeSettings`), else the defaults at ``threads``."""

    def __init__(self, path, threads: int = 2, sha256: str | None = None, settings: RuntimeSettings | None = None):
        import onnxruntime as ort  # ONNX Runtime: a heavy optional dependency, loaded where used

        data = read_onnx(path, sha256)
        settings = settings or RuntimeSettings(threads=int(threads))
        so = settings.session_options()
        try:
            self.session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise WeightsError(f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}: {str(exc)[:200]})") from None
        self.path = Path(path)
        self.settings = settings
        self.threads = settings.threads
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
    anchors run leaner (:func:`lean`).  Each graph's inputs and outputs must fit ``model``.
    Introduced in notebook 04_prune_channels, section "4 · int8 inference with real int8 kernels"."""
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
