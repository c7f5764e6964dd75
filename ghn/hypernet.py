"""The graph hypernetwork: encoder + low-rank decoder, checkpoints, and the one-line ``initialize`` API.

    >>> import ghn
    >>> report = ghn.initialize(model)                 # shipped hypernetwork, weights copied into model
    >>> print(report)                                  # which tensors were predicted, which left untouched

Training uses the functional path instead: ``params = hypernet.predict_params(model)`` is differentiable w.r.t.
the hypernetwork and plugs into ``torch.func.functional_call(model, params, x)``.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from ghn.decoder import LowRankDecoder
from ghn.encoder import GraphEncoder
from ghn.graph import ArchGraph, default_example_input
from ghn.ops import OP_TYPES
from ghn.task import Task

FORMAT_VERSION = 1
PathLike = Union[str, Path]
DEFAULT_CHECKPOINT = Path(__file__).parent / "pretrained" / "ghn-fmnist.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match this version of ``ghn``."""


class NonFiniteError(RuntimeError):
    """The hypernetwork predicted NaN or infinite values: refused, never written into a model."""


@dataclass
class GHNConfig:
    """Hyperparameters of a :class:`GraphHyperNetwork` (stored in every checkpoint)."""

    hidden: int = 64
    layers: int = 4
    rank: int = 32
    code_dim: int = 64
    kernel_code_dim: int = 16
    max_virtual_dist: int = 5
    conv: str = "gated"
    code_seed: int = 0
    pos_features: bool = True     # sinusoidal depth-from-input / depth-to-output node features
    # Fresh-run defaults: the shipped design, chosen by the proxy protocol (benchmarks/proxy.py, docs/BENCHMARKS.md).
    base: bool = True             # deterministic full-rank base under every predicted matrix
    orth: bool = True             # flat spectrum of the predicted low-rank part
    max_pred_share: float = 0.9   # largest energy fraction of a matrix the predicted part may take
    bounded_vectors: bool = True  # biases/shifts in +-0.1, gains in 1 +- 0.25, tokens in +-1 (tanh-bounded)
    base_kind: str = "identity"   # "gaussian": seeded by parameter name; "identity": channel-preserving, the same
                                  # for every architecture (consistent channel meaning); "mixed": half of each;
                                  # "shifted": identity whose channel copies differ in sign and kernel tap
    noise_share: float = 0.5      # energy fraction of a fixed name-seeded Gaussian added to every matrix after the
                                  # gate: a full-rank floor that breaks the symmetry of duplicated channels
    default_scale_under_norm: bool = True  # a matrix whose output only feeds normalisations gets PyTorch's default-
                                  # init RMS: its scale is divided out of the function (so the loss cannot teach
                                  # it) and sets only the effective fine-tuning learning rate
    equal_rows: str = "none"      # "norm_fed": every filter of a matrix that only feeds normalisations at the
                                  # matrix's RMS (a per-channel scale BN divides out; it sets each channel's
                                  # fine-tuning rate); "all": every matrix's
    max_dir_ratio: float = 0.0    # > 0: cap the mixing angle so each predicted direction carries at most this times
                                  # the energy of each other direction of the matrix (the rank-r part otherwise
                                  # dominates wide layers m/r-fold); 0: no cap
    free_rows: float = 0.0        # > 0: this fraction of the output rows (the last ones) of every matrix that only
                                  # feeds normalisations is the fixed name-seeded Gaussian alone: default-like
                                  # channels beside the coordinated ones
    norm_fed_scale: float = 1.0   # with default_scale_under_norm: those matrices at this times PyTorch's default RMS
                                  # (the same function; 1/scale^2 the effective fine-tuning learning rate)
    max_dir_ratio_loose: float = 0.0  # > 0: the direction cap of models whose convolutions feed BatchNorm or no norm
                                  # (BN and norm-free CNNs, transformers); max_dir_ratio stays the cap of CNNs
                                  # normalised by LayerNorm/GroupNorm/InstanceNorm/RMSNorm, whose fine-tuning a
                                  # looser cap harms; 0: max_dir_ratio for every model
    max_dir_ratio_attn: float = 0.0  # > 0: the direction cap of models with attention (transformers), in place of
                                  # the one above (a CNN's cap may be loosened without a transformer's); 0: they
                                  # follow the rule above
    post_norm_branch_scale: float = 1.0  # the output projections of post-norm residual branches (x -> norm(x + f(x)),
                                  # ArchGraph.post_norm_branches) times this, weight and bias: near-identity blocks,
                                  # as a transformer's own small init, so a deep post-norm stack stays trainable

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GHNConfig":
        """Config from a dict; keys missing from it take their LEGACY values (checkpoints made before they existed)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"unknown hypernetwork config keys {sorted(unknown)} (newer ghn version?)")
        return cls(**{**LEGACY_CONFIG, **d})


def add_config_arguments(parser) -> None:
    """One ``--flag`` per :class:`GHNConfig` field (default None: not overridden), for the CLIs."""
    import argparse

    for f in fields(GHNConfig):
        flag, doc = "--" + f.name.replace("_", "-"), f"hypernetwork: {f.name} (default {f.default}; fresh runs only)"
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=doc)
        else:
            parser.add_argument(flag, type=type(f.default), default=None, help=doc)


def pop_config_overrides(args: Dict[str, Any]) -> Dict[str, Any]:
    """Remove the :func:`add_config_arguments` entries from parsed ``args``; return the ones that were given."""
    vals = {f.name: args.pop(f.name, None) for f in fields(GHNConfig)}
    return {k: v for k, v in vals.items() if v is not None}


# What the fields added after format version 1 mean when a stored config lacks them: the original design.
LEGACY_CONFIG: Dict[str, Any] = {"pos_features": False, "base": False, "orth": False, "max_pred_share": 1.0,
                                 "bounded_vectors": False, "base_kind": "gaussian", "noise_share": 0.0,
                                 "default_scale_under_norm": False, "equal_rows": "none",
                                 "max_dir_ratio": 0.0, "free_rows": 0.0, "norm_fed_scale": 1.0,
                                 "max_dir_ratio_loose": 0.0, "post_norm_branch_scale": 1.0,
                                 "max_dir_ratio_attn": 0.0}


@dataclass
class InitReport:
    """What :func:`initialize` did to one model."""

    model: str
    predicted: List[str] = field(default_factory=list)
    tied: Dict[str, str] = field(default_factory=dict)
    untouched: Dict[str, str] = field(default_factory=dict)
    num_predicted_values: int = 0
    frozen: List[str] = field(default_factory=list)  # requires_grad=False: left as they are, by design
    alone: List[str] = field(default_factory=list)  # unused in the traced forward: predicted from their module alone
    norm_stats: str = ""  # how BatchNorm running statistics were set ("" when the model has none)

    @property
    def fraction(self) -> float:
        n = len(self.predicted) + len(self.untouched)
        return len(self.predicted) / n if n else 1.0

    def __str__(self) -> str:
        s = (f"{self.model}: predicted {len(self.predicted)} parameter tensors "
             f"({self.num_predicted_values:,} values)")
        if self.tied:
            s += f", {len(self.tied)} tied"
        if self.frozen:
            s += f", {len(self.frozen)} frozen left as they are"
        if self.alone:
            s += f", {len(self.alone)} unused in the traced forward and predicted from their module alone"
        if self.norm_stats:
            s += f"; BatchNorm statistics {self.norm_stats}"
        if self.untouched:
            s += f"; left untouched {len(self.untouched)}: " + ", ".join(
                f"{k} ({v})" for k, v in list(self.untouched.items())[:8])
        return s


class GraphHyperNetwork(nn.Module):
    """Predicts every parameter of any model from its computation graph in one forward pass."""

    def __init__(self, config: Optional[GHNConfig] = None, **overrides: Any):
        super().__init__()
        cfg = asdict(config or GHNConfig())
        unknown = set(overrides) - set(cfg)
        if unknown:
            raise ValueError(f"unknown hypernetwork config keys {sorted(unknown)}")
        cfg.update(overrides)
        self.config = GHNConfig(**cfg)
        if not self.config.post_norm_branch_scale > 0:
            raise ValueError(f"post_norm_branch_scale must be > 0, got {self.config.post_norm_branch_scale}")
        self.extra: Dict[str, Any] = {}  # checkpoint metadata: task, trained ops, training config, evaluations
        c = self.config
        self.encoder = GraphEncoder(c.hidden, c.layers, c.max_virtual_dist, c.conv, c.pos_features)
        self.decoder = LowRankDecoder(c.hidden, c.rank, c.code_dim, c.kernel_code_dim, c.code_seed, c.base, c.orth,
                                      c.max_pred_share, c.bounded_vectors, c.base_kind,
                                      c.noise_share, c.default_scale_under_norm, c.equal_rows,
                                      c.max_dir_ratio, c.free_rows, c.norm_fed_scale, c.max_dir_ratio_loose,
                                      c.max_dir_ratio_attn)

    @property
    def task(self) -> Task:
        """The task this hypernetwork was trained on (from its checkpoint; the default task when untrained)."""
        return Task.from_dict(self.extra)

    @property
    def trained_ops(self) -> Optional[FrozenSet[str]]:
        """Op types of the parameters this hypernetwork was trained on, from its checkpoint (``None``: not
        recorded, every op trusted). Matrices of other op types get the neutral scale (see the decoder)."""
        ops = self.extra.get("trained_ops")
        return None if ops is None else frozenset(ops)

    def record_trained_ops(self, graphs: Sequence[ArchGraph]) -> None:
        """Add the op types owning parameters in ``graphs`` to :attr:`trained_ops` (the trainer, before a step)."""
        ops = {ref.op for g in graphs for _, ref in g.param_refs()}
        have = set(self.extra.get("trained_ops") or ())
        if not ops <= have:
            self.extra = {**self.extra, "trained_ops": sorted(have | ops)}

    @property
    def device(self) -> torch.device:
        return self.decoder.freq.device

    def num_params(self) -> int:
        """Number of trainable hypernetwork parameters."""
        return sum(p.numel() for p in self.parameters())

    def with_config(self, **overrides: Any) -> "GraphHyperNetwork":
        """A copy with config ``overrides`` that keep every tensor (e.g. ``base_kind``, ``max_pred_share``); raises
        ``ValueError`` (one line) for overrides that would change them (``hidden``, ...).

        A larger ``rank`` grows the decoder (:meth:`LowRankDecoder.grown_state`): the trained components stay, the
        new ones start from a seeded fresh init at the trained heads' scale, so a trained file can start a run at
        a higher rank (``train.py --init-from X --rank R``). With ``orth`` the new directions take their share of
        the predicted part at once, so the predictions change; training teaches them."""
        cfg = GHNConfig(**{**asdict(self.config), **overrides})
        state = self.state_dict()
        if cfg.rank != self.config.rank:
            if cfg.rank < self.config.rank:
                raise ValueError(f"rank can only grow ({self.config.rank} -> {cfg.rank} would drop trained "
                                 "components)")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.code_seed * 1_000_003 + cfg.rank)
                new = GraphHyperNetwork(cfg)
            state = {**state, **new.decoder.grown_state(
                {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")},
                self.config.rank, prefix="decoder.")}
        else:
            new = GraphHyperNetwork(cfg)
        try:
            new.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise ValueError(f"the overrides {sorted(overrides)} change the hypernetwork's tensors ({first}); only "
                             "settings that keep them can change") from None
        new.extra = self.extra
        return new.to(self.device)

    # -- prediction ------------------------------------------------------------------------------------------
    def featurizer(self) -> Callable[[ArchGraph], Any]:
        """``graph -> torch_geometric Data`` as this hypernetwork reads it (its virtual-edge distance); picklable,
        so worker processes can prepare graphs ahead of a training step."""
        from ghn.features import graph_data

        return functools.partial(graph_data, max_virtual_dist=self.config.max_virtual_dist)

    def to_pyg_batch(self, graphs: Sequence[ArchGraph], datas: Optional[Sequence[Any]] = None):
        """PyG ``Batch`` of ``graphs`` (or of their already prepared ``datas``, see :meth:`featurizer`)."""
        from torch_geometric.data import Batch

        if datas is None:
            featurize = self.featurizer()
            datas = [featurize(g) for g in graphs]
        return Batch.from_data_list(list(datas)).to(self.device)

    def forward(self, graphs: Sequence[ArchGraph], batch=None,
                caps: Optional[Sequence[float]] = None) -> List[Dict[str, Tensor]]:
        """Predict parameters for a batch of graphs: one ``{name: tensor}`` dict per graph.

        Differentiable w.r.t. the hypernetwork. Each dict holds every covered parameter under its canonical name
        and under every tied alias (the same tensor object). ``batch`` may pass a precomputed ``to_pyg_batch``;
        ``caps`` the direction cap of each graph (default :meth:`dir_cap`: a part of a model takes the model's).
        """
        if batch is None:
            batch = self.to_pyg_batch(graphs)
        return self.decode(graphs, batch, self.encoder(batch), caps)

    def decode(self, graphs: Sequence[ArchGraph], batch, h: Tensor,
               caps: Optional[Sequence[float]] = None) -> List[Dict[str, Tensor]]:
        """The decoder half of :meth:`forward`: node embeddings ``h`` of ``batch`` -> one params dict per graph."""
        offsets = batch.ptr[:-1].tolist()
        node_idx, refs, owner, fed, ref_caps, branch = [], [], [], [], [], []
        scale = self.config.post_norm_branch_scale
        for gi, (g, off) in enumerate(zip(graphs, offsets)):
            norm_fed, cap = self.norm_fed_nodes(g), self.dir_cap(g) if caps is None else caps[gi]
            branches = g.post_norm_branches() if scale != 1.0 else frozenset()
            for ni, ref in g.param_refs():
                node_idx.append(off + ni)
                refs.append(ref)
                owner.append(gi)
                fed.append(ni in norm_fed)
                ref_caps.append(cap)
                branch.append(ni in branches)
        tensors = self.decoder(h[torch.tensor(node_idx, dtype=torch.long, device=h.device)], refs, self.trained_ops,
                               fed, ref_caps)
        out: List[Dict[str, Tensor]] = [{} for _ in graphs]
        for gi, ref, t, b in zip(owner, refs, tensors, branch):
            t = t * scale if b else t
            out[gi][ref.name] = t
            for alias in ref.aliases:
                out[gi][alias] = t
        return out

    def norm_fed_nodes(self, graph: ArchGraph):
        """Nodes of ``graph`` whose output feeds normalisations only, where the decoder uses them
        (``default_scale_under_norm``, ``equal_rows="norm_fed"``); else empty (it is a walk over the edges)."""
        c = self.config
        want = c.default_scale_under_norm or c.equal_rows == "norm_fed" or c.free_rows > 0
        return graph.norm_fed() if want else frozenset()

    def dir_cap(self, graph: ArchGraph) -> float:
        """The direction cap of ``graph``'s matrices: ``max_dir_ratio_attn`` if set and the model has attention
        (:meth:`ArchGraph.has_attention`); else ``max_dir_ratio_loose`` if set and no convolution of it feeds a
        LayerNorm/GroupNorm/InstanceNorm/RMSNorm; else ``max_dir_ratio`` (0: no cap)."""
        c = self.config
        if c.max_dir_ratio_attn > 0 and graph.has_attention():
            return c.max_dir_ratio_attn
        if c.max_dir_ratio_loose > 0 and not (graph.conv_fed_norms() - {"batch_norm"}):
            return c.max_dir_ratio_loose
        return c.max_dir_ratio

    def predict_params(self, model: nn.Module, example_input: Any = None, graph: Optional[ArchGraph] = None,
                       strict: bool = True) -> Dict[str, Tensor]:
        """Functional path: ``{param name: predicted tensor}`` for ``torch.func.functional_call``."""
        graph = graph or ArchGraph.from_module(model, example_input, strict=strict)
        return self._predict_model(model, graph)

    def _predict_model(self, model: nn.Module, graph: ArchGraph) -> Dict[str, Tensor]:
        """``{name: tensor}`` for ``graph``, plus the leaf modules its forward never used, each predicted from its
        own graph under the model's direction cap (:func:`unused_leaf_graphs`; in a batch of their own, so the
        model's own predictions do not depend on them)."""
        preds = dict(self([graph])[0])
        leaves = unused_leaf_graphs(model, graph)
        caps = [self.dir_cap(graph)] * len(leaves)
        for (prefix, _), out in zip(leaves, self([g for _, g in leaves], caps=caps) if leaves else []):
            preds.update({f"{prefix}.{k}": t for k, t in out.items()})
        return preds

    @torch.no_grad()
    def initialize(self, model: nn.Module, example_input: Any = None, graph: Optional[ArchGraph] = None,
                   strict: bool = True, norm_stats: bool = True) -> InitReport:
        """Copy predicted tensors into ``model``'s own parameters (in place, no attribute surgery).

        With ``norm_stats``, BatchNorm running statistics are then re-estimated on the example input (one forward
        in train mode, no gradient): the statistics of the replaced weights, or the fresh mean 0 / variance 1,
        would make eval-mode outputs explode through depth (1e11 against 2 on a ResNet-50). Statistics of real data
        are better still: :func:`ghn.evaluation.calibrate_norm_stats`.
        A model built on the ``meta`` device is materialised instead, one tensor group at a time on this
        hypernetwork's device (:func:`ghn.streaming.materialize`: peak memory is the model plus one group).
        """
        from ghn.streaming import is_meta, materialize

        if is_meta(model):
            return materialize(self, model, example_input, device=self.device, strict=strict)
        graph = graph or ArchGraph.from_module(model, example_input, strict=strict)
        was_training = self.training
        self.eval()
        try:
            preds = self._predict_model(model, graph)
        finally:
            self.train(was_training)
        report = write_params(model, preds, graph)
        if norm_stats:
            from ghn.evaluation import reestimate_norm_stats

            report.norm_stats = reestimate_norm_stats(model, example_input)
        return report

    # -- checkpoints -----------------------------------------------------------------------------------------
    def save(self, path: PathLike, extra: Optional[Dict[str, Any]] = None) -> None:
        """Save weights (safetensors) with the JSON config, format version, op vocabulary, ``extra`` (default: the
        metadata it was loaded with, e.g. its task) and a SHA-256 of the tensor data in its metadata; written to a
        temporary file and renamed, so a crash never leaves half a file."""
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        meta = {"format": "ghn", "format_version": str(FORMAT_VERSION), "config": json.dumps(asdict(self.config)),
                "op_types": json.dumps(list(OP_TYPES)),
                "extra": json.dumps(self.extra if extra is None else extra),
                "sha256": tensors_digest(state)}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(state, str(tmp), meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: PathLike, map_location: Union[str, torch.device] = "cpu") -> "GraphHyperNetwork":
        """Load a checkpoint written by :meth:`save`; raises :class:`CheckpointError` (one line) with the reason.

        Metadata is validated before anything is allocated: the config builds the model on the ``meta`` device
        and every stored tensor shape is checked against it; then the data hash (when stored) is verified.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
                if meta.get("format") != "ghn":
                    raise CheckpointError(f"{path}: not a ghn checkpoint (no 'format: ghn' metadata)")
                config, n_ops = _checked_meta(path, meta)
                with torch.device("meta"):
                    skeleton = cls(config)
                _check_shapes(path, skeleton, shapes, n_ops)
                state = {k: f.get_tensor(k) for k in f.keys()}
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises several types for truncated/garbage files
            raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({type(e).__name__}: {e})") from e
        digest = meta.get("sha256")
        if digest is not None and digest != tensors_digest(state):
            raise CheckpointError(f"{path}: tensor data does not match its stored SHA-256 (corrupt file)")
        model = cls(config)
        if n_ops < len(OP_TYPES):  # vocabulary grew (append-only): keep fresh rows for the new ops
            fresh = model.encoder.op_embed.weight.detach().clone()
            fresh[:n_ops] = state["encoder.op_embed.weight"]
            state["encoder.op_embed.weight"] = fresh
        model.load_state_dict(state)
        model.extra = json.loads(meta.get("extra", "{}"))
        return model.to(map_location)


def checkpoint_fingerprint(path: PathLike) -> str:
    """SHA-256 of what a checkpoint's predictions depend on: tensor data, config, op vocabulary and the op types it
    was trained on (they pick the scale of untrained ops). Unlike the file's bytes, it ignores the rest of the
    ``extra`` metadata, so adding evaluation figures to a shipped file keeps it."""
    import hashlib

    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        digest = meta.get("sha256") or tensors_digest({k: f.get_tensor(k) for k in f.keys()})
    trained = json.loads(meta.get("extra", "{}")).get("trained_ops")
    key = "|".join([digest, meta.get("config", ""), meta.get("op_types", ""), meta.get("format_version", ""),
                    json.dumps(sorted(trained) if trained is not None else None)])
    return hashlib.sha256(key.encode()).hexdigest()


def tensors_digest(state: Dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``state`` (sorted by name)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _checked_meta(path: Path, meta: Dict[str, str]):
    """``(GHNConfig, number of op types)`` from checkpoint metadata, or a :class:`CheckpointError`."""
    try:
        version = int(meta.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {version}, this ghn reads {FORMAT_VERSION}")
        ops = json.loads(meta.get("op_types", "[]"))
        if not isinstance(ops, list) or list(OP_TYPES[:len(ops)]) != ops:
            raise CheckpointError(f"{path}: op vocabulary of the checkpoint differs from ghn.ops.OP_TYPES")
        raw = json.loads(meta["config"])
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: config metadata is not a JSON object")
        config = GHNConfig.from_dict(raw)
        for f in fields(GHNConfig):
            v = getattr(config, f.name)
            if type(v) is not type(f.default) and not (isinstance(f.default, float) and isinstance(v, int)):
                raise CheckpointError(f"{path}: config {f.name}={v!r} is not a {type(f.default).__name__}")
        json.loads(meta.get("extra", "{}"))
    except CheckpointError:
        raise
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: bad metadata ({type(e).__name__}: {e})") from e
    return config, len(ops)


def _check_shapes(path: Path, skeleton: nn.Module, shapes: Dict[str, tuple], n_ops: int) -> None:
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if "encoder.op_embed.weight" in expected:
        expected["encoder.op_embed.weight"] = (n_ops,) + expected["encoder.op_embed.weight"][1:]
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [f"{k}: {shapes[k]} vs {v}" for k, v in expected.items() if k in shapes and shapes[k] != v]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path}: tensors do not match the config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")


@torch.no_grad()
def write_params(model: nn.Module, preds: Dict[str, Tensor], graph: ArchGraph) -> InitReport:
    """Copy ``preds`` into the model's parameters by name and report what was predicted / left untouched."""
    report = InitReport(type(model).__name__)
    bad = [k for k, t in preds.items() if not bool(torch.isfinite(t).all())]
    if bad:  # checked before the first write: the model is left exactly as it was
        raise NonFiniteError(f"{type(model).__name__}: the hypernetwork predicted non-finite values for "
                             f"{len(bad)} tensors ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
                             "nothing was written")
    named = dict(model.named_parameters(remove_duplicate=False))
    done = set()
    for name, p in named.items():
        t = preds.get(name)
        if t is None:
            continue
        if t.shape != p.shape:
            raise RuntimeError(f"{name}: predicted shape {tuple(t.shape)} != parameter shape {tuple(p.shape)}")
        if id(p) in done:
            continue
        p.copy_(t.to(device=p.device, dtype=p.dtype))
        done.add(id(p))
        report.predicted.append(name)
        report.num_predicted_values += p.numel()
    cov = graph.coverage()
    report.tied = {k: v for k, v in cov.tied.items() if ":" not in k}
    for name in cov.unused:
        if name in preds:
            report.alone.append(name)
        else:
            report.untouched[name] = "not used in the traced forward pass"
    for name, fn in cov.unsupported.items():
        report.untouched[name] = f"consumed by unsupported op {fn}()"
    report.frozen = list(cov.frozen)
    return report


def unused_leaf_graphs(model: nn.Module, graph: ArchGraph) -> List[Tuple[str, ArchGraph]]:
    """``(module name, graph)`` of every leaf module whose parameters ``graph``'s forward never used (a training-only
    embedding, a branch the example input did not take), traced alone on a guessed input. A module that cannot be
    traced alone (no input to guess, an op outside the vocabulary) or holds frozen parameters is left out: its
    parameters stay untouched and reported."""
    unused = set(graph.coverage().unused)
    if not unused:
        return []
    out = []
    for name, m in model.named_modules():
        own = [(f"{name}.{k}" if name else k, p) for k, p in m.named_parameters(recurse=False)]
        if not name or not own or next(m.children(), None) is not None:
            continue
        if not all(k in unused and p.requires_grad for k, p in own):
            continue
        try:
            g = ArchGraph.from_module(m, default_example_input(m), strict=True)
        except Exception:  # noqa: BLE001  (any failure: the module stays untouched and reported)
            continue
        if len(g.param_refs()) and not g.coverage().unused:
            out.append((name, g))
    return out


_DEFAULT: Dict[str, GraphHyperNetwork] = {}


def load_pretrained(path: Optional[PathLike] = None, device: Union[str, torch.device] = "cpu") -> GraphHyperNetwork:
    """Load a hypernetwork checkpoint; without ``path``, the one shipped with the package (cached)."""
    if path is not None:
        return GraphHyperNetwork.load(path, device)
    key = str(device)
    if key not in _DEFAULT:
        if not DEFAULT_CHECKPOINT.is_file():
            raise CheckpointError(f"the shipped checkpoint {DEFAULT_CHECKPOINT} is missing from this install")
        _DEFAULT[key] = GraphHyperNetwork.load(DEFAULT_CHECKPOINT, device)
    return _DEFAULT[key]


def initialize(model: nn.Module, example_input: Any = None, ghn: Union[None, PathLike, GraphHyperNetwork] = None,
               strict: bool = True, norm_stats: bool = True) -> InitReport:
    """Predict all parameters of ``model`` and write them into it. Returns an :class:`InitReport`.

    ``ghn`` is a hypernetwork, a checkpoint path, or ``None`` for the shipped pretrained one. BatchNorm running
    statistics are buffers, not predicted: with ``norm_stats`` they are re-estimated on the example input (see
    :meth:`GraphHyperNetwork.initialize`); statistics of real data are better, from
    :func:`ghn.evaluation.calibrate_norm_stats`.
    """
    if not isinstance(ghn, GraphHyperNetwork):
        p = next(model.parameters(), None)
        dev = p.device if p is not None and p.device.type != "meta" else "cpu"
        ghn = load_pretrained(ghn, dev)
    return ghn.initialize(model, example_input, strict=strict, norm_stats=norm_stats)


def count_values(params: Dict[str, Tensor]) -> int:
    """Number of distinct predicted values in a params dict (tied tensors counted once)."""
    return sum(t.numel() for t in {id(t): t for t in params.values()}.values())


__all__ = ["GraphHyperNetwork", "GHNConfig", "InitReport", "CheckpointError", "NonFiniteError", "initialize",
           "load_pretrained", "write_params", "count_values", "DEFAULT_CHECKPOINT"]
