"""Built-in transformers in plain torch: ViT (image classification) and GPT (causal language model)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ghn.archs.layers import TF_NORM_KINDS as NORM_KINDS
from ghn.archs.layers import make_norm
from ghn.archs.registry import register_model

ATTN_IMPLS = ("fused", "separate", "torch")


# ================================================================================================================
# transformers
# ================================================================================================================
def _check_transformer_args(dim: int, heads: int, attn: str, norm: str, mlp_ratio: float) -> None:
    if heads <= 0 or dim <= 0:
        raise ValueError(f"dim ({dim}) and heads ({heads}) must be positive")
    if dim % heads != 0:
        raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
    if attn not in ATTN_IMPLS:
        raise ValueError(f"unknown attn {attn!r}; expected one of {ATTN_IMPLS}")
    if norm not in NORM_KINDS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORM_KINDS}")
    if mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")


class Attention(nn.Module):
    """Multi-head self-attention with three interchangeable implementations.

    ``"fused"``: one ``Linear(dim, 3*dim)`` + ``F.scaled_dot_product_attention``; ``"separate"``: q, k, v
    projections and an explicit ``softmax(q @ k^T / sqrt(d)) @ v``; ``"torch"``: ``nn.MultiheadAttention``
    (there ``qkv_bias`` switches all of its biases).
    """

    def __init__(self, dim: int, heads: int, attn: str = "fused", qkv_bias: bool = True, causal: bool = False):
        super().__init__()
        _check_transformer_args(dim, heads, attn, "layer", 1.0)
        self.dim, self.heads, self.impl, self.causal = dim, heads, attn, causal
        self.head_dim = dim // heads
        if attn == "fused":
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
            self.proj = nn.Linear(dim, dim)
        elif attn == "separate":
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.k = nn.Linear(dim, dim, bias=qkv_bias)
            self.v = nn.Linear(dim, dim, bias=qkv_bias)
            self.proj = nn.Linear(dim, dim)
        else:
            self.mha = nn.MultiheadAttention(dim, heads, bias=qkv_bias, batch_first=True)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        if self.impl == "torch":
            mask = None
            if self.causal:
                mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
            return self.mha(x, x, x, attn_mask=mask, need_weights=False)[0]
        if self.impl == "fused":
            q, k, v = self.qkv(x).split(d, dim=-1)
            q, k, v = self._split(q), self._split(k), self._split(v)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if self.causal:
                mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
                scores = scores.masked_fill(mask, float("-inf"))
            out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Attention + MLP with residuals; pre-norm (``x + f(norm(x))``) or post-norm (``norm(x + f(x))``)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, pre_norm: bool = True, attn: str = "fused",
                 norm: str = "layer", qkv_bias: bool = True, causal: bool = False):
        super().__init__()
        _check_transformer_args(dim, heads, attn, norm, mlp_ratio)
        self.pre_norm = pre_norm
        self.norm1 = make_norm(norm, dim)
        self.attn = Attention(dim, heads, attn=attn, qkv_bias=qkv_bias, causal=causal)
        self.norm2 = make_norm(norm, dim)
        self.mlp = MLP(dim, max(1, int(round(dim * mlp_ratio))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


def _init_transformer(model: nn.Module, std: float = 0.02) -> None:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.MultiheadAttention):
            nn.init.trunc_normal_(m.in_proj_weight, std=std)


class ViT(nn.Module):
    """Vision transformer: patch-embedding conv, optional class token, learned positions, blocks, norm + head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, patch_size: int = 4,
                 dim: int = 192, depth: int = 6, heads: int = 3, mlp_ratio: float = 4.0, pre_norm: bool = True,
                 pool: str = "cls", attn: str = "fused", norm: str = "layer", qkv_bias: bool = True):
        super().__init__()
        if patch_size <= 0 or image_size % patch_size != 0:
            raise ValueError(f"image_size ({image_size}) must be divisible by patch_size ({patch_size})")
        if pool not in ("cls", "mean"):
            raise ValueError(f"unknown pool {pool!r}; expected 'cls' or 'mean'")
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        _check_transformer_args(dim, heads, attn, norm, mlp_ratio)
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.patch_size, self.dim, self.pool = patch_size, dim, pool
        self.num_patches = (image_size // patch_size) ** 2
        n_tokens = self.num_patches + (1 if pool == "cls" else 0)
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, dim))
        self.blocks = nn.ModuleList([
            TransformerBlock(dim, heads, mlp_ratio, pre_norm, attn, norm, qkv_bias) for _ in range(depth)])
        self.norm = make_norm(norm, dim)
        self.head = nn.Linear(dim, num_classes)
        _init_transformer(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)
        return self.head(x)


