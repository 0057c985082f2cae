"""The detector's convolutional and FC parts as ONNX graphs (:data:`GRAPHS`), exported from a
``GeneralizedRCNN`` and statically quantized to int8 with ONNX Runtime.  Introduced in notebook
04_prune_channels, section 4.

``backbone``  MobileNetV2 + FPN + the RPN head's convs, in one graph (one call, one wake-up of
              ONNX Runtime's threads): the normalised, padded image -> p2..p6, and the RPN's
              objectness logits and anchor deltas per level
``box_head``  the box head's FC layers: pooled 7x7 features -> box features
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_write, copy_file

GRAPHS = ("backbone", "box_head")
CALIB_IMAGES = 32    # training images that calibrate the int8 activation ranges (notebook 04, section 4)


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
    size and proposal count.  ``image``: one model input, to trace with.
    Introduced in notebook 04_prune_channels, section "4 · int8 inference with real int8 kernels"."""

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
    inputs per image, so memory stays bounded.
    Introduced in notebook 04_prune_channels, section "4 · int8 inference with real int8 kernels"."""
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


def quantize_file(src, dst, rows: list[dict], method: str = "minmax", fmt: str = "qdq",
                  select=None) -> Path:
    """Static int8 quantization of one fp32 ONNX file with ONNX Runtime: per-channel int8 weights,
    uint8 activations whose ranges come from the feeds ``rows`` (``method``: minmax | percentile |
    entropy), in operator format ``fmt`` (qdq: QuantizeLinear/DequantizeLinear pairs ONNX Runtime
    fuses into int8 kernels; qoperator: QLinearConv, ... directly).  ``select``: (op types, a
    function of the pre-processed ONNX model giving the node names to quantize), else every node
    ONNX Runtime can quantize."""
    import onnx  # ONNX (Runtime): heavy optional dependencies, loaded where used
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    if method not in methods or fmt not in formats:
        raise ValueError(f"calibration method must be one of {sorted(methods)} and format one of {sorted(formats)}, "
                         f"not {method!r}, {fmt!r}")
    if not rows:
        raise ValueError(f"no calibration data for {src}: run the model on some training images first")

    class Reader(CalibrationDataReader):
        def __init__(self, rows):
            self.rows = list(rows)
            self.set_range(0, len(self.rows))

        def __len__(self):
            return len(self.rows)

        def set_range(self, start_index: int, end_index: int):
            self.next = iter(self.rows[start_index:end_index])

        def get_next(self):
            return next(self.next, None)

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    # the histogram methods stack every row's intermediate tensors into one array, which fails where
    # their shapes differ between images (proposals per image, image sizes): one row per collection
    # step (ONNX Runtime's strided calibration; its histograms merge across steps)
    extra = {} if method == "minmax" else {"extra_options": {"CalibStridedMinMax": 1}}
    if select is not None:
        ops, nodes_of = select
        extra |= {"op_types_to_quantize": list(ops), "nodes_to_quantize": nodes_of(onnx.load(str(pre)))}
    try:
        return atomic_write(dst, lambda tmp: quantize_static(
            str(pre), tmp, Reader(rows), quant_format=formats[fmt], per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=methods[method], **extra))
    finally:
        pre.unlink(missing_ok=True)


def quantize(fp32: dict[str, Path], calibration: dict[str, list[dict]], out_dir, method: str = "minmax",
             graphs=GRAPHS) -> dict[str, Path]:
    """Static int8 quantization of each fp32 graph in ``graphs`` (the others are kept fp32) with ONNX
    Runtime (:func:`quantize_file`, QDQ format), activation ranges from ``calibration``.
    Introduced in notebook 04_prune_channels, section "4 · int8 inference with real int8 kernels"."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, src in fp32.items():
        if name not in graphs:
            paths[name] = copy_file(src, out_dir / f"{name}.onnx")
            continue
        if not calibration.get(name):
            raise ValueError(f"no calibration data for {name}: run calibration_data on some images first")
        paths[name] = quantize_file(src, out_dir / f"{name}.onnx", calibration[name], method)
    return paths
