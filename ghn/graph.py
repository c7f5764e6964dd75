"""Graph building: turn any ``torch.nn.Module`` into an architecture graph the hypernetwork can read.

The model runs ONE forward pass on a tiny example input under a ``TorchFunctionMode`` that sees every torch
function call (``F.conv2d``, ``F.layer_norm``, ``x + y``, ``torch.cat`` ...): see :mod:`ghn.tracing`. No autograd
walking, no per-model special cases, no dense N x N matrices. Features and the PyG export: :mod:`ghn.features`.

    >>> g = ArchGraph.from_module(model, torch.randn(2, 3, 32, 32))
    >>> g.coverage().fraction      # 1.0 when every parameter tensor is understood
    >>> data = g.to_pyg()           # torch_geometric.data.Data with sparse edge_index
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Set, Tuple

import torch
import torch.nn as nn

from ghn.features import NUM_NODE_FEATURES, shortest_path_edges  # noqa: F401  (re-exported)
from ghn.ops import CONV_OPS, NORM_OPS
from ghn.tracing import (  # noqa: F401
    PARAM_KINDS,
    VECTOR_KINDS,
    Node,
    ParamRef,
    UnsupportedOpError,
    _Builder,
    _flatten,
    call_model,
    default_example_input,
    squeeze_shape,
)


@dataclass
class Coverage:
    """Which parameter tensors the graph covers.

    ``covered`` are predicted (or tied to a predicted tensor); ``unused`` never took part in the traced forward
    pass (e.g. an auxiliary head); ``unsupported`` reached a function outside the op vocabulary. ``frozen``
    parameters (``requires_grad=False``, e.g. fixed sinusoidal position tables) are constants: never predicted,
    not counted in ``total``.
    """

    total: int
    covered: List[str]
    unused: List[str]
    unsupported: Dict[str, str]
    tied: Dict[str, str]
    frozen: List[str] = field(default_factory=list)

    @property
    def missing(self) -> List[str]:
        return self.unused + list(self.unsupported)

    @property
    def fraction(self) -> float:
        return len(self.covered) / self.total if self.total else 1.0

    def __str__(self) -> str:
        s = f"{len(self.covered)}/{self.total} parameter tensors covered ({100 * self.fraction:.1f}%)"
        if self.tied:
            s += f", {len(self.tied)} tied"
        if self.frozen:
            s += f", {len(self.frozen)} frozen (requires_grad=False, left as they are)"
        if self.unused:
            s += f"; unused in forward: {', '.join(self.unused[:5])}{' ...' if len(self.unused) > 5 else ''}"
        if self.unsupported:
            items = [f"{k} ({v})" for k, v in list(self.unsupported.items())[:5]]
            s += f"; unsupported: {', '.join(items)}"
        return s


class ArchGraph:
    """The computation graph of one model: typed nodes, directed edges, and which parameters each node owns."""

    def __init__(self, nodes: List[Node], edges: List[Tuple[int, int]], coverage: Coverage,
                 model_name: str = ""):
        self.nodes = nodes
        self.edges = edges
        self._coverage = coverage
        self.model_name = model_name

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_module(cls, model: nn.Module, example_input: Any = None, *, strict: bool = True) -> "ArchGraph":
        """Trace ``model`` once on ``example_input`` (tensor, tuple of args, or dict of kwargs).

        The model runs in eval mode under ``torch.no_grad()`` and is restored afterwards, so running statistics
        and RNG-free state are untouched. Works on ``meta``-device models too (no memory, no compute).
        With ``strict=True`` a parameter consumed by an op outside the vocabulary raises
        :class:`UnsupportedOpError`; with ``strict=False`` it is listed in :meth:`coverage`.
        """
        if example_input is None:
            example_input = default_example_input(model)
        b = _Builder(model)
        handles = []
        for name, m in model.named_modules():
            if name:
                handles.append(m.register_forward_pre_hook(b._pre_hook(name)))
                handles.append(m.register_forward_hook(b._post_hook, always_call=True))
        training = [(m, m.training) for m in model.modules()]  # restored per module, not model.train(flag)
        model.eval()
        try:
            with torch.no_grad():
                ins = list(_flatten(example_input))
                if not ins:
                    raise ValueError("example_input contains no tensor")
                for t in ins:
                    b.add_node("input", [], t)
                with b:
                    out = call_model(model, example_input)
                srcs: Dict[int, None] = {}
                for t in _flatten(out):
                    srcs.update(dict.fromkeys(b._info(t)[0]))
                if not srcs:
                    raise ValueError(f"{type(model).__name__}: the output does not depend on the input")
                out_t = next(_flatten(out))
                b.add_node("output", srcs, None)
                b.nodes[-1].out_shape = tuple(out_t.shape)
        finally:
            for h in handles:
                h.remove()
            # through train(), parents before children: modules that drop eval-mode caches in their train()
            # override (LeViT / EfficientViT attention biases) see the call, and every module ends in its own mode
            for m, flag in training:
                m.train(flag)
        b.tags.clear()

        cov = cls._make_coverage(model, b)
        if strict and cov.unsupported:
            raise UnsupportedOpError(
                f"{type(model).__name__}: parameters consumed by torch functions outside the op vocabulary "
                f"(ghn/ops.py): " + ", ".join(f"{k} by {v}()" for k, v in cov.unsupported.items())
                + ". Add the function to ghn/ops.py or build with strict=False to leave them untouched.")
        return cls(b.nodes, b.edges, cov, type(model).__name__)

    @staticmethod
    def _make_coverage(model: nn.Module, b: _Builder) -> Coverage:
        covered, unused, unsupported, tied = [], [], {}, {}
        total = 0
        for pid, names in b.param_names.items():
            total += 1
            if pid in b.param_owner:
                covered.append(names[0])
                for alias in names[1:]:
                    tied[alias] = names[0]
            elif pid in b.unsupported:
                unsupported[names[0]] = b.unsupported[pid]
            else:
                unused.append(names[0])
        for n in b.nodes:
            for r in n.params:
                if r.tied_to is not None:
                    tied.setdefault(f"{n.name}:{r.name}", r.tied_to)
        return Coverage(total, covered, unused, unsupported, tied, list(b.frozen))

    # -- views -------------------------------------------------------------------------------------------------
    def coverage(self) -> Coverage:
        """Parameter coverage of this graph (see :class:`Coverage`)."""
        return self._coverage

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        return f"ArchGraph({self.model_name}: {len(self.nodes)} nodes, {len(self.edges)} edges, {self._coverage})"

    def _adjacent(self, forward: bool = True) -> Dict[int, List[int]]:
        """Successors (``forward``) or predecessors of every node that has any."""
        out: Dict[int, List[int]] = {}
        for src, dst in self.edges:
            a, b = (src, dst) if forward else (dst, src)
            out.setdefault(a, []).append(b)
        return out

    def norm_fed(self) -> Set[int]:
        """Nodes whose output feeds normalisations only: the scale of their weights is divided out (not part of
        the function), it only sets how fast SGD moves them."""
        return {i for i, ds in self._adjacent().items() if all(self.nodes[d].op in NORM_OPS for d in ds)}

    def post_norm_branches(self) -> Set[int]:
        """Linear nodes that end a residual branch of a post-norm block, ``x -> norm(x + f(x))``: their output feeds
        adds only, and each of those adds feeds normalisations only and takes no other add (a post-norm
        transformer's attention and MLP output projections). A pre-norm block's add also feeds the next add, and the
        last one, which feeds only the final norm, takes the add before it: their branches are not among them."""
        pred = self._adjacent(forward=False)
        adds = {i for i in self.norm_fed()
                if self.nodes[i].op == "add" and not any(self.nodes[p].op == "add" for p in pred.get(i, []))}
        return {i for i, ds in self._adjacent().items() if self.nodes[i].op == "linear" and all(d in adds for d in ds)}

    def has_attention(self) -> bool:
        """Whether the model mixes tokens by attention: a fused attention node (``nn.MultiheadAttention``,
        ``scaled_dot_product_attention``) or attention written out, a softmax between two matmuls (scores, then
        values; a scale or a bias added to the scores may sit in between). A log-softmax head or a matmul elsewhere
        (bilinear pooling) is not attention."""
        ops = {n.op for n in self.nodes}
        if "attention" in ops or not {"matmul", "softmax"} <= ops:  # most models: one pass over the nodes
            return "attention" in ops
        pred, succ = self._adjacent(forward=False), self._adjacent()

        def reaches_matmul(i: int, adj: Dict[int, List[int]]) -> bool:  # through elementwise mul / add only
            todo, seen = list(adj.get(i, [])), set()
            while todo:
                j = todo.pop()
                if j in seen:
                    continue
                seen.add(j)
                if self.nodes[j].op == "matmul":
                    return True
                if self.nodes[j].op in ("mul", "add"):
                    todo += adj.get(j, [])
            return False

        return any(n.op == "softmax" and reaches_matmul(n.idx, pred) and reaches_matmul(n.idx, succ)
                   for n in self.nodes)

    def conv_fed_norms(self) -> Set[str]:
        """The normalisation op types fed directly by a convolution's output: ``{"batch_norm"}`` for a ResNet,
        ``{"layer_norm"}`` for a LayerNorm CNN, empty for a transformer (its norms follow adds and linears)."""
        return {self.nodes[dst].op for src, dst in self.edges
                if self.nodes[src].op in CONV_OPS and self.nodes[dst].op in NORM_OPS}

    def param_refs(self) -> List[Tuple[int, ParamRef]]:
        """``(node index, ParamRef)`` for every parameter tensor to predict, in node order, tied uses excluded."""
        return [(n.idx, r) for n in self.nodes for r in n.params if r.tied_to is None]

    def op_counts(self) -> Dict[str, int]:
        """Number of nodes per op type."""
        counts: Dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def node_features(self) -> torch.Tensor:
        """Float features per node (:func:`ghn.features.node_features`)."""
        from ghn.features import node_features

        return node_features(self)

    def to_pyg(self, max_virtual_dist: int = 0):
        """Export to a ``torch_geometric.data.Data`` (:func:`ghn.features.graph_data`)."""
        from ghn.features import graph_data

        return graph_data(self, max_virtual_dist)

    def to_networkx(self):
        """Export to a ``networkx.DiGraph`` (node attributes: op, name, params, out_shape) for analysis/plots."""
        import networkx as nx

        g = nx.DiGraph(model=self.model_name)
        for n in self.nodes:
            g.add_node(n.idx, op=n.op, name=n.name, params=[r.name for r in n.params], out_shape=n.out_shape)
        g.add_edges_from(self.edges)
        return g
