"""The op vocabulary: every node type an architecture graph can contain, in one place.

A graph node is either a *parameterised* op (conv, linear, norms, embeddings, class token, ...) that owns one
or more parameter tensors, or a *parameter-free* op that shapes the data flow (add, concat, pooling, attention
core, activations, ...). Functions that only move data around (view, permute, dropout, indexing, ...) are not
nodes: their outputs inherit the nodes that produced their inputs.

The tables below map the names of the torch functions seen while tracing a model to op types. They are plain
data so a newcomer can read and extend them; ``ghn.graph`` holds the mechanism.
"""
from __future__ import annotations

from typing import Dict, FrozenSet, Tuple

# ----------------------------------------------------------------------------------------------------------------
# Node types. The index of a name is its embedding id in the hypernetwork: APPEND ONLY (checkpoints depend on it).
# ----------------------------------------------------------------------------------------------------------------
OP_TYPES: Tuple[str, ...] = (
    "input", "output",
    # parameterised
    "conv", "conv_depthwise", "conv_grouped", "conv_transpose", "linear",
    "batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm",
    "embedding", "pos_embed", "class_token", "scale", "shift", "attn_in_proj",
    # parameter-free flow
    "add", "mul", "cat", "max_pool", "avg_pool", "global_pool",
    "attention", "softmax", "matmul",
    # activations
    "relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "leaky_relu", "elu", "activation",
    # appended later
    "recurrent",
)
OP_INDEX: Dict[str, int] = {name: i for i, name in enumerate(OP_TYPES)}

PARAM_OPS: FrozenSet[str] = frozenset({
    "conv", "conv_depthwise", "conv_grouped", "conv_transpose", "linear",
    "batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm",
    "embedding", "pos_embed", "class_token", "scale", "shift", "attn_in_proj", "recurrent",
})

NORM_OPS: FrozenSet[str] = frozenset({"batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm"})
CONV_OPS: FrozenSet[str] = frozenset({"conv", "conv_depthwise", "conv_grouped", "conv_transpose"})

# ----------------------------------------------------------------------------------------------------------------
# torch function name (normalised: dunder and trailing '_' stripped, see ``normalize_func_name``) -> op type.
# ----------------------------------------------------------------------------------------------------------------
CONV_FUNCS = {"conv1d": 1, "conv2d": 2, "conv3d": 3}
CONV_TRANSPOSE_FUNCS = {"conv_transpose1d": 1, "conv_transpose2d": 2, "conv_transpose3d": 3}
NORM_FUNCS = {
    "batch_norm": "batch_norm", "layer_norm": "layer_norm", "group_norm": "group_norm",
    "instance_norm": "instance_norm", "rms_norm": "rms_norm",
}
ACTIVATION_FUNCS = {
    "relu": "relu", "relu6": "relu", "threshold": "relu",
    "gelu": "gelu",
    "silu": "silu", "mish": "silu",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "hardswish": "hardswish",
    "hardsigmoid": "hardsigmoid",
    "leaky_relu": "leaky_relu", "prelu": "leaky_relu", "rrelu": "leaky_relu",
    "elu": "elu", "selu": "elu", "celu": "elu",
    "softplus": "activation", "softsign": "activation", "hardtanh": "activation", "logsigmoid": "activation",
    "glu": "activation",
}
POOL_FUNCS = {
    "max_pool1d": "max_pool", "max_pool2d": "max_pool", "max_pool3d": "max_pool",
    "max_pool1d_with_indices": "max_pool", "max_pool2d_with_indices": "max_pool",
    "max_pool3d_with_indices": "max_pool",
    "avg_pool1d": "avg_pool", "avg_pool2d": "avg_pool", "avg_pool3d": "avg_pool",
    "lp_pool1d": "avg_pool", "lp_pool2d": "avg_pool",
}
ADAPTIVE_POOL_FUNCS = {
    "adaptive_avg_pool1d": "avg_pool", "adaptive_avg_pool2d": "avg_pool", "adaptive_avg_pool3d": "avg_pool",
    "adaptive_max_pool1d": "max_pool", "adaptive_max_pool2d": "max_pool", "adaptive_max_pool3d": "max_pool",
    "adaptive_max_pool1d_with_indices": "max_pool", "adaptive_max_pool2d_with_indices": "max_pool",
}
ADD_FUNCS = frozenset({"add", "sub", "rsub", "addcmul"})
MUL_FUNCS = frozenset({"mul", "div", "truediv", "rmul", "rtruediv", "multiply"})
CAT_FUNCS = frozenset({"cat", "concat", "concatenate", "stack", "hstack", "vstack"})
MATMUL_FUNCS = frozenset({"matmul", "mm", "bmm", "einsum", "addmm", "baddbmm", "rmatmul", "grouped_mm"})
RECURRENT_FUNCS = frozenset({"lstm", "gru", "rnn_tanh", "rnn_relu"})  # nn.LSTM / GRU / RNN (flat weights)
SOFTMAX_FUNCS = frozenset({"softmax", "log_softmax"})
ATTENTION_FUNCS = frozenset({"scaled_dot_product_attention"})
LINEAR_FUNCS = frozenset({"linear", "bilinear"})
EMBEDDING_FUNCS = frozenset({"embedding", "embedding_bag"})
MEAN_FUNCS = frozenset({"mean", "sum", "amax", "max", "logsumexp"})

