"""Tests of ghn.graph: exact graphs of small models, coverage, tying, state safety, exports and virtual edges."""
from __future__ import annotations

import copy

import models as M
import networkx as nx
import pytest
import torch
import torch.nn as nn
from torch_geometric.data import Batch

from ghn import ops as O
from ghn.graph import NUM_NODE_FEATURES, ArchGraph, UnsupportedOpError, shortest_path_edges


def img(c=3, s=16, b=2):
    return torch.randn(b, c, s, s)


# model factory, example input, expected op counts (computed by hand from the model docstrings)
CASES = {
    "resnet": (M.ResNetLike, lambda: img(), {
        "input": 1, "conv": 6, "batch_norm": 6, "relu": 5, "add": 2, "global_pool": 1, "linear": 1, "output": 1}),
    "densenet": (M.DenseNetLike, lambda: img(), {
        "input": 1, "conv": 4, "batch_norm": 3, "relu": 3, "cat": 2, "avg_pool": 1, "global_pool": 1, "linear": 1,
        "output": 1}),
    "mobilenet": (M.MobileNetLike, lambda: img(), {
        "input": 1, "conv": 5, "conv_depthwise": 1, "batch_norm": 4, "hardswish": 1, "relu": 3, "global_pool": 2,
        "hardsigmoid": 1, "mul": 1, "add": 1, "linear": 1, "output": 1}),
    "vit": (M.ViTLike, lambda: img(s=8), {
        "input": 1, "conv": 1, "class_token": 1, "pos_embed": 1, "layer_norm": 3, "linear": 7, "matmul": 2,
        "softmax": 1, "add": 2, "gelu": 1, "output": 1}),
    "vit_mha": (M.ViTMHA, lambda: img(s=8), {
        "input": 1, "conv": 1, "pos_embed": 1, "layer_norm": 2, "attn_in_proj": 1, "attention": 1, "linear": 4,
        "add": 2, "gelu": 1, "global_pool": 1, "output": 1}),
    "gpt": (M.GPTLike, lambda: torch.randint(0, 40, (2, 8)), {
        "input": 1, "embedding": 2, "add": 3, "layer_norm": 3, "linear": 5, "attention": 1, "gelu": 1,
        "output": 1}),
    "layer_scale": (M.LayerScaleNet, lambda: torch.randn(2, 8), {
        "input": 1, "linear": 2, "gelu": 1, "scale": 1, "add": 1, "output": 1}),
    "shared": (M.SharedNet, lambda: torch.randn(2, 8), {"input": 1, "linear": 3, "relu": 1, "output": 1}),
    "functional": (M.FunctionalNet, lambda: img(s=8), {
        "input": 1, "conv": 1, "relu": 1, "global_pool": 1, "linear": 1, "output": 1}),
    "conv1d": (M.Conv1dNet, lambda: torch.randn(2, 2, 16), {
        "input": 1, "conv": 1, "batch_norm": 1, "relu": 1, "conv_grouped": 1, "global_pool": 1, "linear": 1,
        "output": 1}),
    "conv3d": (M.Conv3dNet, lambda: torch.randn(2, 1, 4, 6, 6), {
        "input": 1, "conv": 1, "group_norm": 1, "relu": 1, "global_pool": 1, "linear": 1, "output": 1}),
    "norms": (M.NormsNet, lambda: img(s=8), {
        "input": 1, "conv": 1, "group_norm": 1, "relu": 1, "instance_norm": 2, "global_pool": 1, "rms_norm": 1,
        "linear": 1, "output": 1}),
}
NUM_NODES = {"resnet": 23, "densenet": 17, "mobilenet": 22, "vit": 21, "vit_mha": 16, "gpt": 17, "layer_scale": 7,
             "shared": 6, "functional": 6, "conv1d": 8, "conv3d": 7, "norms": 10}


def build(key, **kw):
    torch.manual_seed(0)
    cls, make_x, _ = CASES[key]
    model = cls()
    return model, ArchGraph.from_module(model, make_x(), **kw)


