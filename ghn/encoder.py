"""The graph encoder: node embeddings from op type + shape features, refined by message passing over a PyG batch.

Edges are typed: 0 = forward (producer -> consumer), 1 = backward (consumer -> producer), 1 + d = "virtual"
shortest-path edges at distance d >= 2 (both directions). Each layer is a pre-norm residual block; everything is
sparse and batched (``torch_geometric.nn.MessagePassing``), with no Python loop over nodes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ghn.features import NUM_BASE_FEATURES, NUM_NODE_FEATURES
from ghn.ops import OP_TYPES

try:  # torch_geometric is a core dependency; the import is kept local to this module
    from torch_geometric.nn import MessagePassing, TransformerConv
except ImportError as e:  # pragma: no cover
    raise ImportError("ghn.encoder needs torch-geometric: pip install torch-geometric") from e


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Two-layer GELU MLP."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class GatedMessagePassing(MessagePassing):
    """Messages ``W h_j * sigmoid(g[edge_type])``, mean-aggregated, then a residual MLP update."""

    def __init__(self, hidden: int, num_edge_types: int):
        super().__init__(aggr="mean")
        self.norm = nn.LayerNorm(hidden)
        self.lin = nn.Linear(hidden, hidden)
        self.gate = nn.Embedding(num_edge_types, hidden)
        self.update_mlp = mlp(2 * hidden, 2 * hidden, hidden)

    def forward(self, h: Tensor, edge_index: Tensor, edge_type: Tensor) -> Tensor:
        hn = self.norm(h)
        agg = self.propagate(edge_index, x=hn, etype=edge_type)
        return h + self.update_mlp(torch.cat([hn, agg], -1))

    def message(self, x_j: Tensor, etype: Tensor) -> Tensor:  # noqa: D102
        return self.lin(x_j) * torch.sigmoid(self.gate(etype))


class GraphTransformerLayer(nn.Module):
    """Sparse graph attention over the typed edges (``TransformerConv`` with edge-type embeddings) + FFN."""

    def __init__(self, hidden: int, num_edge_types: int, heads: int = 4):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.edge = nn.Embedding(num_edge_types, hidden)
        self.attn = TransformerConv(hidden, hidden // heads, heads=heads, edge_dim=hidden, root_weight=True)
        self.ffn = mlp(hidden, 2 * hidden, hidden)

    def forward(self, h: Tensor, edge_index: Tensor, edge_type: Tensor) -> Tensor:
        h = h + self.attn(self.norm1(h), edge_index, self.edge(edge_type))
        return h + self.ffn(self.norm2(h))


class GraphEncoder(nn.Module):
    """Embeds every node of a (batched) architecture graph into ``hidden`` dimensions."""

    def __init__(self, hidden: int = 64, layers: int = 4, max_virtual_dist: int = 5, conv: str = "gated",
                 pos_features: bool = True):
        super().__init__()
        if conv not in ("gated", "transformer"):
            raise ValueError(f"conv must be 'gated' or 'transformer', got {conv!r}")
        self.max_virtual_dist = max_virtual_dist
        n_types = 2 + max(0, max_virtual_dist - 1)
        self.op_embed = nn.Embedding(len(OP_TYPES), hidden)
        # without position codes only the first NUM_BASE_FEATURES columns are read (checkpoints made before them)
        self.num_features = NUM_NODE_FEATURES if pos_features else NUM_BASE_FEATURES
        self.feat = mlp(self.num_features, hidden, hidden)
        layer = GatedMessagePassing if conv == "gated" else GraphTransformerLayer
        self.layers = nn.ModuleList([layer(hidden, n_types) for _ in range(layers)])
        self.out_norm = nn.LayerNorm(hidden)

    def edges(self, data) -> tuple:
        """Typed edge list (forward, backward, virtual) of a PyG ``Data``/``Batch``."""
        ei = data.edge_index
        parts = [ei, ei.flip(0)]
        types = [torch.zeros(ei.shape[1], dtype=torch.long, device=ei.device),
                 torch.ones(ei.shape[1], dtype=torch.long, device=ei.device)]
        ve = getattr(data, "ve_index", None)
        if ve is not None and ve.numel() and self.max_virtual_dist > 1:
            keep = data.ve_dist <= self.max_virtual_dist
            parts.append(ve[:, keep])
            types.append(data.ve_dist[keep] - 1)
        return torch.cat(parts, 1), torch.cat(types)

    def forward(self, data) -> Tensor:
        """Node embeddings ``[num_nodes, hidden]`` of a PyG ``Data`` or ``Batch`` (``ghn.features.graph_data``)."""
        h = self.op_embed(data.op) + self.feat(data.x[:, :self.num_features])
        edge_index, edge_type = self.edges(data)
        for layer in self.layers:
            h = layer(h, edge_index, edge_type)
        return self.out_norm(h)
