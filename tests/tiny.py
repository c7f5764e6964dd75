"""Tiny models and data shared by the hypernetwork/training tests (plain torch, fast on CPU)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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