def node(g, name, op=None):
    hits = [n for n in g.nodes if n.name == name and (op is None or n.op == op)]
    assert len(hits) == 1, (name, op, [(n.op, n.name) for n in g.nodes])
    return hits[0]


def preds(g, idx):
    return sorted(s for s, d in g.edges if d == idx)


# ---------------------------------------------------------------------------------------------------------------
# exact graphs
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", sorted(CASES))
def test_exact_node_and_op_counts(key):
    _, g = build(key)
    assert g.op_counts() == CASES[key][2]
    assert len(g.nodes) == NUM_NODES[key] == sum(CASES[key][2].values())
    assert [n.idx for n in g.nodes] == list(range(len(g.nodes)))
    assert g.nodes[0].op == "input" and g.nodes[-1].op == "output"
    assert all(n.op in O.OP_INDEX for n in g.nodes)
    assert all((n.op in O.PARAM_OPS) == bool(n.params) for n in g.nodes if n.op != "instance_norm")


@pytest.mark.parametrize("key", sorted(CASES))
def test_edges_are_simple_topological_and_reach_the_output(key):
    _, g = build(key)
    assert len(set(g.edges)) == len(g.edges)
    assert all(s < d for s, d in g.edges)  # node order is execution order
    G = g.to_networkx()
    out = len(g.nodes) - 1
    assert nx.ancestors(G, out) == set(range(out))  # no dead node
    assert preds(g, 0) == []


def test_resnet_residual_adds():
    _, g = build("resnet")
    add1, add2 = [n for n in g.nodes if n.op == "add"]
    assert preds(g, add1.idx) == sorted([node(g, "layer1.bn2").idx, node(g, "relu.relu").idx])
    assert preds(g, add2.idx) == sorted([node(g, "layer2.bn2").idx, node(g, "layer2.downsample.1").idx])
    assert node(g, "layer2.downsample.0").attrs == {"stride": 2, "groups": 1, "dims": 2, "kernel": (1, 1)}
    stem = node(g, "conv1")
    assert preds(g, stem.idx) == [0]
    assert [(r.name, r.kind, r.fan_in) for r in stem.params] == [("conv1.weight", "matrix", 27)]
    bn = node(g, "bn1")
    assert [(r.name, r.kind) for r in bn.params] == [("bn1.weight", "gain"), ("bn1.bias", "shift")]
    assert g.nodes[-1].out_shape == (2, 5) and node(g, "layer2.bn2").out_shape == (2, 16, 8, 8)


def test_densenet_concat_in_degrees():
    _, g = build("densenet")
    cat2, cat3 = [n for n in g.nodes if n.op == "cat"]
    stem, c1, c2 = node(g, "stem"), node(g, "layers.0.2"), node(g, "layers.1.2")
    assert preds(g, cat2.idx) == [stem.idx, c1.idx]
    assert preds(g, cat3.idx) == [stem.idx, c1.idx, c2.idx]
    assert preds(g, node(g, "layers.0.0").idx) == [stem.idx]  # cat of a single tensor is no node
    assert preds(g, node(g, "layers.1.0").idx) == [cat2.idx]
    assert cat3.out_shape == (2, 16, 16, 16)


def test_mobilenet_depthwise_and_squeeze_excite_gating():
    _, g = build("mobilenet")
    dw = node(g, "dw.0")
    assert dw.op == "conv_depthwise" and dw.attrs["groups"] == 16
    assert dw.params[0].fan_in == 9
    act = node(g, "dw.2.relu")  # nn.ReLU6 (F.hardtanh(x, 0, 6)) is a relu
    mul = node(g, "se.mul", "mul")
    gate = node(g, "se.hardsigmoid")
    assert preds(g, mul.idx) == [act.idx, gate.idx]
    pool = node(g, "se.global_pool")
    assert preds(g, pool.idx) == [act.idx]
    assert preds(g, node(g, "se.fc1").idx) == [pool.idx]
    res = node(g, "add")
    assert preds(g, res.idx) == [node(g, "stem.2.hardswish").idx, node(g, "project.1").idx]


