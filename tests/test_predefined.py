"""ghn.predefined: forward shapes at small sizes, parameter counts (on the meta device), registry, errors."""
from __future__ import annotations

import pytest
import torch

from ghn.predefined import (
    ALIASES,
    GPT,
    PREDEFINED,
    ViT,
    build_predefined,
    densenet121,
    gpt2_small,
    gpt_tiny,
    mobilenet_se,
    mobilenet_v2,
    resnet18,
    resnet34,
    resnet50,
    vit_base,
    vit_small,
)

VISION = ["resnet18", "resnet34", "resnet50", "densenet121", "densenet_tiny", "mobilenet_v2", "mobilenet_se",
          "vit_tiny", "vit_small"]


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta(fn, **kw) -> torch.nn.Module:
    with torch.device("meta"):
        return fn(**kw)


@pytest.mark.parametrize("name", VISION)
@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28)])
def test_vision_forward(name, channels, size):
    torch.manual_seed(0)
    model = build_predefined(name, num_classes=7, in_channels=channels, image_size=size)
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert (model.num_classes, model.in_channels, model.image_size) == (7, channels, size)


def test_resnet_stems():
    assert resnet18(10, 3, 32).small_input and not resnet18(10, 3, 96).small_input
    big = resnet18(10, 3, 32, small_input=False)
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, torch.nn.MaxPool2d)
    assert big(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert resnet18(10, 3, 32).conv1.kernel_size == (3, 3)


@pytest.mark.parametrize("attn", ["fused", "separate", "torch"])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_vit_variants(attn, norm):
    for pre_norm, pool in ((True, "cls"), (False, "mean")):
        model = ViT(num_classes=5, in_channels=1, image_size=28, patch_size=7, dim=32, depth=2, heads=4,
                    pre_norm=pre_norm, pool=pool, attn=attn, norm=norm, qkv_bias=pool == "cls")
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 5)
        assert model.pos_embed.shape == (1, 16 + (pool == "cls"), 32)
        assert (model.cls_token is not None) == (pool == "cls")
        norm_type = torch.nn.LayerNorm if norm == "layer" else torch.nn.RMSNorm
        assert isinstance(model.norm, norm_type)


def test_attention_impls_agree():
    """fused and separate compute the same function given the same weights (causal and not)."""
    for causal in (False, True):
        torch.manual_seed(0)
        kw = dict(vocab_size=50, block_size=16, dim=32, depth=1, heads=4)
        fused, sep, mha = GPT(attn="fused", **kw), GPT(attn="separate", **kw), GPT(attn="torch", **kw)
        sd = {k: v for k, v in fused.state_dict().items()}
        a, b, c = fused.blocks[0].attn, sep.blocks[0].attn, mha.blocks[0].attn
        sep.load_state_dict({k: v for k, v in sd.items() if ".attn." not in k}, strict=False)
        mha.load_state_dict({k: v for k, v in sd.items() if ".attn." not in k}, strict=False)
        with torch.no_grad():
            for i, lin in enumerate((b.q, b.k, b.v)):
                lin.weight.copy_(a.qkv.weight[32 * i:32 * (i + 1)])
                lin.bias.copy_(a.qkv.bias[32 * i:32 * (i + 1)])
            b.proj.load_state_dict(a.proj.state_dict())
            c.mha.in_proj_weight.copy_(a.qkv.weight)
            c.mha.in_proj_bias.copy_(a.qkv.bias)
            c.mha.out_proj.load_state_dict(a.proj.state_dict())
        x = torch.randn(2, 9, 32)
        for attn in (a, b, c):
            attn.causal = causal
        ref = a(x)
        assert torch.allclose(ref, b(x), atol=1e-5) and torch.allclose(ref, c(x), atol=1e-5)
        if causal:  # a future token does not change earlier outputs
            x2 = x.clone()
            x2[:, 6] += 1.0
            assert torch.allclose(a(x2)[:, :6], ref[:, :6], atol=1e-6)
            assert not torch.allclose(a(x2)[:, 6:], ref[:, 6:])


