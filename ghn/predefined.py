"""Built-in architectures in plain torch (no torchvision): ResNet, DenseNet, MobileNet, ViT and GPT.

Every vision model takes ``num_classes``, ``in_channels`` and ``image_size`` so the same factory works for
Fashion-MNIST (1x28x28), CIFAR (3x32x32) and ImageNet-size inputs. Models are built with default (random)
initialisation; nothing happens at import time.

    >>> from ghn.predefined import build_predefined
    >>> model = build_predefined("resnet18", num_classes=10, in_channels=1, image_size=28)
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "Attention", "TransformerBlock", "ViT", "GPT",
    "vit_tiny", "vit_small", "vit_base", "gpt2_small", "gpt2_medium", "gpt2_large", "gpt_tiny",
    "BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50",
    "DenseNet", "densenet121", "densenet_tiny",
    "SqueezeExcite", "InvertedResidual", "MobileNetV2", "mobilenet_v2", "mobilenet_se",
    "PREDEFINED", "ALIASES", "resolve_name", "build_predefined",
]

ATTN_IMPLS = ("fused", "separate", "torch")
NORM_KINDS = ("layer", "rms")


# ================================================================================================================
# transformers
# ================================================================================================================
def make_norm(kind: str, dim: int) -> nn.Module:
    """``"layer"`` -> nn.LayerNorm, ``"rms"`` -> nn.RMSNorm."""
    if kind == "layer":
        return nn.LayerNorm(dim)
    if kind == "rms":
        if not hasattr(nn, "RMSNorm"):
            raise RuntimeError("norm='rms' needs torch>=2.4 (nn.RMSNorm)")
        return nn.RMSNorm(dim)
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORM_KINDS}")


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


def vit_tiny(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
             patch_size: Optional[int] = None, **kw: Any) -> ViT:
    """ViT-Ti: dim 192, depth 12, 3 heads; patch 16 for image_size >= 128 else 4."""
    return _vit(num_classes, in_channels, image_size, patch_size, 192, 12, 3, kw)


def vit_small(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
              patch_size: Optional[int] = None, **kw: Any) -> ViT:
    """ViT-S: dim 384, depth 12, 6 heads; patch 16 for image_size >= 128 else 4."""
    return _vit(num_classes, in_channels, image_size, patch_size, 384, 12, 6, kw)


def vit_base(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
             patch_size: Optional[int] = None, **kw: Any) -> ViT:
    """ViT-B: dim 768, depth 12, 12 heads; patch 16 for image_size >= 128 else 4."""
    return _vit(num_classes, in_channels, image_size, patch_size, 768, 12, 12, kw)


_VISION_KW = ("num_classes", "in_channels", "image_size")


def _gpt(defaults: Dict[str, Any], kw: Dict[str, Any]) -> GPT:
    for k in _VISION_KW:  # GPT factories are called by the registry with vision kwargs: ignore them
        kw.pop(k, None)
    return GPT(**{**defaults, **kw})


def gpt2_small(**kw: Any) -> GPT:
    """GPT-2 small (124M with tied embeddings): dim 768, depth 12, 12 heads, vocab 50257, block 1024."""
    return _gpt(dict(dim=768, depth=12, heads=12), kw)


def gpt2_medium(**kw: Any) -> GPT:
    """GPT-2 medium (355M): dim 1024, depth 24, 16 heads."""
    return _gpt(dict(dim=1024, depth=24, heads=16), kw)


def gpt2_large(**kw: Any) -> GPT:
    """GPT-2 large (774M): dim 1280, depth 36, 20 heads."""
    return _gpt(dict(dim=1280, depth=36, heads=20), kw)


def gpt_tiny(**kw: Any) -> GPT:
    """A tiny GPT for tests: vocab 1000, block 64, dim 64, depth 2, 4 heads."""
    return _gpt(dict(vocab_size=1000, block_size=64, dim=64, depth=2, heads=4), kw)


# ================================================================================================================
# ResNet
# ================================================================================================================
def _small_input(small_input: Optional[bool], image_size: int) -> bool:
    return image_size <= 64 if small_input is None else bool(small_input)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4) with a residual connection (ResNet-50+, stride on the 3x3)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with four stages of ``block`` (widths 64/128/256/512 x expansion).

    ``small_input=True`` uses a 3x3 stride-1 stem without max-pooling (28/32 px images); ``None`` picks it
    when ``image_size <= 64``.
    """

    def __init__(self, block: type, layers: Sequence[int], num_classes: int = 1000, in_channels: int = 3,
                 image_size: int = 224, small_input: Optional[bool] = None, width: int = 64,
                 zero_init_residual: bool = False):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must have 4 entries, got {list(layers)}")
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.small_input = _small_input(small_input, image_size)
        if self.small_input:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.in_planes = width
        self.layer1 = self._make_layer(block, width, layers[0], 1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: type, planes: int, n: int, stride: int) -> nn.Sequential:
        downsample = None
        out = planes * block.expansion
        if stride != 1 or self.in_planes != out:
            downsample = nn.Sequential(nn.Conv2d(self.in_planes, out, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out))
        blocks: List[nn.Module] = [block(self.in_planes, planes, stride, downsample)]
        self.in_planes = out
        for _ in range(1, n):
            blocks.append(block(out, planes))
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, **kw: Any) -> ResNet:
    """ResNet-18 (11.7M params at 1000 classes)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, image_size, **kw)


def resnet34(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, **kw: Any) -> ResNet:
    """ResNet-34 (21.8M params at 1000 classes)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, image_size, **kw)


