import json
import math

import pytest
import torch
import torch.nn as nn
from models import TinyCNN, TinyGPT, TinyViT, ViTLike

from ghn.decoder import DecoderShapeError, LowRankDecoder
from ghn.graph import ArchGraph, ParamRef
from ghn.hypernet import CheckpointError, GHNConfig, GraphHyperNetwork, checkpoint_fingerprint, initialize

SMALL = dict(hidden=32, layers=2, rank=8, code_dim=32)


def models():
    return [(TinyCNN(), torch.randn(2, 1, 12, 12)), (TinyViT(), torch.randn(2, 1, 12, 12)),
            (TinyGPT(), torch.randint(0, 50, (2, 8)))]


def make_ghn(seed=0, **kw):
    torch.manual_seed(seed)
    return GraphHyperNetwork(**{**SMALL, **kw})


@pytest.mark.parametrize("i", range(3))
def test_predicted_shapes_cover_every_parameter(i):
    model, x = models()[i]
    params = make_ghn().predict_params(model, x)
    named = dict(model.named_parameters(remove_duplicate=False))
    assert set(params) == set(named)
    for k, p in named.items():
        assert params[k].shape == p.shape, k
        assert torch.isfinite(params[k]).all()


def test_fan_in_scaling_and_vector_defaults():
    model, x = models()[0]
    params = make_ghn().predict_params(model, x)
    w = params["stem.weight"]  # (8, 1, 3, 3): fan_in 9, kaiming std sqrt(2/9) up to the learned factor e^[-2, 2]
    rms = w.pow(2).mean().sqrt().item()
    assert math.sqrt(2 / 9) * math.exp(-2) <= rms <= math.sqrt(2 / 9) * math.exp(2)
    assert torch.allclose(params["bn.weight"], torch.ones(8), atol=0.1)  # gains start near 1
    assert params["fc.bias"].abs().max() < 0.1


