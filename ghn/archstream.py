"""The architecture stream of training: which architectures each step trains on, built ahead of the step.

Which architectures (and, in :mod:`ghn.training`, which images) a step sees is a pure function of
``(seed, step, rank)`` (:func:`step_rng`), so a resumed run repeats the exact steps of an uninterrupted one and
worker processes can build any step's architectures out of order.
"""
from __future__ import annotations

import hashlib
import math
import pickle
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

from ghn.graph import ArchGraph
from ghn.task import Task


def parse_arch_filter(text: str) -> Dict[str, set]:
    """``"family=cnn;norm=bn|gn"`` -> ``{"family": {"cnn"}, "norm": {"bn", "gn"}}`` (spec fields, any-of values)."""
    out: Dict[str, set] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        if "=" not in part:
            raise ValueError(f"--arch-filter {text!r}: expected key=value[|value...] separated by ';'")
        k, v = part.split("=", 1)
        out[k.strip()] = {x.strip() for x in v.split("|")}
    return out


def _param_count(archs, i: int, task: Task, counts: Optional[Dict[int, int]]) -> int:
    """Parameters of ``archs[i]`` under ``task``, memoised in ``counts`` (a dict shared by callers) when given."""
    from ghn.archs.counting import count_params

    if counts is None:
        return count_params(archs[i], **task.model_kwargs())
    if i not in counts:
        counts[i] = count_params(archs[i], **task.model_kwargs())
    return counts[i]


def select_archs(archs, name: str, arch_filter: str, max_arch_params: int, pool_size: int, task: Task,
                 counts: Optional[Dict[int, int]] = None) -> Optional[List[int]]:
    """Dataset indices allowed by ``arch_filter``, ``max_arch_params`` and ``pool_size`` (None: all of them).
    ``counts``: a dict memoising parameter counts, to share with :func:`split_by_size`."""
    if not (arch_filter or max_arch_params > 0 or pool_size > 0):
        return None
    indices: List[int] = list(range(len(archs)))
    if arch_filter:
        want = parse_arch_filter(arch_filter)
        indices = [i for i in indices if all(str(archs[i].get(k)) in v for k, v in want.items())]
        if not indices:
            raise ValueError(f"no architecture of {name!r} matches --arch-filter {arch_filter!r}")
    if max_arch_params > 0:
        indices = [i for i in indices if _param_count(archs, i, task, counts) <= max_arch_params]
        if not indices:
            raise ValueError(f"no architecture of {name!r} has <= {max_arch_params} parameters")
    return indices[:pool_size] if pool_size > 0 else indices


def split_by_size(archs, indices: Optional[List[int]], task: Task, small_params: int,
                  counts: Optional[Dict[int, int]] = None) -> Tuple[List[int], List[int]]:
    """Positions in the pool (``indices``, None: every architecture) of the architectures with at most
    ``small_params`` parameters, and of the others (``counts``: as in :func:`select_archs`)."""
    indices = list(range(len(archs))) if indices is None else indices
    small, large = [], []
    for pos, i in enumerate(indices):
        (small if _param_count(archs, i, task, counts) <= small_params else large).append(pos)
    return small, large


def step_rng(seed: int, step: int, rank: int, what: str) -> torch.Generator:
    """A generator seeded from ``(seed, step, rank, what)`` only."""
    h = hashlib.sha256(f"{seed}/{step}/{rank}/{what}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


def pack_meta_batch(sizes: List[int], budget: int) -> int:
    """How many of the sampled architectures fit the budget (at least one, so no architecture is ever dropped)."""
    total, n = 0, 0
    for s in sizes:
        if n and total + s > budget:
            break
        total, n = total + s, n + 1
    return n


class ArchPool:
    """Builds (and caches, LRU) the models and graphs of an architecture dataset for one image task."""

    def __init__(self, archs, task: Task, cache_size: int = 512, indices: Optional[List[int]] = None):
        self.archs, self.task = archs, task
        self.indices = list(range(len(archs))) if indices is None else list(indices)
        self.cache: "OrderedDict[int, Tuple[nn.Module, ArchGraph]]" = OrderedDict()
        self.cache_size = cache_size

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, i: int, device: torch.device) -> Tuple[nn.Module, ArchGraph]:
        """Model and graph of the ``i``-th architecture of the pool (``indices[i]`` of the dataset)."""
        if i in self.cache:
            self.cache.move_to_end(i)
            return self.cache[i]
        model = self.archs.build(self.indices[i], **self.task.model_kwargs())
        graph = ArchGraph.from_module(model, self.task.example_input())
        model = model.to(device)
        self.cache[i] = (model, graph)
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return model, graph


class StepArchs(torch.utils.data.Dataset):
    """Step ``s`` -> the architectures of that step for one rank: ``(models, graphs, PyG datas)``, on CPU.

    A ``DataLoader`` over this dataset with worker processes builds them ahead of the training loop.
    """

    def __init__(self, pool: ArchPool, seed: int, rank: int, meta_batch: int, budget: int,
                 featurize: Optional[Callable[[ArchGraph], Any]] = None,
                 mix: Optional[Tuple[float, List[int], List[int]]] = None):
        self.pool, self.seed, self.rank, self.meta_batch, self.budget = pool, seed, rank, meta_batch, budget
        self.featurize = featurize  # the hypernetwork's graph -> PyG Data (GraphHyperNetwork.featurizer)
        self.mix = mix  # (share, small, large): each slot draws from the pool positions ``small`` with that
        #                 probability, else from ``large`` (split_by_size); None: uniform over the pool

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, step: int):
        g = step_rng(self.seed, step, self.rank, "archs")
        if self.mix is None:
            idx = torch.randint(len(self.pool), (self.meta_batch,), generator=g).tolist()
        else:
            share, small, large = self.mix
            which = (torch.rand(self.meta_batch, generator=g) < share).tolist()
            u = torch.rand(self.meta_batch, generator=g, dtype=torch.float64).tolist()
            idx = [(small if s else large)[int(x * len(small if s else large))] for s, x in zip(which, u)]
        models, graphs = zip(*[self.pool.get(i, torch.device("cpu")) for i in idx])
        sizes = [sum(math.prod(r.shape) for _, r in gr.param_refs()) for gr in graphs]
        n = pack_meta_batch(sizes, self.budget)
        datas = [self.featurize(gr) for gr in graphs[:n]] if self.featurize else None  # off the step
        return list(models[:n]), list(graphs[:n]), datas


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # many builder processes: one intra-op thread each


class _Pickled(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        return pickle.dumps(self.ds[i], protocol=pickle.HIGHEST_PROTOCOL)


def iterate_steps(stream: StepArchs, start: int, stop: int, workers: int = 0) -> Iterator[Tuple[list, list, Any]]:
    """``(models, graphs, datas)`` for steps ``start .. stop - 1``, built in ``workers`` processes when > 0.

    Workers hand back pickled bytes of objects they built themselves: sharing every tensor of the models through
    shared memory would cost one file descriptor per tensor and exhaust the process limit.
    """
    if workers <= 0:
        return (stream[s] for s in range(start, stop))
    loader = torch.utils.data.DataLoader(_Pickled(stream), batch_size=None, num_workers=workers,
                                         sampler=range(start, stop), prefetch_factor=4, worker_init_fn=_one_thread)
    return (pickle.loads(b) for b in loader)
