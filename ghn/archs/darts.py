"""DARTS-like CNN modules (cells of ops on earlier states) and ``build_model`` for every spec family."""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ghn.archs.counting import _CellPlan, _cnn_plan, _se_hidden, _used_inputs
from ghn.archs.layers import LayerNorm2d, SqueezeExcite, make_act, norm2d  # noqa: F401  (LayerNorm2d re-exported)
from ghn.archs.spec import _nodes, check_spec, patch_size_for


# ----------------------------------------------------------------------------------------------------------------
# CNN modules
# ----------------------------------------------------------------------------------------------------------------
class ConvNorm(nn.Sequential):
    """[act] -> conv (optionally depthwise-separable / dilated) -> norm; conv bias only when there is no norm."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, norm: str, act: Optional[str],
                 separable: bool = False, dilation: int = 1):
        layers: List[nn.Module] = [make_act(act)] if act else []
        pad = dilation * (k - 1) // 2
        if separable:
            layers += [nn.Conv2d(c_in, c_in, k, stride, pad, dilation=dilation, groups=c_in, bias=False),
                       nn.Conv2d(c_in, c_out, 1, bias=norm == "none")]
        else:
            layers.append(nn.Conv2d(c_in, c_out, k, stride, pad, dilation=dilation, bias=norm == "none"))
        layers.append(norm2d(norm, c_out))
        super().__init__(*layers)


class FactorizedReduce(nn.Module):
    """act -> two stride-2 1x1 convs on offset grids -> concat -> norm (halves the resolution, any size)."""

    def __init__(self, c_in: int, c_out: int, norm: str, act: str):
        super().__init__()
        self.act = make_act(act)
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, 2, bias=False)
        self.norm = norm2d(norm, c_out)
        if norm == "none":
            self.bias = nn.Parameter(torch.zeros(c_out))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        y = x[:, :, 1:, 1:]
        y = F.pad(y, (0, x.shape[3] % 2, 0, x.shape[2] % 2))  # odd sizes: same output size as conv1
        out = self.norm(torch.cat([self.conv1(x), self.conv2(y)], dim=1))
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out


class Pool(nn.Module):
    """3x3 max or average pooling (stride 1 or 2, padding 1)."""

    def __init__(self, kind: str, stride: int):
        super().__init__()
        self.kind, self.stride = kind, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return F.max_pool2d(x, 3, self.stride, 1)
        return F.avg_pool2d(x, 3, self.stride, 1, count_include_pad=False)


def _make_op(op: str, c: int, stride: int, norm: str, act: str) -> nn.Module:
    if op in ("conv1", "conv3", "conv5"):
        return ConvNorm(c, c, int(op[-1]), stride, norm, act)
    if op in ("sep3", "sep5"):
        k = int(op[-1])
        return nn.Sequential(ConvNorm(c, c, k, stride, norm, act, separable=True),
                             ConvNorm(c, c, k, 1, norm, act, separable=True))
    if op in ("dil3", "dil5"):
        return ConvNorm(c, c, int(op[-1]), stride, norm, act, separable=True, dilation=2)
    if op in ("max3", "avg3"):
        return Pool(op[:3], stride)
    if op == "skip":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, norm, act)
    if op == "se":
        return SqueezeExcite(c, _se_hidden(c), act, "sigmoid", stride)
    raise ValueError(f"unknown op {op!r}")


class Cell(nn.Module):
    """A DARTS-like cell: preprocess the two inputs, ``steps`` nodes of two summed ops, concat the nodes."""

    def __init__(self, genotype: Sequence[Sequence[Any]], plan: _CellPlan, norm: str, act: str):
        super().__init__()
        self.reduction = plan.reduction
        used = _used_inputs(genotype)
        c = plan.c
        if 0 in used:
            self.pre0: Optional[nn.Module] = (FactorizedReduce(plan.c_pp, c, norm, act) if plan.reduction_prev
                                              else ConvNorm(plan.c_pp, c, 1, 1, norm, act))
        else:
            self.pre0 = None
        self.pre1 = ConvNorm(plan.c_p, c, 1, 1, norm, act) if 1 in used else None
        self.ops = nn.ModuleList()
        self.wiring: List[List[Tuple[int, int]]] = []  # per node: (op index in self.ops, input state)
        for node in _nodes(genotype):
            wires = []
            for op, i in node:
                if op == "zero":
                    continue
                stride = 2 if plan.reduction and i < 2 else 1
                wires.append((len(self.ops), i))
                self.ops.append(_make_op(op, c, stride, norm, act))
            self.wiring.append(wires)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states: List[Optional[torch.Tensor]] = [
            self.pre0(s0) if self.pre0 is not None else None,
            self.pre1(s1) if self.pre1 is not None else None,
        ]
        for wires in self.wiring:
            outs = [self.ops[k](states[i]) for k, i in wires]
            h = outs[0]
            for o in outs[1:]:
                h = h + o
            states.append(h)
        nodes = states[2:]
        return nodes[0] if len(nodes) == 1 else torch.cat(nodes, dim=1)  # type: ignore[arg-type]


class DartsNet(nn.Module):
    """Stem -> cells (reductions at n//3 and 2n//3) -> global average pool -> 1 or 2 linear layers.

    The stem is stride 1 for images < 64 px; from 64 px its first conv is stride 2, and a two-conv stem's second
    conv is stride 2 as well from 128 px.
    """

    def __init__(self, spec: Mapping[str, Any], num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        check_spec(spec)
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        norm, act, k = str(spec["norm"]), str(spec["act"]), int(spec["stem_k"])
        c_stem, plans, c_out = _cnn_plan(spec)
        s1 = 2 if image_size >= 64 else 1
        if spec["stem"] == "conv":
            self.stem = ConvNorm(in_channels, c_stem, k, s1, norm, None)
        else:
            h = max(1, c_stem // 2)
            self.stem = nn.Sequential(ConvNorm(in_channels, h, k, s1, norm, None),
                                      ConvNorm(h, c_stem, 3, 2 if image_size >= 128 else 1, norm, act))
        self.cells = nn.ModuleList([
            Cell(spec["reduce"] if p.reduction else spec["normal"], p, norm, act) for p in plans])
        h = int(spec["fc_hidden"])
        if h:
            self.head = nn.Sequential(nn.Linear(c_out, h), make_act(act), nn.Linear(h, num_classes))
        else:
            self.head = nn.Sequential(nn.Linear(c_out, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(F.adaptive_avg_pool2d(s1, 1).flatten(1))


# ----------------------------------------------------------------------------------------------------------------
# building
# ----------------------------------------------------------------------------------------------------------------
def build_model(spec: Mapping[str, Any], num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                *, vocab_size: Optional[int] = None) -> nn.Module:
    """Build the ``nn.Module`` of a spec for a task (deterministic structure, default torch init).

    GPT specs ignore ``num_classes``/``in_channels``/``image_size`` and use ``vocab_size`` (default: the spec's
    ``"vocab"`` or 50257).
    """
    fam = spec.get("family")
    if fam == "cnn":
        return DartsNet(spec, num_classes, in_channels, image_size)
    check_spec(spec)
    if fam == "vit":
        from ghn.archs.transformers import ViT

        return ViT(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                   patch_size=patch_size_for(image_size, int(spec["patches"])), dim=int(spec["dim"]),
                   depth=int(spec["depth"]), heads=int(spec["heads"]), mlp_ratio=float(spec["mlp"]),
                   pre_norm=bool(spec["pre_norm"]), pool=str(spec["pool"]), attn=str(spec["attn"]),
                   norm=str(spec["norm"]), qkv_bias=bool(spec["qkv_bias"]))
    if fam == "gpt":
        from ghn.archs.transformers import GPT

        return GPT(vocab_size=int(vocab_size or spec.get("vocab", 50257)), block_size=int(spec["block"]),
                   dim=int(spec["dim"]), depth=int(spec["depth"]), heads=int(spec["heads"]),
                   mlp_ratio=float(spec["mlp"]), pre_norm=bool(spec["pre_norm"]), tie_embeddings=bool(spec["tie"]),
                   attn=str(spec["attn"]), norm=str(spec["norm"]))
    from ghn.archs.registry import build_predefined

    return build_predefined(str(spec["name"]), num_classes=num_classes, in_channels=in_channels,
                            image_size=image_size)
