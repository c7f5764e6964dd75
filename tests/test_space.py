"""The architecture space: sampling, validation, analytic parameter counts, building and graph coverage."""
import functools
import random
from collections import Counter

import pytest
import torch

from ghn import space as S
from ghn.data import EVAL_SIZES, ArchDataset


def _sample(split, n, seed=0):
    rng = random.Random(seed)
    return [S.sample_spec(rng, split) for _ in range(n)]


def _cnn(**kw):
    spec = {"family": "cnn", "C": 16, "cells": 4, "steps": 2, "mult": 2.0, "norm": "bn", "act": "relu",
            "stem": "conv", "stem_k": 3, "stem_mult": 1, "fc_hidden": 0,
            "normal": [["sep3", 1, "skip", 0], ["conv3", 2, "max3", 1]],
            "reduce": [["conv1", 1, "avg3", 0], ["se", 2, "dil3", 1]]}
    spec.update(kw)
    return spec


def test_sampling_is_deterministic_and_does_not_touch_global_rng():
    state = random.getstate()
    torch_state = torch.random.get_rng_state()
    a, b = _sample("train", 50, seed=3), _sample("train", 50, seed=3)
    assert [S.spec_hash(s) for s in a] == [S.spec_hash(s) for s in b]
    assert random.getstate() == state and torch.equal(torch.random.get_rng_state(), torch_state)
    assert _sample("train", 5, seed=4) != a[:5]


def test_spec_hash_is_canonical():
    spec = _cnn()
    shuffled = dict(reversed(list(spec.items())))
    assert S.spec_hash(spec) == S.spec_hash(shuffled)
    assert S.canonical_json(spec).startswith('{"C":16,"act":"relu"')
    assert S.spec_hash(_cnn(C=24)) != S.spec_hash(spec)


def test_every_op_and_option_appears_in_train():
    specs = _sample("train", 600)
    fams = Counter(s["family"] for s in specs)
    assert set(fams) == {"cnn", "vit"}
    assert 0.08 < fams["vit"] / len(specs) < 0.25
    cnn = [s for s in specs if s["family"] == "cnn"]
    ops = Counter()
    for s in cnn:
        ops.update(S.spec_ops(s))
    assert set(ops) == set(S.OPS)
    assert {s["norm"] for s in cnn} == set(S.NORMS)
    assert {s["act"] for s in cnn} == set(S.ACTS)
    assert {s["stem"] for s in cnn} == set(S.STEMS)
    assert {s["stem_k"] for s in cnn} == {3, 5, 7}
    assert {s["steps"] for s in cnn} == {1, 2, 3, 4}
    assert min(s["cells"] for s in cnn) == 4 and max(s["cells"] for s in cnn) == 18
    assert {s["fc_hidden"] > 0 for s in cnn} == {True, False}
    vit = [s for s in specs if s["family"] == "vit"]
    for key in ("attn", "norm", "pool", "pre_norm", "patches"):
        assert len({s[key] for s in vit}) > 1, key


@pytest.mark.parametrize("split,check", [
    ("wide", lambda s: 96 <= s["C"] <= 192),
    ("deep", lambda s: 19 <= s["cells"] <= 36),
    ("dense", lambda s: 5 <= s["steps"] <= 8),
    ("normfree", lambda s: s["norm"] == "none"),
    ("transformer", lambda s: s["family"] == "vit"),
    ("lm", lambda s: s["family"] == "gpt"),
    ("predefined", lambda s: s["name"] in S.PREDEFINED_NAMES),
])
def test_split_distributions(split, check):
    specs = _sample(split, 40)
    assert all(check(s) for s in specs)
    if split in ("wide", "deep", "dense", "normfree"):
        assert all(s["family"] == "cnn" for s in specs)


@pytest.mark.parametrize("split", [s for s in S.SAMPLED_SPLITS if s != "lm"])
def test_sampled_specs_respect_the_parameter_cap(split):
    cap = S.SPACES[split].max_params
    for spec in _sample(split, 100, seed=1):
        assert S.count_params(spec) <= cap


def test_rejection_reasons():
    assert S.rejection_reason(_cnn()) is None
    assert S.rejection_reason(_cnn(normal=[["zero", 1, "zero", 0], ["conv3", 2, "max3", 1]])) == "empty_node"
    assert S.rejection_reason(_cnn(normal=[["sep3", 0, "zero", 1], ["conv3", 2, "max3", 0]])) == "prev_unused"
    assert S.rejection_reason(_cnn(normal=[["skip", 1, "max3", 0], ["avg3", 2, "zero", 1]])) == "no_learnable_op"
    assert S.rejection_reason(_cnn(reduce=[["se", 1, "max3", 0], ["skip", 2, "se", 1]])) == "se_only"
    assert S.rejection_reason(_cnn(C=64, cells=18, steps=2), max_params=1e5) == "too_many_params"
    assert S.rejection_reason(_cnn(normal=[["nope", 1, "skip", 0], ["conv3", 2, "max3", 1]])) == "invalid"
    assert S.rejection_reason(_cnn(normal=[["conv3", 1, "skip", 3], ["conv3", 2, "max3", 1]])) == "invalid"
    vit = {"family": "vit", "dim": 100, "depth": 2, "heads": 3, "mlp": 2.0, "pre_norm": True, "pool": "cls",
           "attn": "fused", "norm": "layer", "qkv_bias": True, "patches": 8}
    assert S.rejection_reason(vit) == "invalid"
    counts = {}
    rng = random.Random(0)
    for _ in range(50):
        S.sample_spec(rng, "train", counts)
    assert counts.get("prev_unused", 0) > 0 and counts.get("too_many_params", 0) > 0


