"""Regressions from real transformers / timm models, each reduced to plain torch (issue: real-world models).

Every case asserts what the graph builder records (kind, fan-in, coverage) and that ``initialize`` writes finite
values of the right scale, not just that nothing crashes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ghn.graph import ArchGraph, UnsupportedOpError, default_example_input
from ghn.hypernet import GraphHyperNetwork


@pytest.fixture(scope="module")
def hyper():
    torch.manual_seed(0)
    return GraphHyperNetwork(hidden=16, layers=1, rank=4)


def refs(model, x):
    g = ArchGraph.from_module(model, x)
    assert g.coverage().fraction == 1.0, g.coverage()
    return g, {r.name: r for _, r in g.param_refs()}


def test_zero_dim_parameter_is_a_gain(hyper):  # CLIP logit_scale, NFNet skipinit_gain
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.logit_scale = nn.Parameter(torch.tensor(2.0))

        def forward(self, x):
            return self.fc(x) * self.logit_scale.exp()

    m = M()
    g, r = refs(m, torch.randn(2, 4))
    assert r["logit_scale"].kind == "gain" and r["logit_scale"].shape == ()
    hyper.initialize(m, graph=g)
    assert m.logit_scale.shape == () and torch.isfinite(m.logit_scale)


@pytest.mark.parametrize("cls,x", [(nn.ConvTranspose1d, torch.randn(2, 4, 8)),
                                   (nn.ConvTranspose2d, torch.randn(2, 4, 6, 6))])
def test_conv_transpose(hyper, cls, x):
    m = nn.Sequential(cls(4, 6, 3, stride=2, groups=2))
    g, r = refs(m, x)
    (node,) = [n for n in g.nodes if n.op == "conv_transpose"]
    assert node.attrs["groups"] == 2 and node.attrs["stride"] == 2
    assert r["0.weight"].fan_in == 3 * 3 ** (x.dim() - 2)  # weight (in, out / groups, k...): PyTorch's fan-in
    hyper.initialize(m, graph=g)


def test_example_input_for_conv_subclass():  # timm StdConv2d
    class StdConv2d(nn.Conv2d):
        pass

    x = default_example_input(nn.Sequential(StdConv2d(5, 4, 3)))
    assert x.shape[:2] == (2, 5) and x.dim() == 4


@pytest.mark.parametrize("use_mha", [True, False])
def test_parameter_as_attention_query(hyper, use_mha):  # SigLIP head.probe: attention pooling
    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 8)
            self.probe = nn.Parameter(torch.randn(1, 1, 8))
            self.att = nn.MultiheadAttention(8, 2, batch_first=True) if use_mha else None

        def forward(self, x):
            h = self.fc(x)
            q = self.probe.expand(h.shape[0], -1, -1)
            return self.att(q, h, h)[0] if use_mha else F.scaled_dot_product_attention(q, h, h)

    g, r = refs(Pool(), torch.randn(2, 5, 4))
    assert r["probe"].kind == "token"
    (tok,) = [n for n in g.nodes if n.op == "class_token"]
    assert any(s == tok.idx for s, _ in g.edges)  # the probe feeds the attention


def test_fan_in_of_sliced_expert_tables(hyper):  # Mixtral gate_up_proj, experts stored (E, out, in) or (E, in, out)
    class MoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.Parameter(torch.randn(4, 256, 64))    # F.linear(x, up[e]): (out, in)
            self.down = nn.Parameter(torch.randn(4, 256, 64))  # h @ down[e]: (in, out)

        def forward(self, x):
            return sum(F.linear(x, self.up[e]) @ self.down[e] for e in range(2))

    m = MoE()
    g, r = refs(m, torch.randn(2, 64))
    assert r["up"].fan_in == 64 and r["down"].fan_in == 256
    hyper.initialize(m, graph=g)
    rms = lambda t: t.pow(2).mean().sqrt().item()  # noqa: E731
    assert 0.02 < rms(m.up) < 0.6  # about sqrt(1/64) times a learned factor in [e^-2, e^2], not sqrt(1/16384)


def test_fan_in_of_condconv_expert_bank():  # timm CondConv2d: routing @ bank -> conv weight
    class CondConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.route = nn.Linear(3, 4)
            self.bank = nn.Parameter(torch.randn(4, 8 * 3 * 3 * 3))

        def forward(self, x):
            r = torch.sigmoid(self.route(x.mean((2, 3))))[:1]
            return F.conv2d(x, (r @ self.bank).view(8, 3, 3, 3))

    _, r = refs(CondConv(), torch.randn(2, 3, 8, 8))
    assert r["bank"].fan_in == 27  # the conv's in * kh * kw, not the 4 experts


def test_frozen_parameters_are_left_alone(hyper):  # Whisper / Marian / ViT-MAE fixed sinusoidal tables
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.pos = nn.Parameter(torch.randn(1, 5, 8), requires_grad=False)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.emb(x) + self.pos)

    m = M()
    before = m.pos.clone()
    rep = hyper.initialize(m, torch.randint(0, 10, (2, 5)))
    assert torch.equal(m.pos, before)
    assert rep.frozen == ["pos"] and "pos" not in rep.predicted and rep.fraction == 1.0
    assert "frozen" in str(rep)


def test_metadata_reads_are_not_uses():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.a = nn.Parameter(torch.randn(4))

        def forward(self, x):
            assert self.a.shape[0] == self.a.size(0) == 4
            h = self.fc(x)
            return torch.lerp(h, torch.zeros_like(h), self.a)

    with pytest.raises(UnsupportedOpError, match=r"a by lerp\(\)"):
        ArchGraph.from_module(M(), torch.randn(2, 4))


def test_parameter_reparameterisations():  # Mamba -exp(A_log), sigmoid gates, interpolated position tables
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 8)
            self.a_log = nn.Parameter(torch.zeros(8))
            self.gate = nn.Parameter(torch.zeros(8))
            self.pos = nn.Parameter(torch.randn(1, 8, 3))

        def forward(self, x):
            h = self.fc(x) * -torch.exp(self.a_log) * torch.sigmoid(self.gate)
            return h + F.interpolate(self.pos, size=x.shape[1]).transpose(1, 2)

    _, r = refs(M(), torch.randn(2, 5, 4))
    assert r["a_log"].kind == r["gate"].kind == "gain"
    assert r["pos"].kind == "matrix" and r["pos"].op == "pos_embed"


@pytest.mark.parametrize("new_api", [True, False])
def test_weight_norm(hyper, new_api):  # wav2vec2 / HuBERT positional conv
    conv = nn.Conv1d(4, 8, 3)
    if new_api:
        m = nn.Sequential(nn.utils.parametrizations.weight_norm(conv, dim=2))
        g_name, v_name = "0.parametrizations.weight.original0", "0.parametrizations.weight.original1"
    else:
        with pytest.warns(FutureWarning):
            m = nn.Sequential(nn.utils.weight_norm(conv))
        g_name, v_name = "0.weight_g", "0.weight_v"
    g, r = refs(m, torch.randn(2, 4, 16))
    assert r[g_name].kind == "gain" and r[v_name].kind == "matrix" and r[v_name].fan_in == 12
    hyper.initialize(m, graph=g)
    assert torch.isfinite(m[0].weight).all()


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent(hyper, cls):
    m = cls(4, 8, num_layers=2, batch_first=True)
    g, r = refs(m, torch.randn(2, 5, 4))
    assert {n.op for n in g.nodes} >= {"recurrent"}
    assert r["weight_ih_l0"].fan_in == 4 and r["weight_hh_l1"].fan_in == 8 and r["bias_ih_l0"].kind == "bias"
    hyper.initialize(m, graph=g)
    assert all(torch.isfinite(p).all() for p in m.parameters())


@pytest.mark.parametrize("which", ["fresh", "shipped", "loose", "attn"])  # shipped: trusted ops, norm-fed scales
def test_meta_model_is_materialised_group_by_group(hyper, which):  # loose / attn: the model's own direction cap
    from ghn.hypernet import load_pretrained
    from ghn.predefined import gpt_tiny
    from ghn.streaming import materialize

    hyper = hyper if which == "fresh" else load_pretrained()
    if which == "loose":
        hyper = hyper.with_config(max_dir_ratio=0.25, max_dir_ratio_loose=1.0)
    if which == "attn":  # a transformer: its own cap, not the loose one
        hyper = hyper.with_config(max_dir_ratio=0.25, max_dir_ratio_loose=4.0, max_dir_ratio_attn=0.05)

    torch.manual_seed(0)
    real = gpt_tiny()
    with torch.device("meta"):
        meta = gpt_tiny()
    idx = torch.randint(0, 100, (2, 8))
    expected = hyper.predict_params(real, idx)
    rep = materialize(hyper, meta, idx.to("meta"), budget=5000)  # many small groups
    assert rep.num_predicted_values == sum(p.numel() for p in real.parameters())
    for name, p in meta.named_parameters():
        assert p.device.type == "cpu" and torch.allclose(p, expected[name], atol=1e-5), name  # summation order
    assert meta.lm_head.weight is meta.tok_emb.weight  # tied stays tied
    assert all(v == "buffer: still on the meta device" for v in rep.untouched.values())