def test_gradients_reach_every_hypernetwork_parameter():
    ghn = make_ghn()
    loss = 0
    for model, x in models():
        out = torch.func.functional_call(model, ghn.predict_params(model, x), (x,))
        loss = loss + out.pow(2).mean()
    loss.backward()
    dead = [n for n, p in ghn.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_batched_equals_one_by_one():
    ghn = make_ghn().eval()
    graphs = [ArchGraph.from_module(m, x) for m, x in models()]
    batched = ghn(graphs)
    for g, b in zip(graphs, batched):
        single = ghn([g])[0]
        assert single.keys() == b.keys()
        for k in single:
            torch.testing.assert_close(single[k], b[k], rtol=1e-5, atol=1e-6)


def test_deterministic():
    model, x = models()[1]
    a = make_ghn(seed=3).predict_params(model, x)
    b = make_ghn(seed=3).predict_params(model, x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_initialize_writes_into_real_parameters_and_keeps_ties():
    model, x = TinyGPT(), torch.randint(0, 50, (2, 8))
    ids = {k: id(p) for k, p in model.named_parameters()}
    ghn = make_ghn()
    expected = ghn.eval().predict_params(model, x)
    report = ghn.initialize(model, x)
    assert {k: id(p) for k, p in model.named_parameters()} == ids  # same Parameter objects, no surgery
    for k, p in model.named_parameters(remove_duplicate=False):
        torch.testing.assert_close(p.data, expected[k].detach())
    assert model.lm_head.weight is model.tok.weight
    assert report.tied == {"lm_head.weight": "tok.weight"}
    assert "lm_head.weight" not in report.predicted and report.untouched == {}


def test_report_lists_untouched_parameters():
    class WithAux(nn.Module):  # a bare parameter the forward never uses: no module to predict it from
        def __init__(self):
            super().__init__()
            self.body, self.aux = nn.Linear(4, 3), nn.Parameter(torch.randn(3, 4))

        def forward(self, x):
            return self.body(x)

    m = WithAux()
    before = m.aux.detach().clone()
    rep = make_ghn().initialize(m, torch.randn(2, 4))
    assert set(rep.untouched) == {"aux"} and rep.alone == []
    assert torch.equal(m.aux, before)
    assert "aux (not used in the traced forward pass)" in str(rep)


def test_any_number_of_classes_and_wide_layers_without_tiling():
    ghn = make_ghn()
    n0 = ghn.num_params()
    for classes in (3, 10, 1000):
        p = ghn.predict_params(TinyCNN(num_classes=classes), torch.randn(2, 1, 12, 12))
        assert p["fc.weight"].shape == (classes, 8)
    wide = nn.Sequential(nn.Linear(16, 8192), nn.ReLU(), nn.Linear(8192, 10))
    w = ghn.predict_params(wide, torch.randn(2, 16))["0.weight"].detach()
    assert w.shape == (8192, 16)
    # no repeated blocks: rows that a tiling decoder would copy (period 64..4096) differ
    for period in (64, 128, 1024, 4096):
        assert not torch.allclose(w[:period], w[period:2 * period])
    emb = ghn.predict_params(nn.Embedding(50257, 8), torch.randint(0, 50257, (2, 3)))["weight"]
    assert emb.shape == (50257, 8)
    assert not torch.allclose(emb[:25000], emb[25000:50000])
    assert ghn.num_params() == n0  # nothing grew with the width


def test_decoder_rejects_shapes_it_cannot_emit():
    dec = LowRankDecoder(hidden=8, rank=2, code_dim=8)
    bad = ParamRef("x.weight", (4, 4, 2, 2, 2, 2), "matrix", 64)
    with pytest.raises(DecoderShapeError, match="kernel dims"):
        dec(torch.zeros(1, 8), [bad])


def test_checkpoint_round_trip_exact(tmp_path):
    ghn = make_ghn(seed=5)
    path = tmp_path / "g.safetensors"
    ghn.save(path, extra={"num_classes": 4})
    loaded = GraphHyperNetwork.load(path)
    assert loaded.config == ghn.config and loaded.extra == {"num_classes": 4}
    for (k, a), (k2, b) in zip(ghn.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    model, x = models()[1]
    a, b = ghn.eval().predict_params(model, x), loaded.eval().predict_params(model, x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fingerprint_follows_the_weights_and_config_not_the_extra_metadata(tmp_path):
    ghn = make_ghn(seed=5)
    ghn.save(tmp_path / "a.safetensors", extra={"eval": {"acc": 0.3}})
    ghn.save(tmp_path / "b.safetensors", extra={})
    fp = checkpoint_fingerprint(tmp_path / "a.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() != (tmp_path / "b.safetensors").read_bytes()
    assert fp == checkpoint_fingerprint(tmp_path / "b.safetensors")
    with torch.no_grad():
        next(ghn.parameters()).view(-1)[0] += 1e-3
    ghn.save(tmp_path / "c.safetensors")
    assert checkpoint_fingerprint(tmp_path / "c.safetensors") != fp
    make_ghn(seed=5, noise_share=0.25).save(tmp_path / "d.safetensors")  # same tensors, other config
    assert checkpoint_fingerprint(tmp_path / "d.safetensors") != fp
    ghn = make_ghn(seed=5)
    ghn.save(tmp_path / "e.safetensors", extra={"trained_ops": ["conv"]})  # untrained ops decode differently
    assert checkpoint_fingerprint(tmp_path / "e.safetensors") != fp


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        GraphHyperNetwork.load(tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00garbage-not-a-checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        GraphHyperNetwork.load(corrupt)
    good = tmp_path / "good.safetensors"
    make_ghn().save(good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        GraphHyperNetwork.load(truncated)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not a ghn checkpoint"):
        GraphHyperNetwork.load(other)
    # config says hidden=32 but tensors are from a hidden=16 model
    from safetensors import safe_open

    small = tmp_path / "small.safetensors"
    make_ghn(hidden=16).save(small)
    with safe_open(str(small), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    meta["config"] = json.dumps({**json.loads(meta["config"]), "hidden": 32})
    save_file(state, str(tmp_path / "mismatch.safetensors"), meta)
    with pytest.raises(CheckpointError, match="do not match"):
        GraphHyperNetwork.load(tmp_path / "mismatch.safetensors")


def test_initialize_with_explicit_checkpoint_path(tmp_path):
    path = tmp_path / "g.safetensors"
    make_ghn().save(path)
    model = TinyCNN()
    before = model.stem.weight.detach().clone()
    rep = initialize(model, torch.randn(2, 1, 12, 12), ghn=path)
    assert len(rep.predicted) == len(list(model.parameters()))
    assert not torch.equal(model.stem.weight, before)


def test_vector_predictions_are_bounded_by_construction():
    from ghn.decoder import VECTOR_BOUNDS

    torch.manual_seed(0)
    g = GraphHyperNetwork(hidden=16, layers=1, rank=4, code_dim=16)
    with torch.no_grad():
        g.decoder.head_vec.weight.mul_(1e4)  # as if training had pushed the vector head far out
        g.decoder.head_vec.bias.normal_(0, 100)
    model = TinyViT()
    graph = ArchGraph.from_module(model, torch.zeros(2, 1, 12, 12))
    preds = g([graph])[0]
    kinds = {r.name: r.kind for _, r in graph.param_refs()}
    seen = set()
    for name, kind in kinds.items():
        if kind != "matrix":
            c, w = VECTOR_BOUNDS[kind]
            assert (preds[name] - c).abs().max() <= w + 1e-6, name
            seen.add(kind)
    assert {"bias", "gain", "shift"} <= seen
    legacy = GraphHyperNetwork(hidden=16, layers=1, rank=4, code_dim=16, bounded_vectors=False)
    legacy.load_state_dict(g.state_dict())
    assert max(legacy([graph])[0]["head.bias"].abs()) > 1.0  # the unbounded decoder does drift


def test_identity_base_preserves_channels_through_any_conv_or_linear():
    from ghn.decoder import identity_base

    x = torch.randn(2, 6, 8, 8)
    same = identity_base(6, 6, (3, 3), "cpu", torch.float32).view(6, 6, 3, 3)
    assert math.isclose(float(same.pow(2).mean()), 1.0, rel_tol=1e-5)
    y = torch.nn.functional.conv2d(x, same / same.abs().max(), padding=1)
    assert torch.allclose(y, x, atol=1e-6)  # a centre-tap identity: channel o of the output is channel o
    wide = identity_base(9, 6, (), "cpu", torch.float32).view(9, 6)
    assert [int(r.argmax()) for r in wide] == [0, 1, 2, 3, 4, 5, 0, 1, 2]  # output o reads input o mod n_in
    narrow = identity_base(2, 6, (), "cpu", torch.float32).view(2, 6)
    assert narrow.ne(0).tolist() == [[True, False, True, False, True, False], [False, True, False, True, False, True]]
    dw = identity_base(4, 1, (5,), "cpu", torch.float32).view(4, 1, 5)  # depthwise: a delta kernel per channel
    assert dw.ne(0).sum() == 4 and bool(dw[:, 0, 2].ne(0).all())


def test_shifted_base_separates_copies_but_keeps_channel_meaning():
    from ghn.decoder import identity_base

    stem = identity_base(8, 1, (3, 3), "cpu", torch.float32, shifted=True).view(8, 9)
    rows = torch.nn.functional.normalize(stem, dim=1)
    assert float((rows @ rows.t() - 2 * torch.eye(8)).max()) <= 0.0  # 8 distinct filters (the plain base: 1)
    assert torch.linalg.matrix_rank(stem) == 4 and stem[1].equal(-stem[0])  # +-: x and -x are two ReLU halves
    assert int(stem[0].abs().argmax()) == 4 and int(stem[2].abs().argmax()) in (1, 3, 5, 7)  # centre, then nearest
    wide = identity_base(6, 3, (), "cpu", torch.float32, shifted=True).view(6, 3)
    assert wide[:3].equal(-wide[3:]) and wide[:3].equal(identity_base(3, 3, (), "cpu", torch.float32).view(3, 3))
    same = identity_base(5, 5, (3,), "cpu", torch.float32, shifted=True)
    assert same.equal(identity_base(5, 5, (3,), "cpu", torch.float32))  # no copies: the plain identity


def test_shifted_base_keeps_grouped_convs_plain():
    g = make_ghn(base_kind="shifted", noise_share=0.0)
    with torch.no_grad():
        g.decoder.head_gate.bias.fill_(-30.0)  # predicted share ~0: the base times a per-layer scale
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.Conv2d(4, 4, 3, padding=1, groups=4), torch.nn.Flatten(), torch.nn.Linear(64, 3))
    g.initialize(m, torch.randn(2, 1, 4, 4))
    stem, dw = m[0].weight.flatten(1), m[2].weight.flatten(1)
    assert torch.linalg.matrix_rank(stem) == 2 and stem[1].allclose(-stem[0])  # copies of 1 channel: +-, taps
    assert bool(dw.abs().argmax(1).eq(4).all())  # depthwise: every channel through its centre tap


def test_identity_base_is_the_same_in_every_layer_and_round_trips(tmp_path):
    def closed_gate_cos(kind):  # predicted share ~0: what remains is the base, times a per-layer scale
        g = make_ghn(base_kind=kind, noise_share=0.0)
        with torch.no_grad():
            g.decoder.head_gate.bias.fill_(-30.0)
        m = TinyCNN(depth=2)
        g.initialize(m, torch.randn(2, 1, 12, 12))
        a, b = m.blocks[0][3].weight.flatten(), m.blocks[1][3].weight.flatten()
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0))

    assert closed_gate_cos("identity") > 0.9999  # consistent channel meaning, whatever the layer or model
    assert abs(closed_gate_cos("gaussian")) < 0.5  # seeded by name: unrelated in two layers
    assert 0.3 < closed_gate_cos("mixed") < 0.8  # half of each: cos about 1/2
    g = make_ghn(base_kind="identity")
    g.save(tmp_path / "g.safetensors")
    assert GraphHyperNetwork.load(tmp_path / "g.safetensors").config.base_kind == "identity"
    with pytest.raises(ValueError, match="base_kind"):
        GraphHyperNetwork(base_kind="orthogonal")



def test_noise_share_breaks_duplicated_channels_deterministically():
    def closed_gate(**kw):  # predicted share ~0: the base (plus the noise floor), times a per-layer scale
        g = make_ghn(base_kind="identity", **{"noise_share": 0.0, **kw})
        with torch.no_grad():
            g.decoder.head_gate.bias.fill_(-30.0)
        m = TinyCNN(depth=2)
        g.initialize(m, torch.randn(2, 1, 12, 12))
        return m

    def row_cos(w):  # largest cosine between two different output channels
        w = torch.nn.functional.normalize(w.flatten(1), dim=1)
        return float((w @ w.t() - 2 * torch.eye(len(w))).max())

    def layer_cos(m):
        a, b = m.blocks[0][3].weight.flatten(), m.blocks[1][3].weight.flatten()
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0))

    plain, noisy = closed_gate(), closed_gate(noise_share=0.25)
    assert row_cos(plain.stem.weight) > 0.9999  # 1 input channel: every stem filter is the same delta
    assert row_cos(noisy.stem.weight) < 0.95
    assert abs(layer_cos(noisy) - 0.75) < 0.15  # the identity keeps 3/4 of the energy, the rest differs per layer
    again = closed_gate(noise_share=0.25)
    assert torch.equal(noisy.stem.weight, again.stem.weight)  # seeded by name: the same model, the same weights
    with pytest.raises(ValueError, match="noise_share"):
        GraphHyperNetwork(noise_share=1.0)


def test_max_dir_ratio_caps_the_predicted_part_on_wide_layers_only(tmp_path):
    g = make_ghn(base_kind="gaussian", noise_share=0.0)  # rank 8
    with torch.no_grad():
        g.decoder.head_gate.bias.fill_(30.0)  # gate fully open: the predicted part takes max_pred_share = 0.9

    def decode(ghn):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4))
        ghn.initialize(m, torch.randn(2, 256))
        return m

    def top_energy(w, r=8):  # energy fraction of the top r singular values
        s = torch.linalg.svdvals(w.detach()).pow(2)
        return float(s[:r].sum() / s.sum())

    plain, capped = decode(g), decode(g.with_config(max_dir_ratio=9.0))
    assert top_energy(plain[0].weight) > 0.85
    # 256 wide: f <= 9 * 8 / (256 + 72) = 0.22, plus the base's own share of the top 8 directions
    assert 0.2 < top_energy(capped[0].weight) < 0.4
    assert torch.equal(plain[2].weight, capped[2].weight)  # 4 rows: f <= 9 * 4 / (4 + 36) = 0.9, not binding
    capped_g = g.with_config(max_dir_ratio=9.0)
    capped_g.save(tmp_path / "g.safetensors")
    assert GraphHyperNetwork.load(tmp_path / "g.safetensors").config.max_dir_ratio == 9.0
    with pytest.raises(ValueError, match="max_dir_ratio"):
        GraphHyperNetwork(max_dir_ratio=-1.0)
    with pytest.raises(ValueError, match="needs base=True"):
        GraphHyperNetwork(max_dir_ratio=0.5, base=False)


def test_loose_cap_applies_to_models_whose_convolutions_feed_batchnorm_or_nothing(tmp_path):
    g = make_ghn(base_kind="gaussian", noise_share=0.0, max_dir_ratio=0.5)
    with torch.no_grad():
        g.decoder.head_gate.bias.fill_(30.0)  # gate fully open: the cap binds on every wide matrix

    def cnn(norm):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 64, 3), norm(64), nn.ReLU(), nn.Conv2d(64, 64, 3), norm(64), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 4))

    def gn(c):
        return nn.GroupNorm(8, c)

    x = torch.randn(2, 3, 12, 12)
    graphs = {name: ArchGraph.from_module(cnn(n), x) for name, n in
              [("bn", nn.BatchNorm2d), ("gn", gn), ("none", lambda c: nn.Identity())]}
    assert graphs["bn"].conv_fed_norms() == {"batch_norm"} and graphs["gn"].conv_fed_norms() == {"group_norm"}
    assert graphs["none"].conv_fed_norms() == set()
    mlp = nn.Sequential(nn.Linear(8, 64), nn.LayerNorm(64), nn.Linear(64, 4))  # a norm after a linear: not a CNN's
    assert ArchGraph.from_module(mlp, torch.randn(2, 8)).conv_fed_norms() == set()

    hybrid = g.with_config(max_dir_ratio_loose=4.0)
    looser = g.with_config(max_dir_ratio=4.0)
    assert [hybrid.dir_cap(graphs[k]) for k in ("bn", "gn", "none")] == [4.0, 0.5, 4.0]
    assert g.dir_cap(graphs["bn"]) == 0.5  # off by default
    for norm, like in [(nn.BatchNorm2d, looser), (gn, g)]:  # BN CNN decoded as at 4.0, GN CNN as at 0.5
        want, got = like.predict_params(cnn(norm), x), hybrid.predict_params(cnn(norm), x)
        assert all(torch.equal(want[k], got[k]) for k in want)
    a, b = g.predict_params(cnn(nn.BatchNorm2d), x), hybrid.predict_params(cnn(nn.BatchNorm2d), x)
    assert not torch.equal(a["3.weight"], b["3.weight"])  # the 64-wide conv: the looser cap binds less
    # several models in one batch (training) decode each under its own cap
    both = hybrid([graphs["bn"], graphs["gn"]])  # (equal up to summation order: batched matmuls)
    assert torch.allclose(both[0]["3.weight"], looser.predict_params(cnn(nn.BatchNorm2d), x)["3.weight"], atol=1e-6)
    assert torch.allclose(both[1]["3.weight"], g.predict_params(cnn(gn), x)["3.weight"], atol=1e-6)
    hybrid.save(tmp_path / "h.safetensors")
    assert GraphHyperNetwork.load(tmp_path / "h.safetensors").config.max_dir_ratio_loose == 4.0
    with pytest.raises(ValueError, match="needs max_dir_ratio > 0"):
        GraphHyperNetwork(max_dir_ratio_loose=0.5)