def resnet50(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, **kw: Any) -> ResNet:
    """ResNet-50 (25.6M params at 1000 classes)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, image_size, **kw)


# ================================================================================================================
# DenseNet
# ================================================================================================================
class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1 (bottleneck) -> BN-ReLU-Conv3x3 producing ``growth`` new channels."""

    def __init__(self, in_ch: int, growth: int, bn_size: int):
        super().__init__()
        mid = bn_size * growth
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, growth, 3, padding=1, bias=False)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, dim=1)
        x = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    """``n`` dense layers; each sees the concatenation of the block input and all previous outputs."""

    def __init__(self, n: int, in_ch: int, growth: int, bn_size: int):
        super().__init__()
        self.layers = nn.ModuleList([DenseLayer(in_ch + i * growth, growth, bn_size) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, dim=1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1 (channel compression) followed by 2x2 average pooling."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_ch)
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(F.relu(self.norm(x))))


class DenseNet(nn.Module):
    """DenseNet-BC: stem, dense blocks joined by transitions (compression 0.5), BN-ReLU, global pool, linear."""

    def __init__(self, growth: int = 32, block_config: Sequence[int] = (6, 12, 24, 16), init_features: int = 64,
                 bn_size: int = 4, compression: float = 0.5, num_classes: int = 1000, in_channels: int = 3,
                 image_size: int = 224, small_input: Optional[bool] = None):
        super().__init__()
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.small_input = _small_input(small_input, image_size)
        if self.small_input:
            stem: List[nn.Module] = [nn.Conv2d(in_channels, init_features, 3, padding=1, bias=False)]
        else:
            stem = [nn.Conv2d(in_channels, init_features, 7, stride=2, padding=3, bias=False),
                    nn.BatchNorm2d(init_features), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)]
        self.stem = nn.Sequential(*stem)
        stages: List[nn.Module] = []
        ch = init_features
        for i, n in enumerate(block_config):
            stages.append(DenseBlock(n, ch, growth, bn_size))
            ch += n * growth
            if i != len(block_config) - 1:
                out = int(ch * compression)
                stages.append(Transition(ch, out))
                ch = out
        self.features = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(ch)
        self.classifier = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.features(self.stem(x))))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def densenet121(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, **kw: Any) -> DenseNet:
    """DenseNet-121 (growth 32, blocks 6/12/24/16; 8.0M params at 1000 classes)."""
    return DenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes, in_channels=in_channels,
                    image_size=image_size, **kw)


