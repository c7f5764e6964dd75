"""Initialising models built on the ``meta`` device, one tensor group at a time (bounded memory).

A 7B-parameter model does not fit twice in 24 GB. Built on ``meta`` it costs nothing; the graph is traced there,
the hypernetwork encodes it once, and the decoder then emits the parameters in groups of about ``budget`` values:
each group is decoded, checked to be finite, cast to the parameter's dtype, materialised on ``device`` and put in
place of the meta parameter (in every module that shares it), before the next group is decoded. Peak memory is
the materialised model plus one group.

Tensors the hypernetwork does not predict (buffers, frozen or unused parameters) stay on ``meta`` and are listed in
the report: they have no values yet, and inventing some would be silently wrong.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple, Union

import torch
import torch.nn as nn

from ghn.graph import ArchGraph, ParamRef


def _owners(model: nn.Module) -> Dict[str, Tuple[nn.Module, str]]:
    """``{parameter name: (owning module, attribute)}`` for every name, shared parameters included."""
    out = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for pname in m._parameters:
            out[f"{mname}.{pname}" if mname else pname] = (m, pname)
    return out


def _groups(refs: List[Tuple[int, ParamRef]], budget: int) -> List[List[Tuple[int, ParamRef]]]:
    groups, cur, size = [], [], 0
    for item in refs:
        cur.append(item)
        size += math.prod(item[1].shape)
        if size >= budget:
            groups.append(cur)
            cur, size = [], 0
    return groups + ([cur] if cur else [])


@torch.no_grad()
def materialize(hyper, model: nn.Module, example_input: Any = None, device: Union[str, torch.device] = "cpu",
                budget: int = 1 << 24, strict: bool = True, progress: bool = False):
    """Predict the parameters of a ``meta``-device ``model`` group by group and materialise them on ``device``.

    Returns an :class:`~ghn.hypernet.InitReport`; parameters and buffers left on ``meta`` are in ``untouched``.
    """
    from ghn.hypernet import InitReport, NonFiniteError

    graph = ArchGraph.from_module(model, example_input, strict=strict)
    was_training = hyper.training
    hyper.eval()
    try:
        batch = hyper.to_pyg_batch([graph])
        h = hyper.encoder(batch)
        owners = _owners(model)
        report = InitReport(type(model).__name__)
        groups = _groups(graph.param_refs(), budget)
        fed, cap = hyper.norm_fed_nodes(graph), hyper.dir_cap(graph)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(groups), desc="materialize", unit="group", dynamic_ncols=True)
        for group in groups:
            idx = torch.tensor([ni for ni, _ in group], dtype=torch.long, device=h.device)
            # the same decoder inputs as GraphHyperNetwork.decode: trusted op types, norm-fed nodes, the cap
            ts = hyper.decoder(h[idx], [r for _, r in group], hyper.trained_ops, [ni in fed for ni, _ in group],
                               [cap] * len(group))
            for (_, ref), t in zip(group, ts):
                if not bool(torch.isfinite(t).all()):
                    raise NonFiniteError(f"{ref.name}: the hypernetwork predicted non-finite values; the model is "
                                         "partly materialised and must not be used")
                _place(owners, ref, t, device, report)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    finally:
        hyper.train(was_training)
    cov = graph.coverage()
    report.tied = {k: v for k, v in cov.tied.items() if ":" not in k}
    report.frozen = list(cov.frozen)
    for name, p in model.named_parameters():
        if p.is_meta and name not in report.untouched:
            report.untouched[name] = "not predicted: still on the meta device"
    for name, b in model.named_buffers():
        if b.is_meta:
            report.untouched[name] = "buffer: still on the meta device"
    return report


def _place(owners: Dict[str, Tuple[nn.Module, str]], ref: ParamRef, t: torch.Tensor, device, report) -> None:
    module, attr = owners[ref.name]
    old = module._parameters[attr]
    new = nn.Parameter(t.to(device=device, dtype=old.dtype), requires_grad=old.requires_grad)
    for name in (ref.name,) + tuple(ref.aliases):  # every module that shares the tensor gets the same one
        m, a = owners[name]
        m._parameters[a] = new
    report.predicted.append(ref.name)
    report.num_predicted_values += new.numel()


def is_meta(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is on the meta device."""
    return any(p.is_meta for p in model.parameters())