class GPT(nn.Module):
    """Decoder-only causal transformer: token + learned position embeddings, blocks, final norm, lm_head."""

    def __init__(self, vocab_size: int = 50257, block_size: int = 1024, dim: int = 768, depth: int = 12,
                 heads: int = 12, mlp_ratio: float = 4.0, pre_norm: bool = True, tie_embeddings: bool = True,
                 attn: str = "fused", norm: str = "layer"):
        super().__init__()
        if vocab_size <= 0 or block_size <= 0:
            raise ValueError(f"vocab_size ({vocab_size}) and block_size ({block_size}) must be positive")
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        _check_transformer_args(dim, heads, attn, norm, mlp_ratio)
        self.vocab_size, self.block_size, self.dim = vocab_size, block_size, dim
        self.tie_embeddings = tie_embeddings
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.pos_emb = nn.Embedding(block_size, dim)
        self.blocks = nn.ModuleList([
            TransformerBlock(dim, heads, mlp_ratio, pre_norm, attn, norm, qkv_bias=True, causal=True)
            for _ in range(depth)])
        self.norm = make_norm(norm, dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        _init_transformer(self)
        # GPT-2 style: scale the residual output projections by depth
        for block in self.blocks:
            out_proj = block.attn.mha.out_proj if attn == "torch" else block.attn.proj
            for w in (out_proj.weight, block.mlp.fc2.weight):
                nn.init.normal_(w, std=0.02 / math.sqrt(2 * max(depth, 1)))
        if tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        if t > self.block_size:
            raise ValueError(f"sequence length {t} exceeds block_size {self.block_size}")
        pos = torch.arange(t, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


def _vit(num_classes: int, in_channels: int, image_size: int, patch_size: Optional[int], dim: int, depth: int,
         heads: int, kw: Dict[str, Any]) -> ViT:
    if patch_size is None:
        patch_size = 16 if image_size >= 128 else 4
    return ViT(num_classes=num_classes, in_channels=in_channels, image_size=image_size, patch_size=patch_size,
               dim=kw.pop("dim", dim), depth=kw.pop("depth", depth), heads=kw.pop("heads", heads), **kw)


@register_model("vit_t", "vit_ti")
def vit_tiny(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
             patch_size: Optional[int] = None, **kw: Any) -> ViT:
    """ViT-Ti: dim 192, depth 12, 3 heads; patch 16 for image_size >= 128 else 4."""
    return _vit(num_classes, in_channels, image_size, patch_size, 192, 12, 3, kw)


@register_model("vit", "vit_s")
def vit_small(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
              patch_size: Optional[int] = None, **kw: Any) -> ViT:
    """ViT-S: dim 384, depth 12, 6 heads; patch 16 for image_size >= 128 else 4."""
    return _vit(num_classes, in_channels, image_size, patch_size, 384, 12, 6, kw)


@register_model("vit_b")
def vit_base(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
             patch_size: Optional[int] = None, **kw: Any) -> ViT:
    """ViT-B: dim 768, depth 12, 12 heads; patch 16 for image_size >= 128 else 4."""
    return _vit(num_classes, in_channels, image_size, patch_size, 768, 12, 12, kw)


_VISION_KW = ("num_classes", "in_channels", "image_size")


def _gpt(defaults: Dict[str, Any], kw: Dict[str, Any]) -> GPT:
    for k in _VISION_KW:  # GPT factories are called by the registry with vision kwargs: ignore them
        kw.pop(k, None)
    return GPT(**{**defaults, **kw})


@register_model("gpt2")
def gpt2_small(**kw: Any) -> GPT:
    """GPT-2 small (124M with tied embeddings): dim 768, depth 12, 12 heads, vocab 50257, block 1024."""
    return _gpt(dict(dim=768, depth=12, heads=12), kw)


@register_model("gpt2_m")
def gpt2_medium(**kw: Any) -> GPT:
    """GPT-2 medium (355M): dim 1024, depth 24, 16 heads."""
    return _gpt(dict(dim=1024, depth=24, heads=16), kw)


@register_model("gpt2_l")
def gpt2_large(**kw: Any) -> GPT:
    """GPT-2 large (774M): dim 1280, depth 36, 20 heads."""
    return _gpt(dict(dim=1280, depth=36, heads=20), kw)


@register_model()
def gpt_tiny(**kw: Any) -> GPT:
    """A tiny GPT for tests: vocab 1000, block 64, dim 64, depth 2, 4 heads."""
    return _gpt(dict(vocab_size=1000, block_size=64, dim=64, depth=2, heads=4), kw)