def test_transformers_can_take_their_own_cap_beside_the_loose_one_of_cnns(tmp_path):
    g = make_ghn(base_kind="gaussian", noise_share=0.0, max_dir_ratio=0.25)
    with torch.no_grad():
        g.decoder.head_gate.bias.fill_(30.0)  # gate fully open: the cap binds on every wide matrix
    torch.manual_seed(0)
    vit, cnn, x = TinyViT(), TinyCNN(), torch.randn(2, 1, 12, 12)
    gv, gc = ArchGraph.from_module(vit, x), ArchGraph.from_module(cnn, x)
    split = g.with_config(max_dir_ratio_loose=4.0, max_dir_ratio_attn=0.5)
    assert (split.dir_cap(gv), split.dir_cap(gc)) == (0.5, 4.0)
    assert g.with_config(max_dir_ratio_loose=4.0).dir_cap(gv) == 4.0  # unset: transformers follow the loose cap
    written_out = ArchGraph.from_module(ViTLike(), torch.randn(2, 3, 8, 8))  # matmul-softmax-matmul attention
    assert split.dir_cap(written_out) == 0.5
    # the ViT decodes as under one cap of 0.5 for every model, the CNN as under 4.0, in one batch too
    both = split([gv, gc])
    for out, model, like in [(both[0], vit, g.with_config(max_dir_ratio=0.5)),
                             (both[1], cnn, g.with_config(max_dir_ratio=4.0))]:
        want = like.predict_params(model, x)
        assert all(torch.allclose(want[k], out[k], atol=1e-6) for k in want)
    assert any(not torch.allclose(both[0][k], g.predict_params(vit, x)[k], atol=1e-4) for k in both[0])
    # a leaf the forward never used is predicted from its own graph, under the model's cap, not its own graph's
    class WithSpare(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit, self.spare = TinyViT(), nn.Linear(64, 64)

        def forward(self, x):
            return self.vit(x)

    spare = WithSpare().spare
    leaf = ArchGraph.from_module(spare, torch.randn(2, 64))
    assert split.dir_cap(leaf) == 4.0  # alone it would take the loose cap
    got = split.predict_params(WithSpare(), x)["spare.weight"]
    assert torch.allclose(got, g.with_config(max_dir_ratio=0.5).predict_params(spare, torch.randn(2, 64))["weight"],
                          atol=1e-6)
    split.save(tmp_path / "s.safetensors")
    assert GraphHyperNetwork.load(tmp_path / "s.safetensors").config.max_dir_ratio_attn == 0.5
    with pytest.raises(ValueError, match="max_dir_ratio_attn must be >= 0 and needs max_dir_ratio > 0"):
        GraphHyperNetwork(max_dir_ratio_attn=0.5)


def test_ops_never_trained_on_get_the_neutral_scale(tmp_path):
    ghn = make_ghn()
    with torch.no_grad():
        ghn.decoder.head_scale.bias.fill_(1.5)  # a learned factor far from 1: e^(2 tanh 0.75) = 3.3
    model, x = TinyGPT(), torch.randint(0, 50, (2, 8))
    graph = ArchGraph.from_module(model, x)
    table = next(r for _, r in graph.param_refs() if r.op == "embedding")
    rms = lambda p: float(p[table.name].pow(2).mean().sqrt()) * math.sqrt(table.fan_in)  # noqa: E731
    assert ghn.trained_ops is None and rms(ghn.predict_params(model, graph=graph)) > 3  # untrained: all trusted
    ghn.record_trained_ops([ArchGraph.from_module(TinyCNN(), torch.randn(2, 1, 12, 12))])
    assert "conv" in ghn.trained_ops and "embedding" not in ghn.trained_ops
    preds = ghn.predict_params(model, graph=graph)
    assert abs(rms(preds) - 1.0) < 1e-4  # never trained on: LeCun RMS, not an extrapolated factor
    lin = next(r for _, r in graph.param_refs() if r.op == "linear")  # TinyCNN has a classifier: trained on
    assert float(preds[lin.name].pow(2).mean().sqrt()) * math.sqrt(lin.fan_in) > 3
    ghn.record_trained_ops([graph])  # now it is: the learned factor again
    assert rms(ghn.predict_params(model, graph=graph)) > 3
    ghn.save(tmp_path / "g.safetensors", extra=ghn.extra)
    assert GraphHyperNetwork.load(tmp_path / "g.safetensors").trained_ops == ghn.trained_ops


def test_default_scale_under_norm_keeps_the_function_and_takes_the_default_rms():
    ghn = make_ghn(default_scale_under_norm=False)
    with torch.no_grad():
        ghn.decoder.head_scale.bias.fill_(1.0)  # a learned factor of e^(2 tanh 0.5) = 2.5
    on = ghn.with_config(default_scale_under_norm=True)
    x = torch.randn(8, 1, 12, 12)
    m_off, m_on = TinyCNN(depth=2), TinyCNN(depth=2)
    ghn.initialize(m_off, x)
    on.initialize(m_on, x)
    rms = lambda w: float(w.pow(2).mean().sqrt()) * 3  # noqa: E731  (fan_in 9 for the stem and depthwise convs)
    for w in (m_on.stem.weight, m_on.blocks[1][0].weight):  # feed a BatchNorm: PyTorch's default-init RMS
        assert abs(rms(w) - 1 / math.sqrt(3)) < 1e-5
    assert rms(m_off.stem.weight) > 2
    assert torch.equal(m_on.fc.weight, m_off.fc.weight)  # the classifier and the conv before the residual add
    assert torch.equal(m_on.blocks[0][3].weight, m_off.blocks[0][3].weight)  # keep their learned scale
    assert torch.allclose(m_on.train()(x), m_off.train()(x), atol=1e-3)  # the normalisation divides the scale out
    assert GraphHyperNetwork().config.default_scale_under_norm  # the fresh-run design


def test_equal_rows_under_norm_gives_every_filter_the_matrix_rms_and_keeps_the_function():
    ghn = make_ghn()
    x = torch.randn(8, 1, 12, 12)
    m_off, m_fed, m_all = TinyCNN(depth=2), TinyCNN(depth=2), TinyCNN(depth=2)
    ghn.initialize(m_off, x)
    ghn.with_config(equal_rows="norm_fed").initialize(m_fed, x)
    ghn.with_config(equal_rows="all").initialize(m_all, x)
    row_rms = lambda w: w.flatten(1).pow(2).mean(1).sqrt()  # noqa: E731
    pairs = ((m_off.stem.weight, m_fed.stem.weight), (m_off.blocks[1][0].weight, m_fed.blocks[1][0].weight))
    for w_off, w_fed in pairs:
        r = row_rms(w_fed)  # feed a BatchNorm: every filter at the matrix's RMS, which is unchanged
        assert torch.allclose(r, r.mean().expand_as(r), rtol=1e-4)
        assert math.isclose(float(w_fed.pow(2).mean()), float(w_off.pow(2).mean()), rel_tol=1e-4)
        assert float(row_rms(w_off).std() / row_rms(w_off).mean()) > 0.02  # they were not equal before
        assert torch.allclose(w_fed / row_rms(w_fed).view(-1, 1, 1, 1), w_off / row_rms(w_off).view(-1, 1, 1, 1),
                              atol=1e-5)  # only each filter's scale changed
    assert torch.equal(m_fed.fc.weight, m_off.fc.weight)  # the classifier feeds no normalisation: untouched
    r = row_rms(m_all.fc.weight)
    assert torch.allclose(r, r.mean().expand_as(r), rtol=1e-4)  # "all": every matrix
    assert torch.allclose(m_fed.train()(x), m_off.train()(x), atol=1e-3)  # BatchNorm divides each channel's scale
    with pytest.raises(ValueError, match="equal_rows"):
        make_ghn(equal_rows="some")


def test_free_rows_are_the_fixed_gaussian_under_norm_only():
    ghn, x = make_ghn(), torch.randn(8, 1, 12, 12)
    m_off, m_free, m_other = TinyCNN(width=8), TinyCNN(width=8), TinyCNN(width=8)
    ghn.initialize(m_off, x)
    ghn.with_config(free_rows=0.25).initialize(m_free, x)
    make_ghn(seed=1, free_rows=0.25).initialize(m_other, x)  # another hypernetwork: other predictions
    w_off, w_free, w_other = m_off.stem.weight, m_free.stem.weight, m_other.stem.weight  # feeds a BatchNorm
    assert torch.equal(w_free[:6], w_off[:6])  # the first 6 of 8 filters as predicted
    assert not torch.allclose(w_free[6:], w_off[6:])
    assert torch.allclose(w_free[6:], w_other[6:])  # the last 2 do not depend on the hypernetwork
    assert not torch.allclose(w_free[:6], w_other[:6])
    assert torch.equal(m_free.fc.weight, m_off.fc.weight)  # the classifier feeds no normalisation: untouched
    with pytest.raises(ValueError, match="free_rows"):
        make_ghn(free_rows=1.0)


class _WithUnused(nn.Module):
    """A classifier plus modules its forward never uses: a training-only embedding and norm, a frozen layer."""

    def __init__(self, extras: bool = True):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        if extras:
            self.denoise_embed = nn.Embedding(10, 8)
            self.aux_norm = nn.LayerNorm(8)
            self.fixed = nn.Linear(8, 8).requires_grad_(False)

    def forward(self, x):
        return self.fc(x)


def test_modules_the_forward_never_uses_are_predicted_alone():
    ghn, x = make_ghn(), torch.randn(2, 8)
    m = _WithUnused()
    before = {k: p.clone() for k, p in m.named_parameters()}
    report = ghn.initialize(m, x)
    assert sorted(report.alone) == ["aux_norm.bias", "aux_norm.weight", "denoise_embed.weight"]
    assert report.untouched == {} and report.fraction == 1.0 and "predicted from their module alone" in str(report)
    assert not torch.equal(m.denoise_embed.weight, before["denoise_embed.weight"])
    assert m.denoise_embed.weight.std() < 0.5  # a LeCun-scaled table, not nn.Embedding's N(0, 1)
    assert torch.equal(m.fixed.weight, before["fixed.weight"])  # frozen: never written
    plain = _WithUnused(extras=False)
    ghn.initialize(plain, x)
    assert torch.equal(plain.fc.weight, m.fc.weight)  # the used part is predicted exactly as without the extras


def test_initialize_reestimates_batchnorm_statistics_on_the_example_input():
    x = torch.randn(8, 1, 12, 12)
    m = TinyCNN(depth=3)
    report = make_ghn().initialize(m, x)
    assert report.norm_stats == "re-estimated on the example input" and "BatchNorm statistics" in str(report)
    assert not torch.equal(m.bn.running_var, torch.ones(8))  # the predicted weights' statistics, not fresh 0 / 1
    with torch.no_grad():
        assert torch.allclose(m.eval()(x), m.train()(x), rtol=1e-2, atol=1e-3)  # eval mode = batch statistics
    kept = TinyCNN(depth=3)
    assert make_ghn().initialize(kept, x, norm_stats=False).norm_stats == ""
    assert torch.equal(kept.bn.running_var, torch.ones(8))  # asked not to: left as they were
    assert make_ghn().initialize(_WithUnused(), torch.randn(2, 8)).norm_stats == ""  # no BatchNorm, nothing said
    head = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4)).eval()  # a batch of one gives no batch statistics
    report = make_ghn().initialize(head, torch.randn(1, 8))
    assert report.norm_stats.startswith("left as they were") and "more than 1 value" in report.norm_stats
    assert torch.equal(head[1].running_var, torch.ones(4)) and int(head[1].num_batches_tracked) == 0  # restored
    assert head[1].momentum == 0.1 and not head.training  # ... and so are its momentum and mode


