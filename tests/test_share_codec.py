import copy

import numpy as np
import pytest
import torch

from wildlib import cluster, codec, modeling, share
from wildlib import prune as wp


@pytest.fixture(scope="module")
def pruned_shared(untrained_model):
    model = wp.pruned_copy(untrained_model, "all", 0.8)  # a copy: the shared model stays as built
    layers = share.share_weights(model, bits={"conv": 5, "fc": 4}, init="linear")
    return model, layers


@pytest.mark.parametrize("init", cluster.INITS)
def test_kmeans_matches_a_plain_lloyd(init):
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(-1, 0.1, 500), rng.normal(0.5, 0.2, 800), rng.normal(2, 0.05, 200)])
    c, labels = share.kmeans_1d(v, 8, init=init, iters=50)
    # every value sits with its nearest centroid, and centroids are their clusters' means
    assert np.array_equal(labels, np.abs(v[:, None] - c[None, :]).argmin(1))
    for j in np.unique(labels):
        assert c[j] == pytest.approx(v[labels == j].mean(), abs=1e-5)


def test_kmeans_fewer_distinct_values_than_k():
    c, labels = share.kmeans_1d(np.array([1.0, 1.0, 2.0]), 16)
    assert c.size == 2 and set(labels) == {0, 1}


def test_sharing_keeps_zeros_and_limits_distinct_values(pruned_shared):
    model, layers = pruned_shared
    mods = dict(model.named_modules())
    assert not any(share.is_depthwise(mods[n]) for n in layers)
    assert len(layers) == sum(not share.is_depthwise(m) for _, m in wp.prunable(model, wp.SCOPES))
    assert wp.sparsity(model) == pytest.approx(0.8, abs=1e-4)
    for name, layer in layers.items():
        w = dict(model.named_modules())[name].weight.detach().numpy()
        assert np.array_equal(w != 0, layer.mask)
        assert np.unique(w[w != 0]).size <= 2 ** layer.bits
        assert layer.bits == (4 if "box_head" in name or "box_predictor" in name else 5)


def test_codec_roundtrip_is_bit_exact(pruned_shared, tmp_path):
    model, layers = pruned_shared
    state = model.state_dict()
    path = codec.save(tmp_path / "m.wlc", state, {codec.param_key(n): l for n, l in layers.items()})
    back = codec.load(path)
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    dense = modeling.save_weights(model, tmp_path / "dense.pth").stat().st_size
    assert path.stat().st_size * 10 < dense  # 80% sparse + 4-5 bit codes: > 10x


def test_corrupted_and_truncated_files_are_errors(pruned_shared, tmp_path):
    model, layers = pruned_shared
    blob = codec.encode(model.state_dict(), {codec.param_key(n): l for n, l in layers.items()})
    with pytest.raises(codec.CodecError, match="truncated|checksum"):
        codec.decode(blob[: len(blob) // 2])
    bad = bytearray(blob)
    bad[-100] ^= 0xFF
    with pytest.raises(codec.CodecError, match="checksum mismatch"):
        codec.decode(bytes(bad))
    with pytest.raises(codec.CodecError, match="bad magic"):
        codec.decode(b"PK\x03\x04" + blob[4:])
    with pytest.raises(codec.CodecError, match="truncated|corrupted"):
        codec.decode(blob[:20])
    with pytest.raises(codec.CodecError, match="format version 1"):
        codec.decode(b"WLC1" + blob[4:])


def test_gap_coding_handles_long_runs():
    mask = np.zeros(5000, bool)
    mask[[0, 254, 255, 256, 1000, 4999]] = True
    g = codec.gaps_encode(mask)
    assert np.array_equal(codec.gaps_decode(g, mask.size), mask)


def test_int8_roundtrip(untrained_model, tmp_path):
    model = copy.deepcopy(untrained_model)  # quantize_int8 rewrites the weights in place
    q = share.quantize_int8(model)
    path = codec.save(tmp_path / "q.wlc", model.state_dict(), int8={codec.param_key(n): v for n, v in q.items()})
    back = codec.load(path)
    for k, v in model.state_dict().items():
        assert torch.equal(back[k], v), k


def test_centroid_gradient_is_the_sum_over_its_cluster():
    lin = torch.nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0, 2, 1], [2, 1, 0, 2], [1, 1, 2, 0]]))
    layer = share.SharedLayer("l", (3, 4), 1, np.array([1.0, 2.0], np.float32),
                              np.array([0, 1, 0, 1, 0, 1, 0, 0, 1]), lin.weight.detach().numpy() != 0)
    share.CentroidWeight(lin, layer)
    x = torch.randn(5, 4)
    lin(x).sum().backward()
    g_w = x.sum(0).expand(3, 4)  # d(sum)/dW[i, j] = sum_n x[n, j]
    idx = lin.shared_index
    for j in range(2):
        assert lin.centroids.grad[j] == pytest.approx(float(g_w[idx == j].sum()), rel=1e-5)


def test_depthwise_int8_and_folded_bn_roundtrip_and_streams(untrained_model, tmp_path):
    torch.manual_seed(2)
    model = copy.deepcopy(untrained_model)  # its statistics are rewritten below; eval mode as built
    with torch.no_grad():  # give the frozen BatchNorms non-trivial statistics
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.5)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    x = [{"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8).float(), "height": 96, "width": 128}]
    feats = model.backbone(model.preprocess_image(x).tensor)
    folded = copy.deepcopy(model)
    assert share.fold_frozen_bn(folded) > 10
    feats2 = folded.backbone(folded.preprocess_image(x).tensor)
    for k in feats:  # the same function, to float rounding
        torch.testing.assert_close(feats2[k], feats[k], rtol=1e-4, atol=1e-4)

    model2 = wp.pruned_copy(folded, "all", 0.8)  # as in stage 03: pruned, folded, depthwise int8, shared
    dw = share.quantize_depthwise(model2)
    mods = dict(model2.named_modules())
    assert dw and all(share.is_depthwise(mods[n]) for n in dw)
    for n, (q, scales) in dw.items():
        assert q.dtype == np.int8 and scales.shape == (q.shape[0],)
    layers = share.share_weights(model2, bits=4)
    assert not set(layers) & set(dw)
    path = codec.save(tmp_path / "m.wlc", model2.state_dict(), {codec.param_key(n): l for n, l in layers.items()},
                      int8={codec.param_key(n): v for n, v in dw.items()})
    back = codec.load(path)
    for k, v in model2.state_dict().items():
        assert torch.equal(back[k], v), k
    report = {r["stream"]: r for r in codec.stream_report(path)}
    assert {"gaps", "codes", "codebooks", "int8", "scales", "dense.float32"} <= set(report)
    assert sum(r["bytes"] for r in report.values()) < path.stat().st_size
    # folded statistics are constants: the dense stream compresses far below its raw size
    assert report["dense.float32"]["bytes"] < 0.7 * report["dense.float32"]["raw_bytes"]
