"""Tracing: one forward pass of any ``nn.Module`` under a ``TorchFunctionMode``, recorded as typed nodes.

Every tensor is tagged with the graph nodes that produced it; a call whose function is in the op vocabulary
(``ghn.ops``) becomes a node with edges from the producers of its inputs, other calls pass the tags through.
Parameters are recognised by object identity when they reach a function, so tied weights are found for free.
Each family of torch functions has one handler (``_Builder._on_*``), chosen by the ``_HANDLERS`` table.
:class:`ghn.graph.ArchGraph` is the public result.
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

# What the decoder emits for a parameter: a matrix (ndim >= 2 after leading singleton dims are dropped) or one of
# the vector kinds. The graph builder assigns kinds; the decoder reads them. Defined once, here.
VECTOR_KINDS: Tuple[str, ...] = ("bias", "gain", "shift", "token")
PARAM_KINDS: Tuple[str, ...] = ("matrix",) + VECTOR_KINDS


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


def squeeze_shape(shape: Sequence[int]) -> Tuple[int, ...]:
    """``shape`` without its leading singleton dimensions (at least one dimension kept, ``()`` stays ``()``)."""
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
            kind, f_in = self._kind(op, squeeze_shape(self._param_shape(pid)), pid, transposed, n_vec)
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
        if name == "hardtanh" and _arg(args, kwargs, 1, "min_val", -1.0) == 0:
            name = "relu6"  # nn.ReLU6 calls F.hardtanh(x, 0, 6)
        call = _Call(name, args, kwargs, out, sources, params, tensors[0])
        getattr(self, _HANDLERS.get(name, "_on_other"))(call)

    # -- one handler per family of torch functions (dispatch table ``_HANDLERS`` below the class) ----------------
    def _on_conv(self, c: "_Call") -> None:
        w = _arg(c.args, c.kwargs, 1, "weight")
        groups = int(_arg(c.args, c.kwargs, 6, "groups", 1) or 1)  # position 6 in F.conv*d and F.conv_transpose*d
        stride = _arg(c.args, c.kwargs, 3, "stride", 1)
        stride = int(stride[0] if isinstance(stride, (tuple, list)) else stride)
        in_ch = int(c.x.shape[1]) if c.x.dim() > 1 else 1
        if c.name in O.CONV_TRANSPOSE_FUNCS:
            op = "conv_transpose"
        else:
            op = "conv" if groups == 1 else ("conv_depthwise" if groups == in_ch else "conv_grouped")
        dims = O.CONV_FUNCS.get(c.name) or O.CONV_TRANSPOSE_FUNCS[c.name]
        attrs = {"stride": stride, "groups": groups, "dims": dims,
                 "kernel": tuple(int(k) for k in w.shape[2:]) if isinstance(w, torch.Tensor) else ()}
        if c.params:
            self.add_node(op, c.sources, c.out, c.plist, attrs)
            return
        # a computed weight (CondConv: routing @ expert bank): data flow only, but the parameters it was computed
        # from take this conv's fan-in, not the number of experts
        if isinstance(w, torch.Tensor) and w.dim() > 1:
            self._set_fan_in(w, int(w.shape[0] if op == "conv_transpose" else math.prod(w.shape[1:])))
        self._tag(c.out, c.sources)

    def _on_linear_like(self, c: "_Call") -> None:  # linear, bilinear, embedding, norms
        if not c.params and c.name not in O.NORM_FUNCS:
            if len(c.sources) > 1:
                self.add_node("matmul", c.sources, c.out)
            else:
                self._tag(c.out, c.sources)
            return
        op = "linear" if c.name in O.LINEAR_FUNCS else (
            "embedding" if c.name in O.EMBEDDING_FUNCS else O.NORM_FUNCS[c.name])
        w = _arg(c.args, c.kwargs, 1, "weight")
        f_in = int(w.shape[-1]) if c.name == "linear" and isinstance(w, torch.Tensor) and w.dim() == 2 \
            else None  # the consumed (out, in) matrix decides, also when it is a slice of a 3-D table
        self.add_node(op, c.sources, c.out, c.plist, fan_in=f_in)

    def _on_matmul(self, c: "_Call") -> None:
        if not c.params:
            if len(c.sources) > 1:
                self.add_node("matmul", c.sources, c.out)
            else:
                self._tag(c.out, c.sources)
            return
        # x @ W or addmm(b, x, W): the weight is stored (in, out) (HF-style Conv1D, MoE expert tables); W @ x:
        # (out, in). The fan-in is the contracted dimension of the consumed operand.
        operands = [t for t in c.args if isinstance(t, torch.Tensor)]
        w_ops = [k for k, t in enumerate(operands) if self._info(t)[1] and t.dim() >= 2]
        w_first = bool(w_ops) and w_ops[0] == 0 and len(operands) > 1
        f_in = None
        if w_ops and c.name != "einsum":
            t = operands[w_ops[0]]
            f_in = int(t.shape[-1] if w_first else t.shape[-2])
        self.add_node("linear", c.sources, c.out, c.plist, transposed=not w_first, fan_in=f_in)

    def _on_attention(self, c: "_Call") -> None:
        sources = c.sources
        if c.params:  # a learned query / key (attention pooling): its own token node feeding the attention
            sources = sources + (self.add_node("class_token", (), None, c.plist),)
        self.add_node("attention", sources, c.out)

    def _on_recurrent(self, c: "_Call") -> None:
        self.add_node("recurrent", c.sources, c.out, c.plist)

    def _on_binary(self, c: "_Call") -> None:  # add / mul / cat families
        if c.params:
            if c.name in O.CAT_FUNCS:
                op = "class_token"
            elif c.name in O.MUL_FUNCS:
                op = "scale"
            else:
                shapes = [squeeze_shape(self._params_by_id[p].shape) for p in c.params]
                op = "pos_embed" if any(len(s) >= 2 for s in shapes) else "shift"
            self.add_node(op, c.sources, c.out, c.plist)
        elif len(c.sources) > 1:
            op = "cat" if c.name in O.CAT_FUNCS else ("mul" if c.name in O.MUL_FUNCS else "add")
            self.add_node(op, c.sources, c.out)
        else:
            self._tag(c.out, c.sources)

    def _on_other(self, c: "_Call") -> None:
        name, sources, params, out = c.name, c.sources, c.params, c.out
        if params and not sources and (name in O.PARAM_REPARAM_FUNCS or name in O.ACTIVATION_FUNCS
                                       or name in O.SOFTMAX_FUNCS):
            # an elementwise function or a resampling of parameters alone (-exp(A_log) in Mamba, sigmoid gates,
            # interpolated position tables, weight_norm): a reparameterisation; the op that meets data owns them
            if name == "weight_norm":
                self.gains.add(id(_arg(c.args, c.kwargs, 1, "g")))
            self._tag(out, sources, params)
        elif params and name not in O.PASSTHROUGH_PARAM_FUNCS:
            # a parameter consumed with data by a function we do not understand: never guess
            for p in params:
                self.unsupported.setdefault(p, name)
            self._tag(out, sources)
        elif not sources:
            self._tag(out, sources, params)
        elif name in O.ACTIVATION_FUNCS:
            self.add_node(O.ACTIVATION_FUNCS[name], sources, out)
        elif name in O.SOFTMAX_FUNCS:
            self.add_node("softmax", sources, out)
        elif name in O.POOL_FUNCS:
            k = _arg(c.args, c.kwargs, 1, "kernel_size", 1)
            self.add_node(O.POOL_FUNCS[name], sources, out, attrs={"kernel": (int(k[0] if isinstance(k, (tuple, list))
                                                                                else k),)})
        elif name in O.ADAPTIVE_POOL_FUNCS:
            size = _arg(c.args, c.kwargs, 1, "output_size", 1)
            glob = all(s == 1 for s in (size if isinstance(size, (tuple, list)) else (size,)))
            self.add_node("global_pool" if glob else O.ADAPTIVE_POOL_FUNCS[name], sources, out)
        elif name in O.MEAN_FUNCS and self._is_global_reduce(c.x, c.args, c.kwargs):
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


class _Call:
    """One intercepted torch call, as the handlers see it."""

    __slots__ = ("name", "args", "kwargs", "out", "sources", "params", "x", "plist")

    def __init__(self, name, args, kwargs, out, sources, params, x):
        self.name, self.args, self.kwargs, self.out = name, args, kwargs, out
        self.sources, self.params, self.x = sources, params, x
        self.plist = [(p, "") for p in params]


# torch function name -> handler method of _Builder; anything else goes to ``_on_other``
_HANDLERS: Dict[str, str] = {
    **{n: "_on_conv" for n in (*O.CONV_FUNCS, *O.CONV_TRANSPOSE_FUNCS)},
    **{n: "_on_linear_like" for n in (*O.LINEAR_FUNCS, *O.EMBEDDING_FUNCS, *O.NORM_FUNCS)},
    **{n: "_on_matmul" for n in O.MATMUL_FUNCS},
    **{n: "_on_attention" for n in O.ATTENTION_FUNCS},
    **{n: "_on_recurrent" for n in O.RECURRENT_FUNCS},
    **{n: "_on_binary" for n in (*O.ADD_FUNCS, *O.MUL_FUNCS, *O.CAT_FUNCS)},
}


def call_model(model: nn.Module, example_input: Any) -> Any:
    """``model`` applied to an example input: a tensor, a tuple/list of arguments, or a dict of keyword arguments."""
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


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
    norm = next((m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
                                                               nn.modules.batchnorm._NormBase))), None)
    if norm is not None:  # a normalisation alone (a module the model's forward never reached, traced by itself)
        if isinstance(norm, (nn.LayerNorm, nn.RMSNorm)):
            return torch.randn(batch, *norm.normalized_shape, device=device, dtype=dtype)
        c = norm.num_channels if isinstance(norm, nn.GroupNorm) else norm.num_features
        dims = 1 if isinstance(norm, (nn.BatchNorm1d, nn.InstanceNorm1d)) else 3 if isinstance(
            norm, (nn.BatchNorm3d, nn.InstanceNorm3d)) else 2
        return torch.randn(batch, c, *([4] * dims), device=device, dtype=dtype)
    raise ValueError(f"cannot guess an example input for {type(model).__name__}; pass example_input=...")