def test_decoder_keyword_defaults_are_the_config_defaults():
    import inspect
    from dataclasses import asdict

    cfg = asdict(GHNConfig())
    params = inspect.signature(LowRankDecoder.__init__).parameters
    shared = [k for k in params if k in cfg]
    assert len(shared) >= 10 and all(params[k].default == cfg[k] for k in shared)


def test_norm_fed_scale_multiplies_only_matrices_under_norm_and_keeps_the_function():
    ghn, x = make_ghn(), torch.randn(8, 1, 12, 12)
    m_one, m_two = TinyCNN(width=8), TinyCNN(width=8)
    ghn.initialize(m_one, x)
    ghn.with_config(norm_fed_scale=2.0).initialize(m_two, x)
    assert torch.allclose(m_two.stem.weight, 2 * m_one.stem.weight, rtol=1e-5, atol=1e-7)  # feeds a BatchNorm
    assert torch.equal(m_two.fc.weight, m_one.fc.weight)  # the classifier feeds no normalisation: untouched
    assert torch.allclose(m_two.train()(x), m_one.train()(x), atol=1e-3)  # BatchNorm divides the scale out
    with pytest.raises(ValueError, match="norm_fed_scale"):
        make_ghn(norm_fed_scale=0.0)


@pytest.mark.parametrize("attn", ["separate", "torch"])
def test_post_norm_branch_scale_shrinks_only_post_norm_residual_branches(attn):
    from ghn.archs.transformers import ViT

    def vit(pre_norm):
        torch.manual_seed(0)
        return ViT(num_classes=4, in_channels=1, image_size=12, patch_size=4, dim=16, depth=3, heads=2,
                   pre_norm=pre_norm, pool="mean", attn=attn, norm="layer")

    x = torch.zeros(2, 1, 12, 12)
    post, pre = ArchGraph.from_module(vit(False), x), ArchGraph.from_module(vit(True), x)
    names = sorted(post.nodes[i].name for i in post.post_norm_branches())
    proj = "attn.mha.out_proj" if attn == "torch" else "attn.proj"
    assert names == sorted(f"blocks.{b}.{m}" for b in range(3) for m in (proj, "mlp.fc2"))
    assert pre.post_norm_branches() == set()  # x + f(norm(x)): the last add feeds only the final norm, but takes an add
    assert ArchGraph.from_module(TinyCNN(), torch.zeros(2, 1, 12, 12)).post_norm_branches() == set()

    g = make_ghn()
    shrunk = g.with_config(post_norm_branch_scale=0.25)
    a, b = g.predict_params(vit(False), x), shrunk.predict_params(vit(False), x)
    scaled = {k for k in a if not torch.equal(a[k], b[k])}
    assert scaled == {f"{n}.{p}" for n in names for p in ("weight", "bias")}
    assert all(torch.allclose(b[k], 0.25 * a[k]) for k in scaled)
    a, b = g.predict_params(vit(True), x), shrunk.predict_params(vit(True), x)
    assert all(torch.equal(a[k], b[k]) for k in a)  # a pre-norm ViT is decoded as before
    with pytest.raises(ValueError, match="post_norm_branch_scale must be > 0"):
        GraphHyperNetwork(post_norm_branch_scale=0.0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_post_norm_branches_of_torch_encoder_layers_with_dropout(norm_first):
    """torch's own ``nn.TransformerEncoderLayer`` (as in BERT-style models) puts dropout between each branch's last
    linear and the add; dropout is no graph node, so a post-norm layer's branches are found in train and eval mode."""
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True,
                                                           norm_first=norm_first), 2, enable_nested_tensor=False)
    want = set() if norm_first else {f"layers.{b}.{m}" for b in range(2) for m in ("self_attn.out_proj", "linear2")}
    for training in (True, False):
        g = ArchGraph.from_module(enc.train(training), torch.randn(2, 5, 16))
        assert {g.nodes[i].name for i in g.post_norm_branches()} == want