def test_check_spec_errors_are_clear():
    with pytest.raises(ValueError, match="unknown op"):
        S.build_model(_cnn(normal=[["conv7", 1, "skip", 0], ["conv3", 2, "max3", 1]]))
    with pytest.raises(ValueError, match="family"):
        S.build_model({"family": "rnn"})
    with pytest.raises(ValueError, match="expected steps"):
        S.build_model(_cnn(steps=3))


def test_analytic_param_count_matches_built_models():
    specs = _sample("train", 30, seed=5) + _sample("wide", 5, seed=5) + _sample("dense", 5, seed=5) + \
        _sample("normfree", 5, seed=5) + _sample("transformer", 8, seed=5) + _sample("lm", 4, seed=5)
    specs.append(_cnn(norm="none", stem="conv2"))  # factorized-reduce bias, two-conv stem
    for spec in specs:
        for nc, ic, size in ((10, 3, 32), (7, 1, 28)):
            with torch.device("meta"):
                model = S.build_model(spec, nc, ic, size, vocab_size=100)
            real = sum(p.numel() for p in model.parameters())
            assert S.count_params(spec, nc, ic, size, vocab_size=100) == real, S.canonical_json(spec)


def test_build_is_deterministic_in_structure():
    spec = _sample("train", 1, seed=11)[0]
    a, b = S.build_model(spec, 10, 1, 28), S.build_model(spec, 10, 1, 28)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]


def test_patch_size_for():
    assert S.patch_size_for(28, 8) == 4 and S.patch_size_for(28, 4) == 7
    assert S.patch_size_for(32, 8) == 4 and S.patch_size_for(32, 4) == 8
    assert S.patch_size_for(13, 8) == 1
    assert S.patch_size_for(224, 8) == 28


@pytest.mark.parametrize("size", [8, 9, 15, 28, 33])
def test_cnn_works_for_any_image_size(size):
    spec = _cnn(cells=5, normal=[["skip", 1, "sep5", 0], ["dil5", 2, "avg3", 1]],
                reduce=[["skip", 1, "max3", 0], ["se", 2, "conv5", 0]])
    for ic in (1, 3):
        out = S.build_model(spec, 4, ic, size)(torch.randn(2, ic, size, size))
        assert out.shape == (2, 4) and torch.isfinite(out).all()


def test_large_image_stem_strides():
    model = S.build_model(_cnn(stem="conv2"), 10, 3, 128)
    assert model(torch.randn(1, 3, 128, 128)).shape == (1, 10)
    first = model.stem[0][0]
    assert first.stride == (2, 2)


TASKS = [(10, 1, 28), (10, 3, 32)]


SHIPPED = ("val", "test", "wide", "deep", "dense", "normfree", "transformer", "predefined")


@functools.lru_cache(maxsize=None)
def _dataset(split):
    return ArchDataset(split)


def _split_samples():
    out = []
    for split in SHIPPED:
        n = EVAL_SIZES[split]
        k = 1 if split in ("wide", "deep", "dense") else 2
        out += [(split, i) for i in random.Random(0).sample(range(n), k)]
    return out


@pytest.mark.parametrize("split,i", _split_samples())
def test_forward_on_shipped_splits(split, i):
    ds = _dataset(split)
    for nc, ic, size in TASKS:
        if split == "predefined" and ic == 3:
            continue  # one task is enough for the (large) predefined models
        model = ds.build(i, nc, ic, size)
        with torch.no_grad():
            out = model(torch.randn(2, ic, size, size))
        assert out.shape == (2, nc) and torch.isfinite(out).all()


def test_gpt_spec_builds_and_runs():
    spec = _sample("lm", 1, seed=2)[0]
    spec = {**spec, "dim": 64, "heads": 4, "depth": 2, "block": 16}
    model = S.build_model(spec, vocab_size=50)
    assert model(torch.randint(0, 50, (2, 8))).shape == (2, 8, 50)


def test_graph_coverage_is_complete_for_each_split():
    from ghn import graph  # our own module: an import error must fail, never skip
    for split in ("test", "wide", "deep", "dense", "normfree", "transformer", "predefined"):
        ds = _dataset(split)
        idx = random.Random(1).sample(range(len(ds)), 3 if split in ("test", "normfree", "transformer") else 1)
        for i in idx:
            with torch.device("meta"):
                model = ds.build(i, 10, 1, 28)
            x = torch.randn(2, 1, 28, 28, device="meta")
            cov = graph.ArchGraph.from_module(model, x).coverage()
            assert cov.fraction == 1.0, (split, i, cov.missing)
    # the trickiest cnn pieces traced on real tensors: factorized reduce with bias, SE on strided edges, LN
    for norm in ("none", "ln", "gn"):
        spec = _cnn(norm=norm, reduce=[["skip", 1, "se", 0], ["dil5", 2, "sep5", 1]])
        x = torch.randn(2, 3, 15, 15)
        cov = graph.ArchGraph.from_module(S.build_model(spec, 10, 3, 15), x).coverage()
        assert cov.fraction == 1.0, cov.missing
