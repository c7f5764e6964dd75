"""Small plain-torch models and data shared by the tests (graph building, hypernetwork, training).

Each model's docstring lists the graph nodes it should produce, in execution order, so the exact node and
op counts asserted in the tests can be checked by hand.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------------------------
# convolutional
# ---------------------------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn (+ optional conv-bn downsample) -> add -> relu."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in-place residual add
        return self.relu(out)


class ResNetLike(nn.Module):
    """23 nodes: input | stem conv, bn, relu | block1: conv, bn, relu, conv, bn, add, relu |
    block2: downsample conv, bn, conv, bn, relu, conv, bn, add, relu | global_pool, linear | output."""

    def __init__(self, num_classes: int = 5, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DenseNetLike(nn.Module):
    """17 nodes: input | stem conv | layer1: bn, relu, conv (cat of one tensor is no node) |
    layer2: cat(2), bn, relu, conv | cat(3) | transition: bn, relu, conv, avg_pool | global_pool, linear | output."""

    def __init__(self, num_classes: int = 5, in_channels: int = 3, growth: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.layers = nn.ModuleList()
        c = 8
        for _ in range(2):
            self.layers.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, growth, 3, padding=1)))
            c += growth
        self.transition = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 8, 1), nn.AvgPool2d(2))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        x = self.transition(torch.cat(features, 1))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class MobileNetLike(nn.Module):
    """22 nodes: input | stem conv, bn, hardswish | expand conv, bn, relu6 | dw conv, bn, relu6 |
    SE: global_pool, conv, relu, conv, hardsigmoid, mul | project conv, bn | add | global_pool, linear | output."""

    def __init__(self, num_classes: int = 5, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.se = SqueezeExcite(16)
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.se(self.dw(self.expand(x))))
        return self.fc(x.mean((2, 3)))


class MyConv2d(nn.Module):
    """A custom module calling F.conv2d on its own parameters."""

    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) / math.sqrt(cin * k * k))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=self.weight.shape[-1] // 2)


class MyLinear(nn.Module):
    def __init__(self, fin: int, fout: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(fout, fin) / math.sqrt(fin))
        self.b = nn.Parameter(torch.zeros(fout))

    def forward(self, x):
        return F.linear(x, self.w, self.b)


class FunctionalNet(nn.Module):
    """6 nodes: input | conv (MyConv2d) | relu | global_pool | linear (MyLinear) | output."""

    def __init__(self, num_classes: int = 5, in_channels: int = 3):
        super().__init__()
        self.conv = MyConv2d(in_channels, 8)
        self.head = MyLinear(8, num_classes)

    def forward(self, x):
        return self.head(F.relu(self.conv(x)).mean(dim=(-2, -1)))


class Conv1dNet(nn.Module):
    """8 nodes: input | conv, batch_norm, relu | conv_grouped | global_pool | linear | output."""

    def __init__(self, num_classes: int = 5, in_channels: int = 2):
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.conv2 = nn.Conv1d(8, 8, 3, stride=2, groups=2)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.conv2(F.relu(self.bn(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool1d(x, 1).squeeze(-1))


class Conv3dNet(nn.Module):
    """7 nodes: input | conv, group_norm, relu | global_pool (adaptive max) | linear | output."""

    def __init__(self, num_classes: int = 5, in_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.pool = nn.AdaptiveMaxPool3d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.pool(F.relu(self.gn(self.conv(x)))).flatten(1))


class NormsNet(nn.Module):
    """10 nodes: input | conv | group_norm | relu | instance_norm (affine) | instance_norm (no params) |
    global_pool | rms_norm | linear | output."""

    def __init__(self, num_classes: int = 5, in_channels: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.inorm_plain = nn.InstanceNorm2d(8)
        self.rms = nn.RMSNorm(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.inorm_plain(self.inorm(F.relu(self.gn(self.conv(x)))))
        return self.fc(self.rms(x.mean((2, 3))))


# ---------------------------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Hand-written attention with separate q/k/v projections."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        split = lambda t: t.view(b, n, self.heads, self.hd).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.hd))
        out = att.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class ViTLike(nn.Module):
    """21 nodes: input | patch conv | class_token | pos_embed | ln | q, k, v linear | matmul | softmax | matmul |
    proj linear | add | ln | fc1, gelu, fc2 | add | ln | head linear | output."""

    def __init__(self, num_classes: int = 5, in_channels: int = 3, image_size: int = 8, patch: int = 4,
                 dim: int = 16, heads: int = 2):
        super().__init__()
        self.image_size = image_size
        self.patch = nn.Conv2d(in_channels, dim, patch, stride=patch)
        n = (image_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.head(self.norm(x)[:, 0])


class ViTMHA(nn.Module):
    """16 nodes: input | patch conv | pos_embed | ln | attn_in_proj, attention, linear (nn.MultiheadAttention) |
    add | ln | fc1, gelu, fc2 | add | global_pool (mean over tokens) | head linear | output."""

    def __init__(self, num_classes: int = 5, in_channels: int = 3, image_size: int = 8, patch: int = 4,
                 dim: int = 16, heads: int = 2):
        super().__init__()
        self.image_size = image_size
        self.patch = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch) ** 2, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos_embed
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(dim=1))


class GPTLike(nn.Module):
    """17 nodes: input | tok embedding | pos embedding | add | ln | qkv linear | attention (SDPA, causal) |
    proj linear | add | ln | fc1, gelu, fc2 | add | ln | lm_head linear (tied to tok) | output."""

    def __init__(self, vocab: int = 40, block_size: int = 16, dim: int = 16, heads: int = 2):
        super().__init__()
        self.block_size, self.heads = block_size, heads
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(block_size, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.tok.weight

    def forward(self, idx):
        b, t = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        q, k, v = (s.view(b, t, self.heads, -1).transpose(1, 2) for s in self.qkv(self.ln1(x)).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, -1))
        x = x + self.mlp(self.ln2(x))
        return self.lm_head(self.ln_f(x))


# ---------------------------------------------------------------------------------------------------------------
# parameter-handling corner cases
# ---------------------------------------------------------------------------------------------------------------
class LayerScaleNet(nn.Module):
    """7 nodes: input | fc1 linear | gelu | scale (x * gamma) | add | head linear | output."""

    def __init__(self, dim: int = 8, num_classes: int = 5):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-2))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.head(x + F.gelu(self.fc1(x)) * self.gamma)


class SharedNet(nn.Module):
    """6 nodes: input | linear (shared) | relu | linear (shared again, tied) | head linear | output."""

    def __init__(self, dim: int = 8, num_classes: int = 5):
        super().__init__()
        self.shared = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.head(self.shared(F.relu(self.shared(x))))


class AuxHeadNet(nn.Module):
    """``aux`` is never called in forward: its parameters are ``unused``."""

    def __init__(self, dim: int = 8, num_classes: int = 5):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)
        self.aux = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.fc(x)


class CumsumNet(nn.Module):
    """``raw`` goes through torch.cumsum, outside the op vocabulary."""

    def __init__(self, dim: int = 8, num_classes: int = 5):
        super().__init__()
        self.raw = nn.Parameter(torch.rand(dim))
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.fc(x * torch.cumsum(self.raw, 0))


class FFTNet(nn.Module):
    """``filt`` goes through torch.fft.fft, outside the op vocabulary."""

    def __init__(self, dim: int = 8, num_classes: int = 5):
        super().__init__()
        self.filt = nn.Parameter(torch.rand(dim))
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.fc(x + torch.fft.fft(self.filt).real)


class TwoInputNet(nn.Module):
    """6 nodes: input a | input b | linear (a) | linear (b) | add | output. Takes two tensors (args or kwargs)."""

    def __init__(self, da: int = 6, db: int = 4, dim: int = 8):
        super().__init__()
        self.fa = nn.Linear(da, dim)
        self.fb = nn.Linear(db, dim)

    def forward(self, a, b=None):
        return self.fa(a) + self.fb(b)


# ---- tiny models and data for the hypernetwork / training tests (fast on CPU) ----
class TinyCNN(nn.Module):
    """Conv-BN-ReLU stack with a residual add, depthwise conv and a classifier."""

    def __init__(self, num_classes: int = 4, in_channels: int = 1, width: int = 8, depth: int = 1):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width),
                                                   nn.BatchNorm2d(width), nn.ReLU(),
                                                   nn.Conv2d(width, width, 1)) for _ in range(depth)])
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        for b in self.blocks:
            x = x + b(x)
        return self.fc(x.mean((2, 3)))


class TinyViT(nn.Module):
    """Patch conv, class token, positional embedding, nn.MultiheadAttention, layer scale, GroupNorm-free head."""

    def __init__(self, num_classes: int = 4, in_channels: int = 1, image_size: int = 12, dim: int = 16):
        super().__init__()
        self.patch = nn.Conv2d(in_channels, dim, 4, stride=4)
        n = (image_size // 4) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, n + 1, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))
        self.norm2 = nn.RMSNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        h = self.norm1(x)
        x = x + self.gamma * self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x[:, 0])


class TinyGPT(nn.Module):
    """Token + position embeddings, causal SDPA attention, tied lm_head."""

    def __init__(self, vocab: int = 50, dim: int = 16, block: int = 8):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(block, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        q, k, v = self.qkv(x).chunk(3, -1)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        return self.lm_head(self.norm(x))


class ToyArchs:
    """A minimal architecture dataset: ``len`` and ``build(i, num_classes, in_channels, image_size)``."""

    def __len__(self) -> int:
        return 6

    def build(self, i: int, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        if i == 5:
            return TinyViT(num_classes, in_channels, image_size)
        return TinyCNN(num_classes, in_channels, width=8 + 4 * (i % 3), depth=1 + i % 2)


class ProtoData:
    """Learnable synthetic images: a fixed prototype per class plus noise (tests only, never for accuracy claims)."""

    def __init__(self, n: int = 512, num_classes: int = 4, size: int = 12, seed: int = 0, noise: float = 0.7):
        g = torch.Generator().manual_seed(seed)
        protos = torch.randn(num_classes, 1, size, size, generator=torch.Generator().manual_seed(1234))
        self.labels = torch.randint(0, num_classes, (n,), generator=g)
        self.images = protos[self.labels] + noise * torch.randn(n, 1, size, size, generator=g)
        self.num_classes = num_classes
