"""wildlib.fast.qat: the weights' fake quantization is ONNX Runtime's own int8 grid, gradients pass
through it, and a fine-tuning leaves the weights on it."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from wildlib.fast import graphs, qat


def test_fake_quantize_is_the_per_channel_symmetric_int8_grid():
    w = torch.randn(4, 3, 3, 3)
    w[2] = 0.0  # an all-zero channel keeps scale 1 and its zeros
    q = qat.fake_quantize(w)
    scale = qat.weight_scales(w)
    steps = q / scale.view(-1, 1, 1, 1)
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 127
    assert torch.allclose(q.abs().reshape(4, -1).amax(1), w.abs().reshape(4, -1).amax(1))  # each peak is +-127 steps
    assert scale[2] == 1.0 and q[2].abs().sum() == 0
    assert (q - w).abs().max() <= scale.max() / 2 + 1e-7


def test_onnx_runtime_quantizes_a_weight_on_the_grid_to_exactly_itself(tmp_path):
    """The point of the fine-tuning: what it trained is what the int8 graph holds."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3)
    with torch.no_grad():
        conv.weight.copy_(qat.fake_quantize(conv.weight))
    x = torch.randn(1, 3, 16, 16)
    torch.onnx.export(conv, (x,), tmp_path / "conv.onnx", input_names=["x"], output_names=["y"], dynamo=False)
    out = graphs.quantize_file(tmp_path / "conv.onnx", tmp_path / "conv_int8.onnx",
                               [{"x": torch.randn(1, 3, 16, 16).numpy()} for _ in range(4)], "minmax", "qdq")
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    q = next(v for v in inits.values() if v.dtype == np.int8 and v.shape == tuple(conv.weight.shape))
    scales = next(v for v in inits.values() if v.dtype == np.float32 and v.shape == (8,))
    assert np.allclose(q * scales.reshape(-1, 1, 1, 1), conv.weight.detach().numpy(), rtol=0, atol=1e-6)


def test_the_gradient_passes_the_rounding_and_the_weights_stay_on_the_grid():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    layers = [(str(i), m) for i, m in enumerate(model) if isinstance(m, nn.Conv2d)]
    for _, m in layers:
        torch.nn.utils.parametrize.register_parametrization(m, "weight", qat.WeightFakeQuant())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(2, 3, 8, 8)).square().mean().backward()
        assert all(m.parametrizations.weight.original.grad.abs().sum() > 0 for _, m in layers)
        opt.step()
    for _, m in layers:
        torch.nn.utils.parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        assert torch.allclose(m.weight, qat.fake_quantize(m.weight), atol=1e-6)


def test_attach_and_detach_cover_the_layers_the_graph_quantizes(untrained_model):
    import copy

    model = copy.deepcopy(untrained_model)
    assert not qat.on_grid(model)  # trained (here: initialised) weights lie between the grid's points
    n = qat.attach_fake_quant(model)
    names = [name for name, _ in qat.quantized_layers(model)]
    assert n == len(names) > 10 and not any(name.startswith("roi_heads.box_predictor") for name in names)
    qat.detach_fake_quant(model)
    assert qat.on_grid(model)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for _, m in qat.quantized_layers(model))