def test_hardtanh_other_than_relu6_is_a_generic_activation():
    g = ArchGraph.from_module(nn.Sequential(nn.Linear(4, 4), nn.Hardtanh(), nn.ReLU6()), torch.randn(2, 4))
    assert [n.op for n in g.nodes] == ["input", "linear", "activation", "relu", "output"]


def test_vit_class_token_positions_and_attention():
    _, g = build("vit")
    patch, cls, pos = node(g, "patch"), node(g, "cls_token"), node(g, "pos_embed")
    assert (cls.op, pos.op) == ("class_token", "pos_embed")
    assert preds(g, cls.idx) == [patch.idx] and preds(g, pos.idx) == [cls.idx]
    assert [(r.kind, r.shape) for r in cls.params] == [("token", (1, 1, 16))]
    assert [(r.kind, r.shape) for r in pos.params] == [("matrix", (1, 5, 16))]
    assert cls.out_shape == pos.out_shape == (2, 5, 16)
    q, k, v = node(g, "attn.q"), node(g, "attn.k"), node(g, "attn.v")
    mm1, mm2 = [n for n in g.nodes if n.op == "matmul"]
    sm = node(g, "attn.softmax")
    assert preds(g, mm1.idx) == [q.idx, k.idx]
    assert preds(g, sm.idx) == [mm1.idx]
    assert preds(g, mm2.idx) == [v.idx, sm.idx]
    assert mm1.out_shape == (2, 2, 5, 5)
    assert preds(g, node(g, "attn.proj").idx) == [mm2.idx]


@pytest.mark.parametrize("key,want", [("vit", True), ("vit_mha", True), ("gpt", True), ("resnet", False),
                                      ("densenet", False), ("mobilenet", False), ("layer_scale", False)])
def test_has_attention_sees_fused_and_written_out_attention(key, want):
    # vit: matmul -> softmax -> matmul; vit_mha: nn.MultiheadAttention; gpt: scaled_dot_product_attention
    assert build(key)[1].has_attention() is want


