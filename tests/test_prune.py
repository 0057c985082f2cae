from types import SimpleNamespace

import pytest
import torch
from torch.nn.utils import prune as tprune

from detectron2.utils.events import EventStorage
from wildlib import modeling
from wildlib import prune as wp


@pytest.fixture
def model(untrained_model):
    """The session's shared untrained model (tests/conftest.py): read only here; the tests prune
    copies of it (``pruned_copy``, ``copy.deepcopy``)."""
    return untrained_model


def test_every_conv_and_linear_has_a_scope(model):
    layers = wp.prunable(model, wp.SCOPES)
    n_all = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    assert len(layers) == n_all
    scopes = {wp.scope_of(n) for n, _ in layers}
    assert scopes == set(wp.SCOPES)
    assert "box_predictor" not in {wp.scope_of(n) for n, _ in wp.prunable(model, "all")}


def test_pruned_weights_keep_their_memory_format(model):
    """Pruning used to rewrite channels-last weights as NCHW, so a one-shot pruned model was timed
    in another layout than every other model (0.87x in notebook 05: a layout artifact)."""
    import copy

    cl = torch.channels_last
    dense = copy.deepcopy(model).to(memory_format=cl)
    pruned = wp.pruned_copy(dense, "all", 0.5)
    four_d = [(n, p) for n, p in pruned.named_parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert four_d and all(p.is_contiguous(memory_format=cl) for _, p in four_d), \
        [n for n, p in four_d if not p.is_contiguous(memory_format=cl)][:3]
    assert wp.sparsity(pruned) == pytest.approx(0.5, abs=1e-3)


def test_parse_scopes():
    assert wp.parse_scopes("backbone+box_head") == ("backbone", "box_head")
    assert wp.parse_scopes("backbone+roi_head") == ("backbone", "box_head")  # as a run recorded it before the rename
    assert wp.parse_scopes("all") == wp.DEFAULT_SCOPES
    with pytest.raises(ValueError, match="unknown pruning scope"):
        wp.parse_scopes("head")


@pytest.mark.parametrize("scopes, amount", [("backbone", 0.3), ("all", 0.8), ("backbone+box_head", 0.5)])
def test_global_magnitude_hits_the_ratio_and_only_the_scope(model, scopes, amount):
    m = wp.pruned_copy(model, scopes, amount)
    assert not any(hasattr(mod, "weight_orig") for mod in m.modules())  # masks folded in
    assert wp.sparsity(m, scopes) == pytest.approx(amount, abs=1e-4)
    others = set(wp.SCOPES) - set(wp.parse_scopes(scopes))
    assert wp.sparsity(m, tuple(others)) == pytest.approx(wp.sparsity(model, tuple(others)))


def test_global_ranking_prunes_smallest_magnitudes(model):
    m = wp.pruned_copy(model, "box_head", 0.5)
    before = torch.cat([mod.weight.flatten().abs() for _, mod in wp.prunable(model, "box_head")])
    after = torch.cat([mod.weight.flatten() for _, mod in wp.prunable(m, "box_head")])
    threshold = before.kthvalue(int(0.5 * before.numel())).values
    assert (before[after == 0] <= threshold + 1e-12).all()
    assert (before[after != 0] >= threshold - 1e-12).all()


def test_lamp_scores_are_scale_free_and_ordered():
    w = torch.tensor([[0.5, -2.0], [1.0, 0.0]])
    s = wp.lamp_scores(w)
    # sorted squares 0, 0.25, 1, 4: score = w^2 / sum of squares at least as large
    assert s.flatten().tolist() == pytest.approx([0.25 / 5.25, 1.0, 1.0 / 5.0, 0.0])
    torch.testing.assert_close(wp.lamp_scores(w * 1000), s)  # a layer's scale does not matter


def test_lamp_keeps_every_layer_alive_where_global_l1_empties_some(model):
    import copy

    by = {}
    for ranking in wp.RANKINGS:
        m = wp.make_permanent(wp.global_magnitude(copy.deepcopy(model), "all", 0.95, ranking=ranking))
        assert wp.sparsity(m) == pytest.approx(0.95, abs=1e-4)
        by[ranking] = wp.sparsity_table(m, "all").set_index("layer")["sparsity"]
    assert by["lamp"].max() < 1.0
    # global L1 prunes the layers with small weights (the large fan-in box head) almost entirely
    assert by["l1"]["roi_heads.box_head.fc1"] > by["lamp"]["roi_heads.box_head.fc1"]
    with pytest.raises(ValueError, match="unknown ranking"):
        wp.global_magnitude(copy.deepcopy(model), "all", 0.5, ranking="l2")


def test_a_new_ranking_is_one_function_and_one_registration(model, monkeypatch):
    """The slot for a pruning criterion: register a function weights -> scores, and one-shot,
    layer-wise and gradual pruning take it by name (here a deliberately bad one, for a known answer)."""
    import copy

    monkeypatch.setattr(wp.masks, "RANKINGS", dict(wp.RANKINGS))  # registrations are global: undone afterwards

    @wp.register_ranking("largest_first")
    def largest_first(weight):
        return 1.0 / (weight.detach().abs() + 1e-12)

    for prune in (lambda m: wp.global_magnitude(m, "box_head", 0.5, ranking="largest_first"),
                  lambda m: wp.layerwise_magnitude(m, {"box_head": 0.5}, "box_head", ranking="largest_first")):
        m = prune(copy.deepcopy(model))
        before = torch.cat([mod.weight.flatten().abs() for _, mod in wp.prunable(model, "box_head")])
        after = torch.cat([mod.weight.flatten() for _, mod in wp.prunable(m, "box_head")])
        assert (after == 0).float().mean().item() == pytest.approx(0.5, abs=1e-4)
        assert before[after == 0].min() >= before[after != 0].max() - 1e-12  # the largest went first
    assert wp.GradualPruning("all", 0.5, ranking="largest_first").ranking == "largest_first"
    with pytest.raises(ValueError, match="registered already"):
        wp.register_ranking("lamp")(largest_first)
    wp.register_ranking("negative")(lambda w: -w.detach().abs())  # torch would rank |scores|: refused
    with pytest.raises(ValueError, match="negative scores"):
        wp.global_magnitude(copy.deepcopy(model), "box_head", 0.5, ranking="negative")


def test_cubic_schedule():
    s = [wp.cubic_schedule(t, 10, 110, 0.8) for t in range(0, 130, 5)]
    assert s[0] == 0 and s[-1] == 0.8 and all(b >= a for a, b in zip(s, s[1:]))
    # front-loaded: half way through, 7/8 of the target is reached
    assert wp.cubic_schedule(60, 10, 110, 0.8) == pytest.approx(0.8 * (1 - 0.5**3))


@pytest.mark.parametrize("ranking", list(wp.RANKINGS))
def test_gradual_hook_reaches_target_and_keeps_masks(model, ranking):
    import copy

    m = copy.deepcopy(model)
    trainer = SimpleNamespace(model=m, iter=0, start_iter=0, max_iter=50)
    hook = wp.GradualPruning("all", final=0.7, start=0, end=40, every=10, ranking=ranking)
    hook.trainer = trainer
    with EventStorage() as storage:
        trainer.storage = storage
        hook.before_train()
        for it in range(50):
            trainer.iter = it
            hook.after_step()
    seen = [s for _, s in hook.history]
    assert all(b >= a - 1e-9 for a, b in zip(seen, seen[1:]))
    assert seen[-1] == pytest.approx(0.7, abs=1e-4)
    assert any(tprune.is_pruned(mod) for mod in m.modules())
    wp.make_permanent(m)
    assert wp.sparsity(m) == pytest.approx(0.7, abs=1e-4)


def test_sparse_file_is_exact_and_smaller(model, tmp_path):
    m = wp.pruned_copy(model, "all", 0.8)
    dense = modeling.save_weights(m, tmp_path / "dense.pth")
    sparse = wp.save_sparse(m, tmp_path / "w.npz")
    back = wp.load_sparse(sparse)
    assert set(back) == set(m.state_dict())
    assert all(torch.equal(back[k], v) for k, v in m.state_dict().items())
    assert sparse.stat().st_size < 0.45 * dense.stat().st_size
    assert wp.state_sparsity(back, m) == pytest.approx(wp.sparsity(m))
    # load_sparse reads with allow_pickle=False; that a file needing pickle is refused (and runs
    # nothing) is test_untrusted.py::test_a_sparse_file_with_a_pickled_object_runs_no_code


def test_sensitivity_ratios_pick_largest_within_tolerance():
    import pandas as pd

    scan = pd.DataFrame({"group": ["a", "a", "a", "b", "b"], "ratio": [0.5, 0.8, 0.95, 0.5, 0.8],
                         "AP50": [80.0, 79.5, 60.0, 70.0, 60.0]})
    assert wp.ratios_from_sensitivity(scan, 80.2, 1.0) == {"a": 0.8, "b": 0.0}


@pytest.mark.parametrize("ranking", ["l1", "lamp"])
@pytest.mark.parametrize("amount", [0.8])
def test_sparsity_at_is_what_global_pruning_does_without_pruning(model, ranking, amount):
    """The slider's lookup (sorted scores, one threshold) against torch.nn.utils.prune on a copy."""
    ranked = wp.ranked_scores(model, "all", rankings=(ranking,))
    looked_up = wp.sparsity_at(ranked, amount)
    pruned = wp.group_sparsity(wp.pruned_copy(model, "all", amount, ranking))
    assert set(looked_up.index) == set(pruned.index)
    for g in pruned.index:
        assert looked_up.loc[g, ranking] == pytest.approx(pruned.loc[g, "sparsity"], abs=1e-4), g
        assert looked_up.loc[g, "weights"] == pruned.loc[g, "weights"]
    assert wp.sparsity_at(ranked, 0.0)[ranking].eq(0).all()