def test_rank_grows_keeping_the_trained_components():
    g = make_ghn()
    grown = g.with_config(rank=12)
    assert grown.config.rank == 12 and grown.decoder.rank == 12
    d, ctx = SMALL["code_dim"], 2 * SMALL["hidden"]
    new_w = grown.decoder.head_a.weight.detach().view(d, 12, ctx)
    assert torch.equal(new_w[:, :8], g.decoder.head_a.weight.detach().view(d, 8, ctx))
    assert torch.equal(grown.decoder.head_k.bias.detach().view(-1, 12)[:, :8], g.decoder.head_k.bias.view(-1, 8))
    # the new components: nonzero, at the trained head's scale, and the same on every call (seeded)
    rms = lambda t: t.pow(2).mean().sqrt().item()  # noqa: E731
    assert rms(new_w[:, 8:]) == pytest.approx(rms(new_w[:, :8]), rel=1e-4)
    assert torch.equal(g.with_config(rank=12).decoder.head_a.weight, grown.decoder.head_a.weight)
    # every other tensor is the trained one
    old = g.state_dict()
    for k, v in grown.state_dict().items():
        if not k.startswith(("decoder.head_a", "decoder.head_b", "decoder.head_k")):
            assert torch.equal(v, old[k]), k
    model, x = models()[0]
    params = grown.predict_params(model, x)
    assert all(torch.isfinite(p).all() for p in params.values())
    torch.func.functional_call(model, params, (x,)).pow(2).mean().backward()
    grad = grown.decoder.head_a.weight.grad.view(d, 12, ctx)
    assert torch.isfinite(grad).all() and grad[:, 8:].abs().sum() > 0  # the new components learn
    with pytest.raises(ValueError, match="rank can only grow"):
        grown.with_config(rank=8)


def test_grown_rank_spreads_the_predicted_part_over_more_directions():
    """A wide layer's predicted part is rank r: growing r raises the effective rank of what the decoder predicts."""
    g = make_ghn(base=False, noise_share=0.0).eval()
    ref = ParamRef(name="w", kind="matrix", shape=(40, 40), fan_in=40, op="linear")
    emb = torch.randn(1, SMALL["hidden"])
    with torch.no_grad():
        w8 = g.decoder(emb, [ref])[0]
        w16 = g.with_config(rank=16).decoder(emb, [ref])[0]
    assert torch.linalg.matrix_rank(w8).item() == 8
    assert torch.linalg.matrix_rank(w16).item() == 16


def test_rank_above_the_code_dim_is_refused():
    with pytest.raises(ValueError, match="rank must be in"):
        GraphHyperNetwork(**{**SMALL, "rank": 33})
    with pytest.raises(ValueError, match="rank must be in"):
        make_ghn().with_config(rank=64)
