"""Graph building: turn any ``torch.nn.Module`` into an architecture graph the hypernetwork can read.

How it works. The model runs ONE forward pass on a tiny example input under a ``TorchFunctionMode`` that sees
every torch function call (``F.conv2d``, ``F.layer_norm``, ``x + y``, ``torch.cat`` ...). Every tensor is tagged
with the graph nodes that produced it; a call whose function is in the op vocabulary (``ghn.ops``) becomes a node
with edges from the producers of its inputs, other calls pass the tags through. Parameters are recognised by
object identity when they reach a function, so tied weights (one tensor, several names or several uses) are found
for free and predicted once. No autograd walking, no per-model special cases, no dense N x N matrices.

    >>> g = ArchGraph.from_module(model, torch.randn(2, 3, 32, 32))
    >>> g.coverage().fraction      # 1.0 when every parameter tensor is understood
    >>> data = g.to_pyg()           # torch_geometric.data.Data with sparse edge_index
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ghn import ops as O

NUM_BASE_FEATURES = 10  # shape features + relative depth (format of checkpoints trained before position codes)
POS_FREQS = (1.0, 1 / 3, 1 / 9, 1 / 27)  # angular frequencies of the depth codes (periods ~6 to ~170 nodes)
NUM_NODE_FEATURES = NUM_BASE_FEATURES + 4 * len(POS_FREQS)  # + sin/cos codes of depth from input and to output


class UnsupportedOpError(RuntimeError):
    """A parameter reached a torch function the op vocabulary does not understand (strict mode)."""


@dataclass
class ParamRef:
    """One parameter tensor owned by a node.

    ``kind`` tells the decoder what to emit: ``matrix`` (ndim >= 2 after dropping leading 1s: conv/linear weights,
    embedding tables, positional embeddings), or a vector kind: ``bias``, ``gain`` (norm scale, layer scale),
    ``shift`` (norm bias), ``token`` (class token). ``op`` is the owning node's op type. ``tied_to`` names the
    canonical parameter when this use shares its tensor with an earlier node; such refs are never predicted again.
    """

    name: str
    shape: Tuple[int, ...]
    kind: str
    fan_in: int
    transposed: bool = False
    tied_to: Optional[str] = None
    aliases: Tuple[str, ...] = ()
    op: str = ""


@dataclass
class Node:
    """A graph node: an op type, a readable name, owned parameters and the shape of its output."""

    idx: int
    op: str
    name: str
    params: List[ParamRef] = field(default_factory=list)
    out_shape: Tuple[int, ...] = ()
    attrs: Dict[str, Any] = field(default_factory=dict)


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


# ---------------------------------------------------------------------------------------------------------------
# tracing
# ---------------------------------------------------------------------------------------------------------------
def _flatten(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """Yield the tensors inside (nested) tuples, lists, dicts and dict-like model outputs."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth > 4:
        return
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _flatten(o, depth + 1)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flatten(o, depth + 1)
    elif hasattr(obj, "to_tuple"):  # HF ModelOutput
        yield from _flatten(obj.to_tuple(), depth + 1)


