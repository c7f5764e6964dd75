"""ghn.inspect on hand-made degenerate and healthy tensors, and the anti-collapse decoder's guarantees."""
import torch
import torch.nn as nn

from ghn.decoder import _newton_schulz, base_weights, flat_low_rank
from ghn.graph import ArchGraph, ParamRef
from ghn.hypernet import GraphHyperNetwork
from ghn.inspect import inspect_model, inspect_params, spectrum


class TwoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))


def test_spectrum_of_rank1_and_gaussian():
    u, v = torch.randn(64, 1), torch.randn(1, 32)
    r, e = spectrum(u @ v)
    assert abs(r - 1.0) < 1e-3 and e > 0.999
    r, e = spectrum(torch.randn(64, 32))
    assert r > 20 and e < 0.15


def test_inspect_flags_degenerate_but_not_healthy():
    torch.manual_seed(0)
    model = TwoBlocks()
    ref = dict(model.named_parameters())
    healthy = {k: torch.randn_like(v) * v.std() if v.dim() == 2 else v.detach().clone() for k, v in ref.items()}
    rank1 = torch.randn(64, 1) @ torch.randn(1, 64) / 8
    degenerate = dict(healthy, **{"a.weight": rank1, "b.weight": rank1 * 2, "c.weight": rank1 * 3})
    good = inspect_params(healthy, ref, name="healthy")
    bad = inspect_params(degenerate, ref, name="degenerate")
    assert good.summary()["degenerate"] == 0
    stats = {t.name: t for t in bad.tensors}
    for k in ("a.weight", "b.weight", "c.weight"):
        flags = " ".join(stats[k].flags())
        assert "low rank" in flags and "top-sigma" in flags and "same as another layer" in flags
    assert bad.summary()["median_top_energy"] > 0.9
    assert "degenerate: 3" in str(bad)
    # scale: a tensor 10x too large is flagged
    big = inspect_params(dict(healthy, **{"head.weight": ref["head.weight"] * 10}), ref)
    assert any("scale" in f for t in big.tensors for f in t.flags())


def test_flat_low_rank_has_flat_spectrum():
    torch.manual_seed(0)
    rows = torch.randn(3, 96, 8) * torch.tensor([100.0, 1, 1, 1, 1, 1, 1, 0.1])  # very unequal directions
    cols = torch.randn(3, 200, 8)
    w = flat_low_rank(rows, cols)
    s = torch.linalg.svdvals(w)[:, :8]
    assert (s.max(1).values / s.min(1).values < 2.0).all()  # rank 8, singular values within 2x of each other
    assert torch.linalg.svdvals(w)[:, 8:].max() < 1e-3
    m = _newton_schulz(torch.randn(2, 5, 9))
    assert torch.linalg.svdvals(m).min() > 0.5


def test_base_is_deterministic_and_distinct_per_parameter():
    refs = [ParamRef("l1.weight", (32, 16), "matrix", 16), ParamRef("l2.weight", (32, 16), "matrix", 16)]
    a = base_weights(refs, (32, 16), "cpu", torch.float32)
    b = base_weights(refs, (32, 16), "cpu", torch.float32)
    assert torch.equal(a, b)
    cos = (a[0].flatten() @ a[1].flatten()) / (a[0].norm() * a[1].norm())
    assert abs(float(cos)) < 0.2


def test_base_and_flat_spectrum_bound_collapse_by_construction():
    torch.manual_seed(0)
    model = TwoBlocks()
    hyper = GraphHyperNetwork(max_pred_share=0.5, orth=True)
    with torch.no_grad():
        # the worst case training could reach: predicted part as large as allowed and the same in every layer
        hyper.decoder.head_gate.bias.fill_(20.0)
        hyper.encoder.feat[2].weight.zero_()
    rep = inspect_model(model, hyper, torch.zeros(2, 64)).summary()
    # cosine between layers is bounded by the predicted share (the bases are independent)
    assert rep["median_rank_ratio"] > 0.5 and rep["median_top_energy"] < 0.25 and rep["median_role_cos"] < 0.56


def test_legacy_config_keeps_the_old_design():
    from ghn.hypernet import GHNConfig

    cfg = GHNConfig.from_dict({"hidden": 16})  # a stored config from before the anti-collapse fields
    assert not cfg.base and not cfg.orth and not cfg.pos_features
    hyper = GraphHyperNetwork(cfg)
    assert hyper.encoder.num_features == 10 and not hasattr(hyper.decoder, "head_gate")


def test_position_features_tell_repeated_blocks_apart():
    g = ArchGraph.from_module(TwoBlocks(), torch.zeros(2, 64))
    x = g.node_features()
    lin = [n.idx for n in g.nodes if n.params and n.params[0].shape == (64, 64)]
    assert len(lin) == 3
    rows = x[lin]
    assert torch.equal(rows[0, :9], rows[1, :9])  # the same shape features ...
    assert (torch.cdist(rows, rows) + torch.eye(3) * 1e3).min() > 0.1  # ... but distinct positions


def test_copied_output_channels_are_flagged():
    from ghn.inspect import duplicate_rows

    torch.manual_seed(0)
    w = torch.randn(32, 16, 3, 3)
    assert duplicate_rows(w) == 0.0  # default-like: no two channels alike
    copies = w.clone()
    copies[16:] = copies[:16] * 2.0  # a widening identity: channel o + 16 repeats channel o (up to scale)
    assert duplicate_rows(copies) == 1.0
    assert duplicate_rows(torch.randn(32, 4)) is None  # 4 inputs per output: too short to tell
    model = TwoBlocks()
    ref = dict(model.named_parameters())
    a = ref["a.weight"].detach().clone()
    a[32:] = a[:32]
    rep = inspect_params(dict(ref, **{"a.weight": a}), ref)
    flags = {t.name: " ".join(t.flags()) for t in rep.tensors}
    assert "100% of output channels are copies" in flags["a.weight"] and flags["b.weight"] == ""
    assert "copied channels" in str(rep)


def test_newton_schulz_many_matches_one_call_per_core():
    from ghn.decoder import newton_schulz_many

    torch.manual_seed(0)
    ms = [torch.randn(3, 32, 32, dtype=torch.float64), torch.randn(2, 10, 32, dtype=torch.float64),
          torch.randn(1, 32, 9, dtype=torch.float64), torch.randn(2, 25, 16, dtype=torch.float64)]
    got = newton_schulz_many(ms)
    assert [g.shape for g in got] == [m.shape for m in ms]
    for g, m in zip(got, ms):
        assert torch.allclose(g, _newton_schulz(m), atol=1e-10)
    assert newton_schulz_many([]) == []