class _BilinearCNN(nn.Module):
    """A matmul (bilinear pooling of two conv branches) and a log-softmax head: neither is attention."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 8, 3)
        self.bn, self.head = nn.BatchNorm2d(8), nn.Linear(64, 5)

    def forward(self, x):
        a, b = self.bn(self.a(x)).flatten(2), self.b(x).flatten(2)
        return torch.log_softmax(self.head(torch.bmm(a, b.transpose(1, 2)).flatten(1)), -1)


def test_a_matmul_and_a_log_softmax_head_are_not_attention():
    g = ArchGraph.from_module(_BilinearCNN(), torch.randn(2, 3, 8, 8))
    assert {"matmul", "softmax"} <= {n.op for n in g.nodes} and not g.has_attention()


def test_multihead_attention_expands_to_three_nodes():
    _, g = build("vit_mha")
    ln, inp, att, out = node(g, "norm1"), node(g, "attn"), node(g, "attn.attention"), node(g, "attn.out_proj")
    assert (inp.op, att.op, out.op) == ("attn_in_proj", "attention", "linear")
    assert preds(g, inp.idx) == [ln.idx] and preds(g, att.idx) == [inp.idx] and preds(g, out.idx) == [att.idx]
    assert [r.name for r in inp.params] == ["attn.in_proj_weight", "attn.in_proj_bias"]
    assert [(r.name, r.kind, r.fan_in) for r in out.params] == [
        ("attn.out_proj.weight", "matrix", 16), ("attn.out_proj.bias", "bias", 1)]
    add = [n for n in g.nodes if n.op == "add"][0]
    assert preds(g, add.idx) == [node(g, "pos_embed").idx, out.idx]


def test_gpt_embeddings_sdpa_and_tied_head():
    model, g = build("gpt")
    tok, pos = node(g, "tok"), node(g, "pos")
    assert preds(g, tok.idx) == [0] and preds(g, pos.idx) == []  # positions come from torch.arange
    assert tok.params[0].fan_in == 16 and tok.params[0].kind == "matrix"
    att = node(g, "attention", "attention")
    assert preds(g, att.idx) == [node(g, "qkv").idx]
    head = node(g, "lm_head")
    assert head.op == "linear" and preds(g, head.idx) == [node(g, "ln_f").idx]
    (ref,) = head.params
    assert ref.name == "tok.weight" and ref.tied_to == "tok.weight" and ref.aliases == ("lm_head.weight",)
    refs = g.param_refs()
    names = [r.name for _, r in refs]
    assert names.count("tok.weight") == 1 and len(names) == len(set(names)) == 16
    cov = g.coverage()
    assert cov.total == 16 and cov.fraction == 1.0
    assert cov.tied["lm_head.weight"] == "tok.weight"
    assert {k for k in cov.tied if ":" not in k} == {"lm_head.weight"}
    assert node(g, "lm_head").out_shape == (2, 8, 40)


def test_layer_scale_is_a_scale_node_with_a_gain():
    _, g = build("layer_scale")
    sc = node(g, "gamma")
    assert sc.op == "scale" and [(r.name, r.kind) for r in sc.params] == [("gamma", "gain")]
    assert preds(g, sc.idx) == [node(g, "gelu").idx]
    assert preds(g, node(g, "add").idx) == [0, sc.idx]


def test_module_reused_twice_is_tied_to_its_first_use():
    _, g = build("shared")
    first, second = [n for n in g.nodes if n.name == "shared"]
    assert [r.tied_to for r in first.params] == [None, None]
    assert [r.tied_to for r in second.params] == ["shared.weight", "shared.bias"]
    assert [r.name for _, r in g.param_refs()] == ["shared.weight", "shared.bias", "head.weight", "head.bias"]
    cov = g.coverage()
    assert cov.fraction == 1.0 and cov.total == 4
    assert cov.tied == {"shared:shared.weight": "shared.weight", "shared:shared.bias": "shared.bias"}
    feats = g.node_features()
    assert feats[second.idx, 8] == 1 and feats[first.idx, 8] == 0


def test_functional_calls_on_own_parameters():
    _, g = build("functional")
    conv, lin = node(g, "conv"), node(g, "head")
    assert conv.op == "conv" and [r.name for r in conv.params] == ["conv.weight", "conv.bias"]
    assert conv.attrs["kernel"] == (3, 3)
    assert lin.op == "linear" and [(r.name, r.kind, r.fan_in) for r in lin.params] == [
        ("head.w", "matrix", 8), ("head.b", "bias", 1)]


def test_conv1d_conv3d_and_norm_layers():
    _, g1 = build("conv1d")
    assert node(g1, "conv1").attrs == {"stride": 1, "groups": 1, "dims": 1, "kernel": (3,)}
    grouped = node(g1, "conv2")
    assert grouped.op == "conv_grouped" and grouped.attrs["groups"] == 2 and grouped.params[0].fan_in == 12
    _, g3 = build("conv3d")
    conv = node(g3, "conv")
    assert conv.attrs["dims"] == 3 and conv.attrs["kernel"] == (3, 3, 3) and conv.params[0].fan_in == 27
    assert conv.out_shape == (2, 8, 4, 6, 6)
    assert [r.kind for r in node(g3, "gn").params] == ["gain", "shift"]
    _, gn = build("norms")
    assert [r.kind for r in node(gn, "inorm").params] == ["gain", "shift"]
    assert node(gn, "inorm_plain.instance_norm").params == []
    assert [(r.name, r.kind) for r in node(gn, "rms").params] == [("rms.weight", "gain")]


# ---------------------------------------------------------------------------------------------------------------
# coverage
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", sorted(CASES))
def test_full_coverage_every_parameter_name(key):
    model, g = build(key)
    cov = g.coverage()
    assert cov.fraction == 1.0 and cov.unused == [] and cov.unsupported == {} and cov.missing == []
    named = dict(model.named_parameters(remove_duplicate=False))
    assert cov.total == len({id(p) for p in named.values()})
    refs = [r for _, r in g.param_refs()]
    assert len(refs) == cov.total == len(cov.covered)
    seen = {n for r in refs for n in (r.name, *r.aliases)}
    assert seen == set(named)
    for r in refs:
        assert tuple(named[r.name].shape) == r.shape


def test_unused_parameters_are_listed():
    g = ArchGraph.from_module(M.AuxHeadNet(), torch.randn(2, 8))  # unused is not an error, even strict
    cov = g.coverage()
    assert cov.unused == ["aux.weight", "aux.bias"] and cov.unsupported == {}
    assert cov.total == 4 and cov.fraction == 0.5 and cov.missing == ["aux.weight", "aux.bias"]
    assert "unused in forward: aux.weight" in str(cov)


@pytest.mark.parametrize("cls,pname,fname", [(M.CumsumNet, "raw", "cumsum"), (M.FFTNet, "filt", "fft")])
def test_unsupported_function_on_a_parameter(cls, pname, fname):
    model = cls()
    x = torch.randn(2, 8)
    with pytest.raises(UnsupportedOpError, match=rf"\b{pname} by \w*{fname}"):
        ArchGraph.from_module(model, x)
    g = ArchGraph.from_module(model, x, strict=False)
    cov = g.coverage()
    assert list(cov.unsupported) == [pname] and fname in cov.unsupported[pname]
    assert cov.covered == ["fc.weight", "fc.bias"] and cov.unused == [] and cov.fraction == pytest.approx(2 / 3)
    assert pname in cov.missing
    assert [r.name for _, r in g.param_refs()] == ["fc.weight", "fc.bias"]
    assert model.training  # restored after the error too


def test_parameter_reparameterisation_keeps_coverage():
    class LogitScale(nn.Module):  # Swin-v2 style learned temperature
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(8)))

        def forward(self, x):
            return self.fc(x) * torch.clamp(self.logit_scale, max=4.6).exp()

    g = ArchGraph.from_module(LogitScale(), torch.randn(2, 8))
    assert g.coverage().fraction == 1.0
    assert [(n.op, [r.name for r in n.params]) for n in g.nodes][1:3] == [
        ("linear", ["fc.weight", "fc.bias"]), ("scale", ["logit_scale"])]


# ---------------------------------------------------------------------------------------------------------------
# building is deterministic and leaves the model alone
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["resnet", "vit", "gpt", "mobilenet"])
def test_deterministic(key):
    torch.manual_seed(0)
    cls, make_x, _ = CASES[key]
    model, x = cls(), make_x()
    a, b = ArchGraph.from_module(model, x), ArchGraph.from_module(model, x.clone())
    assert a.nodes == b.nodes and a.edges == b.edges
    assert torch.equal(a.node_features(), b.node_features())
    da, db = a.to_pyg(4), b.to_pyg(4)
    for k in ("op", "x", "edge_index", "ve_index", "ve_dist"):
        assert torch.equal(da[k], db[k]), k
    c = ArchGraph.from_module(cls(), make_x())  # another instance (other weights, other input values)
    assert [(n.op, n.name, n.out_shape) for n in c.nodes] == [(n.op, n.name, n.out_shape) for n in a.nodes]
    assert c.edges == a.edges


def test_model_state_is_unchanged():
    model = M.ResNetLike()
    model.train()
    model.layer1.bn1.eval()  # a frozen BN inside a training model must stay frozen
    model.fc.weight.requires_grad_(False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_()
    flags = {n: m.training for n, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    req = {n: p.requires_grad for n, p in model.named_parameters()}
    ArchGraph.from_module(model, img())
    assert {n: m.training for n, m in model.named_modules()} == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # running stats and num_batches_tracked included
    assert {n: p.requires_grad for n, p in model.named_parameters()} == req
    assert torch.is_grad_enabled()
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    model.eval()
    ArchGraph.from_module(model, img())
    assert not any(m.training for m in model.modules())


def test_tuple_and_dict_example_inputs():
    model = M.TwoInputNet()
    a, b = torch.randn(2, 6), torch.randn(2, 4)
    g_tuple = ArchGraph.from_module(model, (a, b))
    g_dict = ArchGraph.from_module(model, {"a": a, "b": b})
    assert g_tuple.nodes == g_dict.nodes and g_tuple.edges == g_dict.edges
    assert [n.op for n in g_tuple.nodes] == ["input", "input", "linear", "linear", "add", "output"]
    assert g_tuple.edges == [(0, 2), (1, 3), (2, 4), (3, 4), (4, 5)]
    assert g_tuple.nodes[0].out_shape == (2, 6) and g_tuple.nodes[1].out_shape == (2, 4)
    with pytest.raises(ValueError, match="no tensor"):
        ArchGraph.from_module(model, {"a": 1})


@pytest.mark.parametrize("key", ["resnet", "vit", "gpt", "mobilenet", "conv3d"])
def test_meta_device_models(key):
    cls = CASES[key][0]
    with torch.device("meta"):
        meta_model = cls()
    gm = ArchGraph.from_module(meta_model)  # example input created on the meta device
    gc = ArchGraph.from_module(cls())  # the same default input on CPU
    assert all(p.is_meta for p in meta_model.parameters())
    assert [(n.op, n.name, n.out_shape, n.params) for n in gm.nodes] == \
        [(n.op, n.name, n.out_shape, n.params) for n in gc.nodes]
    assert gm.edges == gc.edges
    assert gm.coverage().fraction == 1.0 and gm.op_counts() == CASES[key][2]


# ---------------------------------------------------------------------------------------------------------------
# exports
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["resnet", "gpt", "vit_mha"])
def test_to_pyg_fields(key):
    _, g = build(key)
    n, e = len(g.nodes), len(g.edges)
    d0 = g.to_pyg()
    assert d0.num_nodes == n and "ve_index" not in d0
    d = g.to_pyg(max_virtual_dist=3)
    assert d.op.dtype == torch.long and d.op.shape == (n,)
    assert d.op.tolist() == [O.op_id(nd.op) for nd in g.nodes]
    assert d.x.dtype == torch.float32 and d.x.shape == (n, NUM_NODE_FEATURES) and torch.isfinite(d.x).all()
    assert d.edge_index.dtype == torch.long and d.edge_index.shape == (2, e)
    assert [tuple(p) for p in d.edge_index.t().tolist()] == g.edges
    assert d.ve_index.dtype == torch.long and d.ve_index.shape[0] == 2
    assert d.ve_dist.shape == (d.ve_index.shape[1],) and d.ve_dist.min() >= 2 and d.ve_dist.max() <= 3
    pairs = {tuple(p) for p in d.ve_index.t().tolist()}
    assert pairs == {(j, i) for i, j in pairs}  # undirected: both directions
    assert not pairs & (set(g.edges) | {(j, i) for i, j in g.edges})
    assert d.x[:, 9].max() == 1 and d.x[0, 9] == 0  # relative depth


def test_pyg_batch_offsets():
    graphs = [build(k)[1] for k in ("resnet", "gpt", "layer_scale")]
    datas = [g.to_pyg(max_virtual_dist=3) for g in graphs]
    batch = Batch.from_data_list(datas)
    sizes = [len(g.nodes) for g in graphs]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    assert batch.num_nodes == sum(sizes) and batch.num_graphs == 3
    assert torch.equal(batch.edge_index, torch.cat([d.edge_index + o for d, o in zip(datas, offsets)], 1))
    assert torch.equal(batch.ve_index, torch.cat([d.ve_index + o for d, o in zip(datas, offsets)], 1))
    assert torch.equal(batch.ve_dist, torch.cat([d.ve_dist for d in datas]))
    assert torch.equal(batch.op, torch.cat([d.op for d in datas]))
    assert batch.batch.bincount().tolist() == sizes
    assert batch.x.shape == (sum(sizes), NUM_NODE_FEATURES)


@pytest.mark.parametrize("key", ["resnet", "densenet", "gpt"])
def test_to_networkx(key):
    _, g = build(key)
    G = g.to_networkx()
    assert isinstance(G, nx.DiGraph) and nx.is_directed_acyclic_graph(G)
    assert G.number_of_nodes() == len(g.nodes) and G.number_of_edges() == len(g.edges)
    assert set(G.edges) == set(g.edges)
    assert [G.nodes[i]["op"] for i in range(len(g.nodes))] == [n.op for n in g.nodes]
    assert G.nodes[1]["params"] == [r.name for r in g.nodes[1].params]


def _nx_pairs(g, max_dist):
    und = g.to_networkx().to_undirected()
    out = set()
    for u in und.nodes:
        for v, dist in nx.single_source_shortest_path_length(und, u, cutoff=max_dist).items():
            if dist >= 2:
                out.add((u, v, dist))
    return out


@pytest.mark.parametrize("key,max_dist", [("resnet", 5), ("densenet", 4), ("vit", 5), ("gpt", 3),
                                          ("mobilenet", 6), ("vit_mha", 2)])
def test_virtual_edges_match_networkx(key, max_dist):
    _, g = build(key)
    ei = torch.tensor(g.edges).t()
    idx, dist = shortest_path_edges(ei, len(g.nodes), max_dist)
    ours = {(int(u), int(v), int(d)) for (u, v), d in zip(idx.t().tolist(), dist.tolist())}
    assert len(ours) == idx.shape[1]  # no duplicate pair
    assert ours == _nx_pairs(g, max_dist)
    d = g.to_pyg(max_virtual_dist=max_dist)
    assert torch.equal(d.ve_index, idx) and torch.equal(d.ve_dist, dist)


def test_shortest_path_edges_edge_cases():
    idx, dist = shortest_path_edges(torch.empty(2, 0, dtype=torch.long), 3, 4)
    assert idx.shape == (2, 0) and dist.shape == (0,)
    idx, dist = shortest_path_edges(torch.tensor([[0], [1]]), 2, 4)  # one edge: nothing at distance >= 2
    assert idx.shape == (2, 0)
    # path 0-1-2-3 plus an isolated node 4
    idx, dist = shortest_path_edges(torch.tensor([[0, 1, 2], [1, 2, 3]]), 5, 2)
    assert sorted(zip(map(tuple, idx.t().tolist()), dist.tolist())) == [((0, 2), 2), ((1, 3), 2), ((2, 0), 2),
                                                                          ((3, 1), 2)]


# ---------------------------------------------------------------------------------------------------------------
# torchvision (only where it is installed: it needs its own torch)
# ---------------------------------------------------------------------------------------------------------------
TV_MODELS = [("resnet18", "cpu", 64), ("mobilenet_v3_small", "cpu", 64), ("efficientnet_b0", "cpu", 64),
             ("vit_b_16", "meta", 224), ("convnext_tiny", "meta", 224), ("swin_t", "meta", 224),
             ("densenet121", "meta", 224)]


@pytest.mark.parametrize("name,device,size", TV_MODELS)
def test_torchvision_full_coverage(name, device, size):
    tv = pytest.importorskip("torchvision")
    with torch.device(device):
        model = tv.models.get_model(name, weights=None)
    g = ArchGraph.from_module(model, torch.randn(2, 3, size, size, device=device))  # strict: raises if unsupported
    cov = g.coverage()
    assert cov.fraction == 1.0 and cov.missing == [], str(cov)
    named = dict(model.named_parameters(remove_duplicate=False))
    assert {n for _, r in g.param_refs() for n in (r.name, *r.aliases)} == set(named)
    assert g.nodes[-1].out_shape == (2, 1000)
    assert g.to_pyg(max_virtual_dist=3).num_nodes == len(g.nodes)


def test_from_module_restores_modes_through_train_so_eval_caches_are_dropped():
    class Cached(nn.Module):  # like timm LeViT: an eval-mode cache of a parameter-derived tensor
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.cache = None

        def train(self, mode=True):
            super().train(mode)
            if mode:
                self.cache = None
            return self

        def forward(self, x):
            if not self.training:
                self.cache = self.lin.weight * 1.0 if self.cache is None else self.cache
                return x @ self.cache.t()
            return self.lin(x)

    model = nn.Sequential(Cached(), nn.Dropout(0.1))
    model.train()
    model[1].eval()  # mixed modes survive too
    ArchGraph.from_module(model, torch.zeros(2, 4))
    assert model[0].cache is None and model[0].training and model.training and not model[1].training