def densenet_tiny(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kw: Any) -> DenseNet:
    """A small DenseNet (growth 12, blocks 4/4/4, 24 stem channels) for quick experiments."""
    return DenseNet(12, (4, 4, 4), 24, num_classes=num_classes, in_channels=in_channels,
                    image_size=image_size, **kw)


# ================================================================================================================
# MobileNet (inverted residuals, depthwise convs, squeeze-excite)
# ================================================================================================================
def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to a multiple of ``divisor`` without going below 90% of it."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _act(name: str) -> nn.Module:
    acts: Dict[str, Callable[[], nn.Module]] = {
        "relu": lambda: nn.ReLU(inplace=True), "relu6": lambda: nn.ReLU6(inplace=True),
        "hardswish": lambda: nn.Hardswish(inplace=True)}
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(acts)}")
    return acts[name]()


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias, 'same' padding) -> BatchNorm2d -> activation (or none)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 act: Optional[str] = "relu6"):
        layers: List[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups,
                                             bias=False), nn.BatchNorm2d(out_ch)]
        if act is not None:
            layers.append(_act(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Global avg pool -> conv1x1 -> ReLU -> conv1x1 -> hardsigmoid -> channel-wise multiply."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (kxk, strided) -> [SE] -> project (1x1, linear); residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, expanded: int, kernel: int = 3, stride: int = 1,
                 se: bool = False, act: str = "relu6"):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: List[nn.Module] = []
        if expanded != in_ch:
            layers.append(ConvBNAct(in_ch, expanded, 1, act=act))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se:
            layers.append(SqueezeExcite(expanded, _make_divisible(expanded // 4, 8)))
        layers.append(ConvBNAct(expanded, out_ch, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


# (kernel, expanded_channels, out_channels, se, activation, stride) per block
BlockCfg = Tuple[int, int, int, bool, str, int]


def _v2_config(width_mult: float = 1.0) -> Tuple[int, List[BlockCfg]]:
    """MobileNetV2's (t, c, n, s) table expanded to one entry per block; returns (stem channels, blocks)."""
    table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1)]
    stem = _make_divisible(32 * width_mult)
    blocks: List[BlockCfg] = []
    ch = stem
    for t, c, n, s in table:
        out = _make_divisible(c * width_mult)
        for i in range(n):
            blocks.append((3, ch * t, out, False, "relu6", s if i == 0 else 1))
            ch = out
    return stem, blocks


def _v3_small_config() -> Tuple[int, List[BlockCfg]]:
    """MobileNetV3-small-like blocks (squeeze-excite, hardswish in the later stages)."""
    rows = [(3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1),
            (5, 96, 40, True, "hardswish", 2), (5, 240, 40, True, "hardswish", 1),
            (5, 240, 40, True, "hardswish", 1), (5, 120, 48, True, "hardswish", 1),
            (5, 144, 48, True, "hardswish", 1), (5, 288, 96, True, "hardswish", 2),
            (5, 576, 96, True, "hardswish", 1), (5, 576, 96, True, "hardswish", 1)]
    return 16, list(rows)


class MobileNetV2(nn.Module):
    """MobileNet of inverted-residual blocks: stem conv, ``blocks``, 1x1 conv to ``last_channels``, head.

    ``blocks`` is a list of ``(kernel, expanded, out, se, activation, stride)``; the default is MobileNetV2.
    ``head_hidden`` > 0 adds a Linear-hardswish hidden layer before the classifier (MobileNetV3 style).
    ``small_input`` (default: ``image_size <= 64``) makes the stem and the first strided block stride 1.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
                 width_mult: float = 1.0, blocks: Optional[Sequence[BlockCfg]] = None,
                 stem_channels: Optional[int] = None, last_channels: Optional[int] = None,
                 stem_act: str = "relu6", last_act: str = "relu6", head_hidden: int = 0, dropout: float = 0.2,
                 small_input: Optional[bool] = None):
        super().__init__()
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.small_input = _small_input(small_input, image_size)
        if blocks is None:
            stem_default, blocks = _v2_config(width_mult)
            stem_channels = stem_channels or stem_default
            last_channels = last_channels or _make_divisible(1280 * max(1.0, width_mult))
        if stem_channels is None or last_channels is None:
            raise ValueError("stem_channels and last_channels are required with custom blocks")
        blocks = list(blocks)
        if self.small_input:  # keep more resolution on 28/32 px inputs
            for i, b in enumerate(blocks):
                if b[5] == 2:
                    blocks[i] = b[:5] + (1,)
                    break
        layers: List[nn.Module] = [ConvBNAct(in_channels, stem_channels, 3, 1 if self.small_input else 2,
                                             act=stem_act)]
        ch = stem_channels
        for kernel, expanded, out, se, act, stride in blocks:
            layers.append(InvertedResidual(ch, out, expanded, kernel, stride, se, act))
            ch = out
        layers.append(ConvBNAct(ch, last_channels, 1, act=last_act))
        self.features = nn.Sequential(*layers)
        head: List[nn.Module] = []
        feat = last_channels
        if head_hidden > 0:
            head += [nn.Linear(feat, head_hidden), nn.Hardswish(inplace=True)]
            feat = head_hidden
        head += [nn.Dropout(dropout), nn.Linear(feat, num_classes)]
        self.classifier = nn.Sequential(*head)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


def mobilenet_v2(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
                 width_mult: float = 1.0, **kw: Any) -> MobileNetV2:
    """MobileNetV2 (3.5M params at 1000 classes, width 1.0)."""
    return MobileNetV2(num_classes, in_channels, image_size, width_mult=width_mult, **kw)


def mobilenet_se(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, **kw: Any) -> MobileNetV2:
    """MobileNetV3-small-like: 5x5 depthwise convs, squeeze-excite, hardswish (2.5M params at 1000 classes)."""
    stem, blocks = _v3_small_config()
    return MobileNetV2(num_classes, in_channels, image_size, blocks=blocks, stem_channels=stem, last_channels=576,
                       stem_act="hardswish", last_act="hardswish", head_hidden=1024, **kw)


# ================================================================================================================
# registry
# ================================================================================================================
PREDEFINED: Dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50,
    "densenet121": densenet121, "densenet_tiny": densenet_tiny,
    "mobilenet_v2": mobilenet_v2, "mobilenet_se": mobilenet_se,
    "vit_tiny": vit_tiny, "vit_small": vit_small, "vit_base": vit_base,
    "gpt2_small": gpt2_small, "gpt2_medium": gpt2_medium, "gpt2_large": gpt2_large, "gpt_tiny": gpt_tiny,
}

ALIASES: Dict[str, str] = {
    "resnet": "resnet18", "densenet": "densenet121", "mobilenet": "mobilenet_v2",
    "mobilenet_v3_small": "mobilenet_se", "mobilenet_v3": "mobilenet_se",
    "vit": "vit_small", "vit_t": "vit_tiny", "vit_ti": "vit_tiny", "vit_s": "vit_small", "vit_b": "vit_base",
    "gpt2": "gpt2_small", "gpt2_m": "gpt2_medium", "gpt2_l": "gpt2_large",
}


def resolve_name(name: str) -> str:
    """Canonical registry name for ``name`` (lowercase, '-' -> '_', aliases resolved); KeyError if unknown."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in PREDEFINED:  # "resnet_18", "densenet_121", "mobilenetv2": compare without underscores
        compact = {k.replace("_", ""): ALIASES.get(k, k) for k in (*PREDEFINED, *ALIASES)}
        key = compact.get(key.replace("_", ""), key)
    if key not in PREDEFINED:
        raise KeyError(f"unknown predefined model {name!r}; available: {', '.join(sorted(PREDEFINED))} "
                       f"(aliases: {', '.join(sorted(ALIASES))})")
    return key


def build_predefined(name: str, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
                     **kw: Any) -> nn.Module:
    """Build a built-in model by name; GPT models ignore ``num_classes``/``in_channels``/``image_size``."""
    fn = PREDEFINED[resolve_name(name)]
    return fn(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kw)