def test_vit_errors():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        ViT(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="divisible by heads"):
        ViT(dim=100, heads=3)
    with pytest.raises(ValueError, match="attn"):
        ViT(attn="flash")
    with pytest.raises(ValueError, match="norm"):
        ViT(norm="batch")
    with pytest.raises(ValueError, match="pool"):
        ViT(pool="max")
    with pytest.raises(ValueError, match="divisible by heads"):
        GPT(dim=10, heads=3)


def test_vit_factory_patch_size():
    assert _meta(vit_small, num_classes=10, image_size=224).patch_size == 16
    assert vit_small(num_classes=10, image_size=32, depth=1).patch_size == 4
    assert vit_small(num_classes=10, image_size=32, patch_size=8, depth=1).num_patches == 16


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("attn,norm,pre_norm", [("fused", "layer", True), ("separate", "rms", False)])
def test_gpt_tiny(tie, attn, norm, pre_norm):
    torch.manual_seed(0)
    model = gpt_tiny(tie_embeddings=tie, attn=attn, norm=norm, pre_norm=pre_norm)
    idx = torch.randint(0, 1000, (2, 16))
    assert model(idx).shape == (2, 16, 1000)
    assert (model.lm_head.weight is model.tok_emb.weight) == tie
    assert model.lm_head.bias is None
    tied = gpt_tiny(tie_embeddings=True, attn=attn, norm=norm, pre_norm=pre_norm)
    assert _count(model) == _count(tied) + (0 if tie else 1000 * 64)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_param_counts_meta():
    assert _count(_meta(resnet50)) == pytest.approx(25_557_032, rel=0.01)
    assert _count(_meta(resnet18)) == 11_689_512
    assert _count(_meta(resnet34)) == 21_797_672
    assert _count(_meta(densenet121)) == 7_978_856
    assert _count(_meta(mobilenet_v2)) == 3_504_872
    assert _count(_meta(mobilenet_se)) == 2_542_856
    assert _count(_meta(vit_base)) == 86_567_656
    gpt = _meta(gpt2_small)
    assert gpt.lm_head.weight is gpt.tok_emb.weight and _count(gpt) == 124_439_808


def test_registry():
    with torch.device("meta"):
        for name in PREDEFINED:
            model = build_predefined(name, num_classes=10, in_channels=3, image_size=32)
            assert isinstance(model, torch.nn.Module)
        for alias, target in ALIASES.items():
            assert target in PREDEFINED, alias
        assert isinstance(build_predefined("ResNet-18", num_classes=10), type(resnet18()))
        assert build_predefined("vit-s", 10, 3, 32).dim == 384
        assert build_predefined("mobilenet", 10, 3, 32).num_classes == 10
        gpt = build_predefined("gpt2", num_classes=10, in_channels=1, image_size=28)  # vision kwargs ignored
        assert isinstance(gpt, GPT) and gpt.vocab_size == 50257
    with pytest.raises(KeyError) as e:
        build_predefined("resnet1000")
    assert "resnet18" in str(e.value) and "vit_small" in str(e.value)


def test_graph_tracing_smoke():
    """The hypernetwork's graph builder can trace the built-ins (strict: every parameter is covered)."""
    from ghn.graph import ArchGraph

    models = [build_predefined("resnet18", 10, 1, 28), build_predefined("mobilenet_se", 10, 3, 32),
              ViT(10, 3, 32, 8, dim=32, depth=1, heads=2, attn="separate", norm="rms"),
              ViT(10, 3, 32, 8, dim=32, depth=1, heads=2, attn="torch", pool="mean"),
              gpt_tiny(tie_embeddings=False)]
    for model in models:
        graph = ArchGraph.from_module(model)
        cov = graph.coverage()
        assert cov.fraction == 1.0 and not cov.unsupported and not cov.unused, cov
        n_params = sum(1 for _ in model.parameters())
        assert len(graph.param_refs()) + len([k for k in cov.tied if ":" not in k]) == n_params
        ops = graph.op_counts()
        assert ops["input"] == 1 and ops["output"] == 1
        # every node feeds the output (no dangling pieces; position tables may be roots of their own)
        import networkx as nx

        g = graph.to_networkx()
        out = len(graph.nodes) - 1
        assert nx.is_directed_acyclic_graph(g) and graph.nodes[out].op == "output"
        assert set(nx.ancestors(g, out)) | {out} == set(g.nodes)
