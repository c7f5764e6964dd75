"""Node features and the PyG export of an :class:`~ghn.graph.ArchGraph` (what the encoder reads).

Per node: log sizes of its main parameter and output, stride and groups, a tied flag, relative depth, and sinusoidal
codes of the longest-path depth from the input and to the output (so repeated blocks at different depths differ;
docs/DESIGN.md). Virtual edges join nodes at shortest-path distance 2..``max_virtual_dist`` (GHN-2's shortcut for
long-range message passing), computed sparsely.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Tuple

import torch

from ghn import ops as O
from ghn.tracing import squeeze_shape

if TYPE_CHECKING:
    from ghn.graph import ArchGraph

NUM_BASE_FEATURES = 10  # shape features + relative depth (format of checkpoints trained before position codes)
POS_FREQS = (1.0, 1 / 3, 1 / 9, 1 / 27)  # angular frequencies of the depth codes (periods ~6 to ~170 nodes)
NUM_NODE_FEATURES = NUM_BASE_FEATURES + 4 * len(POS_FREQS)  # + sin/cos codes of depth from input and to output


def node_features(graph: "ArchGraph") -> torch.Tensor:
    """Float features per node: shape information, relative depth, and sinusoidal codes of the longest-path
    depth from the input and to the output (so repeated blocks at different depths differ; docs/DESIGN.md)."""
    feats = torch.zeros(len(graph.nodes), NUM_NODE_FEATURES)
    depth = [0] * len(graph.nodes)
    for s, d in graph.edges:  # node order is execution order, hence topological
        depth[d] = max(depth[d], depth[s] + 1)
    height = [0] * len(graph.nodes)
    for s, d in reversed(graph.edges):
        height[s] = max(height[s], height[d] + 1)
    max_depth = max(depth) or 1
    lg = lambda v: math.log2(1 + v)  # noqa: E731
    for n in graph.nodes:
        f = feats[n.idx]
        w = next((r for r in n.params if r.kind == "matrix"), None)
        if w is not None:
            shp = squeeze_shape(w.shape)
            f[0], f[1] = lg(shp[0]), lg(shp[1])
            k = math.prod(shp[2:]) if len(shp) > 2 else 1
            f[2] = lg(k)
            f[3] = lg(w.fan_in)
        elif n.params:
            f[0] = lg(n.params[0].shape[-1]) if n.params[0].shape else 0.0
        f[4] = lg(n.attrs.get("stride", 1))
        g = n.attrs.get("groups", 1)
        f[5] = lg(g)
        shp = n.out_shape
        if len(shp) >= 4:
            f[6], f[7] = lg(shp[1]), lg(math.prod(shp[2:]))
        elif len(shp) == 3:
            f[6], f[7] = lg(shp[2]), lg(shp[1])
        elif len(shp) == 2:
            f[6] = lg(shp[1])
        f[8] = float(any(r.tied_to is not None for r in n.params))
        f[9] = depth[n.idx] / max_depth
    freqs = torch.tensor(POS_FREQS)
    for j, pos in enumerate((depth, height)):
        ang = torch.tensor(pos, dtype=torch.float32)[:, None] * freqs
        k = NUM_BASE_FEATURES + 2 * len(POS_FREQS) * j
        feats[:, k:k + len(POS_FREQS)] = torch.sin(ang)
        feats[:, k + len(POS_FREQS):k + 2 * len(POS_FREQS)] = torch.cos(ang)
    return feats


def graph_data(graph: "ArchGraph", max_virtual_dist: int = 0):
    """Export to a ``torch_geometric.data.Data``: ``op`` (LongTensor[N], ids into ``ghn.ops.OP_TYPES``), ``x``
    (float features [N, F]), ``edge_index`` (LongTensor[2, E], sparse, directed source -> target) and, when
    ``max_virtual_dist > 1``, ``ve_index``/``ve_dist``: undirected pairs at shortest-path distance 2..max."""
    from torch_geometric.data import Data

    op = torch.tensor([O.op_id(n.op) for n in graph.nodes], dtype=torch.long)
    ei = torch.tensor(graph.edges, dtype=torch.long).t().reshape(2, -1)
    data = Data(op=op, x=node_features(graph), edge_index=ei, num_nodes=len(graph.nodes))
    if max_virtual_dist > 1:
        data.ve_index, data.ve_dist = shortest_path_edges(ei, len(graph.nodes), max_virtual_dist)
    return data


def shortest_path_edges(edge_index: torch.Tensor, num_nodes: int, max_dist: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Undirected node pairs at shortest-path distance 2..``max_dist``: ``(pairs [2, P], distances [P])``.

    A breadth-first search from every node at once, kept sparse: the frontier is a sorted set of (source, node)
    pair keys ``source * N + node``, expanded through the CSR adjacency. Memory is O(pairs within max_dist), never
    N x N, so a graph of 10^5 nodes costs what its neighbourhoods cost. Pairs come sorted by distance, then source,
    then target.
    """
    empty = torch.empty(2, 0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    if num_nodes == 0 or edge_index.numel() == 0 or max_dist < 2:
        return empty
    n = num_nodes
    und = torch.cat([edge_index, edge_index.flip(0)], 1).long()
    keys = torch.unique(und[0] * n + und[1])  # sorted, so grouped by source: a CSR adjacency
    col = keys % n
    rowptr = torch.searchsorted(keys // n, torch.arange(n + 1))
    deg = rowptr[1:] - rowptr[:-1]
    reached = torch.unique(torch.cat([torch.arange(n) * (n + 1), keys]))  # distance 0 and 1
    f_src, f_node = keys // n, col
    pairs, dists = [], []
    for d in range(2, max_dist + 1):
        cnt = deg[f_node]
        total = int(cnt.sum())
        if total == 0:
            break
        first = torch.cumsum(cnt, 0) - cnt
        pos = rowptr[f_node].repeat_interleave(cnt) + torch.arange(total) - first.repeat_interleave(cnt)
        new = torch.unique(f_src.repeat_interleave(cnt) * n + col[pos])
        new = new[~torch.isin(new, reached)]
        if new.numel() == 0:
            break
        reached = torch.unique(torch.cat([reached, new]))
        pairs.append(torch.stack([new // n, new % n]))
        dists.append(torch.full((new.numel(),), d, dtype=torch.long))
        f_src, f_node = new // n, new % n
    if not pairs:
        return empty
    return torch.cat(pairs, 1), torch.cat(dists)