# Functions that are never nodes and never own parameters: their outputs inherit their inputs' producers.
# Anything not listed anywhere is treated the same way unless it consumes a parameter directly, which in strict
# mode is an error (see ``ghn.graph.UnsupportedOpError``).
PASSTHROUGH_PARAM_FUNCS = frozenset({
    "expand", "expand_as", "view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "squeeze",
    "unsqueeze", "contiguous", "clone", "to", "float", "half", "bfloat16", "type", "type_as", "getitem",
    "repeat", "tile", "narrow", "select", "detach", "chunk", "split", "unbind", "get", "T", "mT",
    "mH", "H", "data", "dropout", "broadcast_to", "movedim", "swapaxes",
    # value reparameterisations of a parameter (Swin-v2: ``logit_scale.clamp(max=log(100)).exp()``): the tensor
    # keeps its identity and the op that finally consumes it decides its node and kind
    "clamp", "clip", "clamp_min", "clamp_max", "exp",
})


# Functions that, applied to parameters alone (no data input), reparameterise them value by value or resample
# them; the op that later combines the result with data owns the parameters (with activations and softmax).
PARAM_REPARAM_FUNCS = frozenset({
    "neg", "exp", "log", "log1p", "expm1", "abs", "sqrt", "rsqrt", "pow", "square", "reciprocal", "sign",
    "interpolate", "upsample", "weight_norm", "norm_except_dim",
})

# Reading metadata of a tensor (``param.shape``, ``.size()``): not a use, not a node, ignored while tracing.
METADATA_FUNCS = frozenset({
    "shape", "size", "dim", "ndim", "ndimension", "numel", "nelement", "dtype", "device", "is_floating_point",
    "is_complex", "requires_grad", "is_contiguous", "stride", "element_size", "layout", "is_cuda", "is_meta",
    "len", "storage_offset", "data_ptr", "get_device", "is_leaf", "grad_fn", "names",
})


def normalize_func_name(func: object) -> str:
    """Canonical name of a torch function or tensor method (``__iadd__`` -> ``add``, ``relu_`` -> ``relu``)."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":  # property getters such as Tensor.T, Tensor.mT
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", "getattr")
    name = name.strip("_")
    if name.startswith("i") and name[1:] in ADD_FUNCS | MUL_FUNCS and name not in ("index",):
        name = name[1:]  # iadd, imul, isub, itruediv
    if name.startswith("r") and name[1:] in ("add", "mul", "sub", "truediv", "matmul"):
        name = name[1:] if name != "rsub" else "rsub"
    return name


def op_id(op: str) -> int:
    """Embedding id of an op type; raises ``KeyError`` with the vocabulary for an unknown one."""
    try:
        return OP_INDEX[op]
    except KeyError:
        raise KeyError(f"unknown op type {op!r}; known: {', '.join(OP_TYPES)}") from None