def _arg(args: Sequence[Any], kwargs: Dict[str, Any], pos: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[pos] if len(args) > pos else default


def _squeeze_shape(shape: Sequence[int]) -> Tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


class _Tag:
    __slots__ = ("sources", "params", "ref")

    def __init__(self, sources: Tuple[int, ...], params: Tuple[int, ...], ref: torch.Tensor):
        self.sources, self.params, self.ref = sources, params, ref


_MHA_SIG = inspect.signature(F.multi_head_attention_forward)


class _Builder(TorchFunctionMode):
    """Records the dataflow of one forward pass into nodes and edges."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.nodes: List[Node] = []
        self.edges: List[Tuple[int, int]] = []
        self.tags: Dict[int, _Tag] = {}
        self.scope: List[str] = [""]
        self.param_names: Dict[int, List[str]] = {}
        self.frozen: List[str] = []  # requires_grad=False (fixed sinusoidal tables ...): constants, never predicted
        for name, p in model.named_parameters(remove_duplicate=False):
            if p.requires_grad:
                self.param_names.setdefault(id(p), []).append(name)
            elif name not in self.frozen:
                self.frozen.append(name)
        self._params_by_id: Dict[int, torch.Tensor] = {id(p): p for p in model.parameters() if p.requires_grad}
        self.gains: set = set()  # ids of parameters that scale a computed weight (weight_norm's g)
        self.param_owner: Dict[int, str] = {}  # id(param) -> canonical name once attributed
        self.unsupported: Dict[int, str] = {}
        self.seen: set = set()
        self._keep: List[torch.Tensor] = []

    # -- tags --------------------------------------------------------------------------------------------------
    def _info(self, t: torch.Tensor) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        if id(t) in self.param_names:
            self.seen.add(id(t))
            return (), (id(t),)
        tag = self.tags.get(id(t))
        if tag is not None and tag.ref is t:
            return tag.sources, tag.params
        return (), ()

    def _tag(self, out: Any, sources: Tuple[int, ...], params: Tuple[int, ...] = ()) -> None:
        for t in _flatten(out):
            if id(t) in self.param_names:
                continue
            self.tags[id(t)] = _Tag(sources, params, t)

    def add_node(self, op: str, sources: Iterable[int], out: Any = None, params: Sequence[Tuple[int, str]] = (),
                 attrs: Optional[Dict[str, Any]] = None, transposed: bool = False,
                 fan_in: Optional[int] = None) -> int:
        """Append a node owning ``params``. ``fan_in`` overrides the one read off the first matrix's shape: for a
        slice of a parameter (one expert of an MoE table) the consumed slice decides."""
        idx = len(self.nodes)
        refs = []
        n_vec = 0
        for pid, _ in params:
            names = self.param_names[pid]
            kind, f_in = self._kind(op, _squeeze_shape(self._param_shape(pid)), pid, transposed, n_vec)
            if kind == "matrix" and fan_in is not None:
                f_in, fan_in = fan_in, None
            n_vec += kind != "matrix"
            tied = self.param_owner.get(pid)
            if tied is None:
                self.param_owner[pid] = names[0]
            refs.append(ParamRef(names[0], tuple(self._param_shape(pid)), kind, int(f_in), transposed,
                                 tied, tuple(names[1:]), op))
        name = self._node_name(op, refs)
        out_t = next(_flatten(out), None) if out is not None else None
        shape = tuple(out_t.shape) if out_t is not None else ()
        self.nodes.append(Node(idx, op, name, refs, shape, dict(attrs or {})))
        for s in dict.fromkeys(sources):
            if s != idx:
                self.edges.append((s, idx))
        if out is not None:
            self._tag(out, (idx,))
        return idx

    def _kind(self, op: str, shape: Tuple[int, ...], pid: int, transposed: bool, n_vec: int) -> Tuple[str, int]:
        """Parameter kind and fan-in of a parameter of (leading-1-squeezed) ``shape`` owned by an ``op`` node."""
        if pid in self.gains:  # weight_norm's g: a per-output-channel gain whatever its singleton dims
            return "gain", 1
        if len(shape) >= 2:
            if transposed:
                return "matrix", shape[0]
            if op == "conv_transpose":
                return "matrix", shape[1] * math.prod(shape[2:])
            if op in ("embedding", "pos_embed"):
                return "matrix", shape[1]
            return "matrix", math.prod(shape[1:])
        if op in O.NORM_OPS:
            return ("gain" if n_vec == 0 else "shift"), 1
        return {"scale": "gain", "class_token": "token"}.get(op, "bias"), 1

    def _param_shape(self, pid: int) -> Tuple[int, ...]:
        return self._params_by_id[pid].shape

    def _node_name(self, op: str, refs: List[ParamRef]) -> str:
        if refs:
            # a tied tensor has several names: prefer the one under the module now running (lm_head, not tok_emb)
            scope = self.scope[-1]
            pname = next((n for n in (refs[0].name,) + refs[0].aliases if scope and n.startswith(scope + ".")),
                         refs[0].name)
            owner = pname.rsplit(".", 1)
            return owner[0] if len(owner) == 2 else pname
        scope = self.scope[-1]
        return f"{scope}.{op}" if scope else op

    # -- the hook ----------------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        name = O.normalize_func_name(func)
        if name in O.METADATA_FUNCS:  # param.shape, .size(), .dim(): reading metadata is not a use
            return func(*args, **kwargs)
        if name == "multi_head_attention_forward":
            return self._mha(func, args, kwargs)
        tensors = [t for t in _flatten((args, kwargs)) if isinstance(t, torch.Tensor)]
        sources: Dict[int, None] = {}
        params: Dict[int, None] = {}
        for t in tensors:
            s, p = self._info(t)
            sources.update(dict.fromkeys(s))
            params.update(dict.fromkeys(p))
        out = func(*args, **kwargs)
        if not tensors or not isinstance(out, (torch.Tensor, tuple, list)):
            return out
        self._record(name, args, kwargs, out, tuple(sources), tuple(params), tensors)
        return out

    def _record(self, name: str, args, kwargs, out, sources: Tuple[int, ...], params: Tuple[int, ...],
                tensors: List[torch.Tensor]) -> None:
        plist = [(p, "") for p in params]
        x = tensors[0]
        if name == "hardtanh" and _arg(args, kwargs, 1, "min_val", -1.0) == 0:
            name = "relu6"  # nn.ReLU6 calls F.hardtanh(x, 0, 6)
        if name in O.CONV_FUNCS or name in O.CONV_TRANSPOSE_FUNCS:
            w = _arg(args, kwargs, 1, "weight")
            groups = int(_arg(args, kwargs, 6, "groups", 1) or 1)  # position 6 in F.conv*d and F.conv_transpose*d
            stride = _arg(args, kwargs, 3, "stride", 1)
            stride = int(stride[0] if isinstance(stride, (tuple, list)) else stride)
            in_ch = int(x.shape[1]) if x.dim() > 1 else 1
            if name in O.CONV_TRANSPOSE_FUNCS:
                op = "conv_transpose"
            elif groups == 1:
                op = "conv"
            elif groups == in_ch:
                op = "conv_depthwise"
            else:
                op = "conv_grouped"
            dims = O.CONV_FUNCS.get(name) or O.CONV_TRANSPOSE_FUNCS[name]
            attrs = {"stride": stride, "groups": groups, "dims": dims,
                     "kernel": tuple(int(k) for k in w.shape[2:]) if isinstance(w, torch.Tensor) else ()}
            if params:
                self.add_node(op, sources, out, plist, attrs)
            else:  # convolution with a computed weight (CondConv: routing @ expert bank): data flow only, but
                # the parameters it was computed from take this conv's fan-in, not the number of experts
                self._set_fan_in(w, int(w.shape[0] if op == "conv_transpose" else math.prod(w.shape[1:]))
                                 if isinstance(w, torch.Tensor) and w.dim() > 1 else None)
                self._tag(out, sources)
            return
        if name in O.LINEAR_FUNCS or name in O.EMBEDDING_FUNCS or name in O.NORM_FUNCS:
            if not params and name not in O.NORM_FUNCS:
                op = "matmul" if len(sources) > 1 else None
            else:
                op = "linear" if name in O.LINEAR_FUNCS else ("embedding" if name in O.EMBEDDING_FUNCS
                                                             else O.NORM_FUNCS[name])
            if op is None:
                self._tag(out, sources)
            else:
                w = _arg(args, kwargs, 1, "weight")
                f_in = int(w.shape[-1]) if name == "linear" and isinstance(w, torch.Tensor) and w.dim() == 2 \
                    else None  # the consumed (out, in) matrix decides, also when it is a slice of a 3-D table
                self.add_node(op, sources, out, plist, fan_in=f_in)
            return
        if name in O.MATMUL_FUNCS:
            if params:
                # x @ W or addmm(b, x, W): the weight is stored (in, out) (HF-style Conv1D, MoE expert tables);
                # W @ x: (out, in). The fan-in is the contracted dimension of the consumed operand.
                ops_ = [t for t in args if isinstance(t, torch.Tensor)]
                w_ops = [k for k, t in enumerate(ops_) if self._info(t)[1] and t.dim() >= 2]
                w_first = bool(w_ops) and w_ops[0] == 0 and len(ops_) > 1
                f_in = None
                if w_ops and name != "einsum":
                    t = ops_[w_ops[0]]
                    f_in = int(t.shape[-1] if w_first else t.shape[-2])
                self.add_node("linear", sources, out, plist, transposed=not w_first, fan_in=f_in)
            elif len(sources) > 1:
                self.add_node("matmul", sources, out)
            else:
                self._tag(out, sources)
            return
        if name in O.ATTENTION_FUNCS:
            if params:  # a learned query / key (attention pooling): its own token node feeding the attention
                sources = sources + (self.add_node("class_token", (), None, plist),)
            self.add_node("attention", sources, out)
            return
        if name in O.RECURRENT_FUNCS:
            self.add_node("recurrent", sources, out, plist)
            return
        if name in O.ADD_FUNCS or name in O.MUL_FUNCS or name in O.CAT_FUNCS:
            if params:
                shapes = [_squeeze_shape(self._params_by_id[p].shape) for p in params]
                if name in O.CAT_FUNCS:
                    op = "class_token"
                elif name in O.MUL_FUNCS:
                    op = "scale"
                else:
                    op = "pos_embed" if any(len(s) >= 2 for s in shapes) else "shift"
                self.add_node(op, sources, out, plist)
            elif len(sources) > 1:
                op = "cat" if name in O.CAT_FUNCS else ("mul" if name in O.MUL_FUNCS else "add")
                self.add_node(op, sources, out)
            else:
                self._tag(out, sources)
            return
        if params and not sources and (name in O.PARAM_REPARAM_FUNCS or name in O.ACTIVATION_FUNCS
                                       or name in O.SOFTMAX_FUNCS):
            # an elementwise function or a resampling of parameters alone (-exp(A_log) in Mamba, sigmoid gates,
            # interpolated position tables, weight_norm): a reparameterisation; the op that meets data owns them
            if name == "weight_norm":
                self.gains.add(id(_arg(args, kwargs, 1, "g")))
            self._tag(out, sources, params)
            return
        if params and name not in O.PASSTHROUGH_PARAM_FUNCS:
            # a parameter consumed with data by a function we do not understand: never guess
            for p in params:
                self.unsupported.setdefault(p, name)
            self._tag(out, sources)
            return
        if not sources:
            self._tag(out, sources, params)
            return
        if name in O.ACTIVATION_FUNCS:
            self.add_node(O.ACTIVATION_FUNCS[name], sources, out)
        elif name in O.SOFTMAX_FUNCS:
            self.add_node("softmax", sources, out)
        elif name in O.POOL_FUNCS:
            k = _arg(args, kwargs, 1, "kernel_size", 1)
            k = int(k[0] if isinstance(k, (tuple, list)) else k)
            self.add_node(O.POOL_FUNCS[name], sources, out, attrs={"kernel": (k,)})
        elif name in O.ADAPTIVE_POOL_FUNCS:
            size = _arg(args, kwargs, 1, "output_size", 1)
            sizes = size if isinstance(size, (tuple, list)) else (size,)
            glob = all(s == 1 for s in sizes)
            self.add_node("global_pool" if glob else O.ADAPTIVE_POOL_FUNCS[name], sources, out)
        elif name in O.MEAN_FUNCS and self._is_global_reduce(x, args, kwargs):
            self.add_node("global_pool", sources, out)
        else:
            self._tag(out, sources, params)

    def _set_fan_in(self, weight: Any, fan_in: Optional[int]) -> None:
        """Give the matrices of the nodes that computed ``weight`` (a tensor used as a weight) ``fan_in``."""
        if fan_in is None:
            return
        for s in self._info(weight)[0]:
            for r in self.nodes[s].params:
                if r.kind == "matrix":
                    r.fan_in = fan_in

    @staticmethod
    def _is_global_reduce(x: torch.Tensor, args, kwargs) -> bool:
        dim = _arg(args, kwargs, 1, "dim", None)
        if dim is None or isinstance(dim, torch.Tensor):
            return False
        dims = {d % x.dim() for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
        if x.dim() == 3:  # (B, tokens, features): pooling over tokens
            return dims == {1}
        return x.dim() >= 4 and dims == set(range(2, x.dim()))

    def _mha(self, func, args, kwargs):
        bound = _MHA_SIG.bind(*args, **kwargs)
        a = bound.arguments
        srcs: Dict[int, None] = {}
        qkv_params: Dict[int, None] = {}
        for key in ("query", "key", "value"):
            s_, p_ = self._info(a[key])
            srcs.update(dict.fromkeys(s_))
            qkv_params.update(dict.fromkeys(p_))
        in_params = [a.get(k) for k in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                                        "in_proj_bias", "bias_k", "bias_v")]
        in_params = [(id(p), "") for p in in_params if isinstance(p, torch.Tensor) and id(p) in self.param_names]
        out_params = [(id(p), "") for p in (a.get("out_proj_weight"), a.get("out_proj_bias"))
                      if isinstance(p, torch.Tensor) and id(p) in self.param_names]
        for pid, _ in in_params + out_params:
            self.seen.add(pid)
        out = func(*args, **kwargs)
        if qkv_params:  # a learned query (SigLIP's attention-pooling probe): a token node of its own
            srcs[self.add_node("class_token", (), None, [(p, "") for p in qkv_params])] = None
        n_in = self.add_node("attn_in_proj", srcs, None, in_params)
        n_att = self.add_node("attention", [n_in], None)
        self.add_node("linear", [n_att], out[0], out_params)
        self.nodes[n_in].out_shape = self.nodes[n_att].out_shape = tuple(out[0].shape)
        if len(out) > 1 and isinstance(out[1], torch.Tensor):
            self._tag(out[1], (n_att,))
        return out

    # -- module scopes (names of parameter-free nodes) -------------------------------------------------------
    def _pre_hook(self, name: str):
        def hook(module, inputs):
            self.scope.append(name)
        return hook

    def _post_hook(self, module, inputs, output):
        if len(self.scope) > 1:
            self.scope.pop()


def default_example_input(model: nn.Module, batch: int = 2, image_size: int = 32, seq_len: int = 8) -> Any:
    """A tiny input that fits ``model``: images for conv nets, token ids for embedding-first nets."""
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    size = int(getattr(model, "image_size", image_size) or image_size)
    for m in model.modules():
        spatial = next((s for cls, s in ((nn.Conv1d, (4 * size,)), (nn.Conv2d, (size, size)),
                                          (nn.Conv3d, (8, size // 2, size // 2))) if isinstance(m, cls)), None)
        if spatial is not None:  # isinstance, so Conv2d subclasses (StdConv2d) count
            return torch.randn(batch, m.in_channels, *spatial, device=device, dtype=dtype)
        if isinstance(m, nn.Embedding):
            n = min(seq_len, int(getattr(model, "block_size", seq_len) or seq_len))
            return torch.randint(0, m.num_embeddings, (batch, n), device=device)
        if isinstance(m, nn.Linear):
            return torch.randn(batch, m.in_features, device=device, dtype=dtype)
    raise ValueError(f"cannot guess an example input for {type(model).__name__}; pass example_input=...")


# ---------------------------------------------------------------------------------------------------------------
# the graph
# ---------------------------------------------------------------------------------------------------------------
class ArchGraph:
    """The computation graph of one model: typed nodes, directed edges, and which parameters each node owns."""

    def __init__(self, nodes: List[Node], edges: List[Tuple[int, int]], coverage: Coverage,
                 model_name: str = ""):
        self.nodes = nodes
        self.edges = edges
        self._coverage = coverage
        self.model_name = model_name
        self._pyg: Dict[int, Any] = {}  # to_pyg results by max_virtual_dist (graphs are immutable once built)

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
                    if isinstance(example_input, dict):
                        out = model(**example_input)
                    elif isinstance(example_input, (tuple, list)):
                        out = model(*example_input)
                    else:
                        out = model(example_input)
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
        """Float features per node: shape information, relative depth, and sinusoidal codes of the longest-path
        depth from the input and to the output (so repeated blocks at different depths differ; docs/DESIGN.md)."""
        feats = torch.zeros(len(self.nodes), NUM_NODE_FEATURES)
        depth = [0] * len(self.nodes)
        for s, d in self.edges:  # node order is execution order, hence topological
            depth[d] = max(depth[d], depth[s] + 1)
        height = [0] * len(self.nodes)
        for s, d in reversed(self.edges):
            height[s] = max(height[s], height[d] + 1)
        max_depth = max(depth) or 1
        lg = lambda v: math.log2(1 + v)  # noqa: E731
        for n in self.nodes:
            f = feats[n.idx]
            w = next((r for r in n.params if r.kind == "matrix"), None)
            if w is not None:
                shp = _squeeze_shape(w.shape)
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

    def to_pyg(self, max_virtual_dist: int = 0):
        """Export to a ``torch_geometric.data.Data``.

        Fields: ``op`` (LongTensor[N], ids into ``ghn.ops.OP_TYPES``), ``x`` (float features [N, F]),
        ``edge_index`` (LongTensor[2, E], sparse, directed source -> target) and, when ``max_virtual_dist > 1``,
        ``ve_index``/``ve_dist``: undirected pairs at shortest-path distance 2..max_virtual_dist.
        """
        if max_virtual_dist in self._pyg:
            return self._pyg[max_virtual_dist]
        from torch_geometric.data import Data

        op = torch.tensor([O.op_id(n.op) for n in self.nodes], dtype=torch.long)
        ei = torch.tensor(self.edges, dtype=torch.long).t().reshape(2, -1)
        data = Data(op=op, x=self.node_features(), edge_index=ei, num_nodes=len(self.nodes))
        if max_virtual_dist > 1:
            data.ve_index, data.ve_dist = shortest_path_edges(ei, len(self.nodes), max_virtual_dist)
        self._pyg[max_virtual_dist] = data
        return data

    def to_networkx(self):
        """Export to a ``networkx.DiGraph`` (node attributes: op, name, params, out_shape) for analysis/plots."""
        import networkx as nx

        g = nx.DiGraph(model=self.model_name)
        for n in self.nodes:
            g.add_node(n.idx, op=n.op, name=n.name, params=[r.name for r in n.params], out_shape=n.out_shape)
        g.add_edges_from(self.edges)
        return g


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
