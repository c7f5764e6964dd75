"""The zoo: resolve model names to modules, and batch-initialize many models at once.

Names resolve in this order: a spec file (``*.json``, one architecture spec of ``ghn.archs``), ``module:Attr``
(import and call), ``torchvision:NAME`` / ``timm:NAME`` / ``hf:NAME`` (optional extras), a built-in name of
``ghn.archs.registry`` (resnet18, resnet50, vit_small, mobilenet_v2, ... — no torchvision needed), and finally a plain
torchvision or timm name when those packages are installed.
"""
from __future__ import annotations

import importlib
import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ghn.graph import ArchGraph
from ghn.hypernet import GraphHyperNetwork, InitReport, write_params
from ghn.task import Task


def _call_with_supported(fn, **kw: Any) -> nn.Module:
    """Call a model factory with the keyword arguments it accepts (num_classes, in_channels, ...)."""
    try:
        sig = inspect.signature(fn)
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            kw = {k: v for k, v in kw.items() if k in sig.parameters}
    except (TypeError, ValueError):
        pass
    return fn(**kw)


def get_model(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Build a model from a name, ``module:Attr``, ``torchvision:/timm:/hf:`` name or a spec ``.json`` file."""
    kw = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"spec file not found: {path}")
        from ghn.archs.darts import build_model

        return build_model(json.loads(path.read_text()), **kw)
    if ":" in name:
        prefix, attr = name.split(":", 1)
        if prefix == "torchvision":
            tv = _optional("torchvision", "vision")
            return tv.models.get_model(attr, weights=None, num_classes=num_classes)
        if prefix == "timm":
            timm = _optional("timm", "vision")
            return timm.create_model(attr, pretrained=False, num_classes=num_classes, in_chans=in_channels)
        if prefix == "hf":
            tr = _optional("transformers", "nlp")
            try:
                config = tr.AutoConfig.from_pretrained(attr)
            except OSError as e:  # offline, unknown id, or a directory without config.json: one line, no traceback
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise FileNotFoundError(f"{name}: no model config ({first}); give a Hub id reachable from here or "
                                        "a local directory with config.json") from None
            return tr.AutoModelForCausalLM.from_config(config)
        obj = importlib.import_module(prefix)
        for part in attr.split("."):
            obj = getattr(obj, part)
        try:
            return _call_with_supported(obj, **kw)
        except TypeError as e:  # e.g. required constructor arguments: a one-line error, not a traceback
            raise ValueError(f"{name}: cannot build it with no arguments ({e}); wrap it in a factory "
                             "function that takes num_classes/in_channels/image_size") from None
    from ghn.archs.registry import PREDEFINED, build_predefined

    key = name.lower().replace("-", "_")
    try:
        return build_predefined(key, **kw)
    except KeyError:
        pass
    for pkg, factory in (("torchvision", lambda m: m.models.get_model(name, weights=None, num_classes=num_classes)),
                         ("timm", lambda m: m.create_model(name, pretrained=False, num_classes=num_classes))):
        try:
            mod = importlib.import_module(pkg)
        except ImportError:
            continue
        try:
            return factory(mod)
        except Exception:  # not a name of that package
            continue
    import difflib

    close = difflib.get_close_matches(key, sorted(PREDEFINED), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise KeyError(f"unknown model {name!r}; {hint}built-in: {', '.join(sorted(PREDEFINED))}; also accepted: "
                   "'module:Class', 'torchvision:NAME', 'timm:NAME', 'hf:NAME' (with the extras installed) or a "
                   "spec .json file")


def _optional(pkg: str, extra: str):
    try:
        return importlib.import_module(pkg)
    except ImportError:
        raise ImportError(f"{pkg} is not installed: pip install -e .[{extra}]") from None


@dataclass
class ZooEntry:
    """One model of a zoo: a display name and how to build it (a model name or a spec dict).

    ``error`` is set for an entry that could not even be read (malformed JSON, with its file and line): it is
    reported as failed and skipped, and the rest of the zoo goes on.
    """

    name: str
    source: Union[str, Dict[str, Any], None]
    error: Optional[str] = None


def _spec_entry(name: str, text: str, where: str) -> ZooEntry:
    try:
        spec = json.loads(text)
    except ValueError as e:
        return ZooEntry(name, None, f"{where}: malformed JSON ({e})")
    if not isinstance(spec, dict):
        return ZooEntry(name, None, f"{where}: a spec must be a JSON object, got {type(spec).__name__}")
    return ZooEntry(name, spec)


def read_zoo(path: Union[str, Path]) -> List[ZooEntry]:
    """Read a zoo: a directory of spec ``.json`` files, a text file of model names (one per line, ``#`` comments),
    a ``.jsonl``/``.jsonl.gz`` file of specs, or an architecture split of ``ghn.archs.storage``. Unreadable entries come
    back with ``error`` set (file and line), not as an exception."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"zoo directory {path} holds no *.json spec files")
        return [_spec_entry(f.stem, f.read_text(errors="replace"), str(f)) for f in files]
    if not path.is_file():
        from ghn.archs.storage import resolve_split_path

        resolved = Path(resolve_split_path(str(path)))  # an architecture split name (test, val, ...)
        if not resolved.is_file():
            raise FileNotFoundError(f"zoo file not found: {path}")
        path = resolved
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        import gzip

        opener = gzip.open if path.name.endswith(".gz") else open
        stem = path.name.split(".")[0]
        with opener(path, "rt", errors="replace") as f:
            lines = [(k, line) for k, line in enumerate(f, 1) if line.strip()]
        return [_spec_entry(f"{stem}-{i:05d}", line, f"{path}:{k}") for i, (k, line) in enumerate(lines)]
    entries = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(ZooEntry(line.replace("/", "_").replace(":", "_"), line))
    return entries


def build_entry(entry: ZooEntry, task: Task) -> nn.Module:
    """Build the module of a zoo entry for ``task``."""
    if isinstance(entry.source, dict):
        from ghn.archs.darts import build_model

        return build_model(entry.source, **task.model_kwargs())
    return get_model(entry.source, **task.model_kwargs())


def check_out_path(path: Union[str, Path]) -> Path:
    """Refuse, before any work, an output path that is not (or cannot become) a regular file we may replace."""
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"--out {path} is a symbolic link; give the real path")
    if path.exists() and not path.is_file():
        raise ValueError(f"--out {path} exists and is not a regular file")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"--out {path}: {parent} is not a directory")
    if not path.name.endswith(".safetensors"):
        raise ValueError(f"--out {path}: expected a .safetensors file name")
    return path


def save_predicted(model: nn.Module, report: InitReport, path: Union[str, Path]) -> None:
    """Write the predicted tensors of ``model`` (tied tensors once) to a safetensors file with the report, through
    a temporary file renamed into place (a crash never leaves half a file, an existing file is replaced whole)."""
    from safetensors.torch import save_file

    path = check_out_path(path)
    named = dict(model.named_parameters())
    tensors = {k: named[k].detach().contiguous().cpu() for k in report.predicted if k in named}
    meta = {"predicted_by": "ghn", "tied": json.dumps(report.tied), "untouched": json.dumps(report.untouched)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), meta)
    tmp.replace(path)


@dataclass
class ZooSummary:
    """Result of :func:`initialize_zoo`."""

    reports: Dict[str, InitReport] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        full = sum(1 for r in self.reports.values() if not r.untouched)
        vals = sum(r.num_predicted_values for r in self.reports.values())
        s = (f"{len(self.reports)} models initialized ({full} fully covered), {vals:,} values predicted in "
             f"{self.seconds:.1f}s")
        if self.failed:
            s += f"; {len(self.failed)} failed: " + "; ".join(f"{k}: {v}" for k, v in list(self.failed.items())[:5])
        return s


@torch.no_grad()
def initialize_zoo(entries: Sequence[ZooEntry], ghn: GraphHyperNetwork, out_dir: Optional[Union[str, Path]] = None,
                   batch_size: int = 16, task: Optional[Task] = None, strict: bool = True, progress: bool = True,
                   on_model: Optional[Callable[[str, nn.Module, InitReport], None]] = None) -> ZooSummary:
    """Predict parameters for many models, ``batch_size`` graphs per hypernetwork pass.

    Each model's predicted tensors go to ``out_dir/<name>.safetensors`` (when given) and a ``summary.json`` lists
    per model what was predicted and what was left untouched. A model that fails to build or trace is recorded in
    ``summary.failed`` with the reason; the others continue. ``on_model(name, model, report)`` is called with each
    initialized model as soon as its weights are written (to inspect or evaluate it); models are not kept, so a
    zoo of any size runs in the memory of one batch.
    """
    summary = ZooSummary()
    t0 = time.perf_counter()
    ghn.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(entries), desc="zoo", dynamic_ncols=True)
    task = task or ghn.task  # the hypernetwork's own task unless told otherwise
    x = task.example_input()
    fail = lambda e, err: summary.failed.__setitem__(e.name, f"{type(err).__name__}: {err}")  # noqa: E731
    try:
        for start in range(0, len(entries), batch_size):
            chunk, models, graphs = [], [], []
            for e in entries[start:start + batch_size]:
                if e.error is not None:
                    summary.failed[e.name] = e.error
                    continue
                try:
                    m = build_entry(e, task)
                    g = ArchGraph.from_module(m, x if _takes_images(m) else None, strict=strict)
                except Exception as err:  # reported per model, never silently
                    fail(e, err)
                    continue
                chunk.append(e)
                models.append(m)
                graphs.append(g)
            for i, p in _predict_each(ghn, chunk, graphs, fail):
                e, m, g = chunk[i], models[i], graphs[i]
                try:
                    rep = write_params(m, p, g)
                    rep.model = e.name
                    if out_dir is not None:
                        save_predicted(m, rep, Path(out_dir) / f"{e.name}.safetensors")
                except Exception as err:  # non-finite predictions, an unwritable file: this model only
                    fail(e, err)
                    continue
                summary.reports[e.name] = rep
                if on_model is not None:
                    on_model(e.name, m, rep)
            if bar is not None:
                bar.update(len(entries[start:start + batch_size]))
    finally:  # summary.json is written whatever happened, with what was done
        if bar is not None:
            bar.close()
        summary.seconds = time.perf_counter() - t0
        if out_dir is not None:
            write_summary(summary, Path(out_dir) / "summary.json")
    return summary


def _predict_each(ghn: GraphHyperNetwork, entries: List[ZooEntry], graphs: List[ArchGraph], fail
                  ) -> List[Tuple[int, Dict[str, torch.Tensor]]]:
    """``(index, predictions)`` per graph: one batched pass, or graph by graph if the batch fails."""
    if not graphs:
        return []
    try:
        return list(enumerate(ghn(graphs)))
    except Exception:  # one bad model (e.g. a tensor shape the decoder cannot emit) must not sink the batch
        out = []
        for i, g in enumerate(graphs):
            try:
                out.append((i, ghn([g])[0]))
            except Exception as err:
                fail(entries[i], err)
        return out


def write_summary(summary: ZooSummary, path: Path) -> None:
    """``summary.json``: per model what was predicted / tied / left untouched, and every failure with its reason."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"models": {k: {"predicted": len(r.predicted), "values": r.num_predicted_values, "tied": r.tied,
                          "untouched": r.untouched, "frozen": r.frozen} for k, r in summary.reports.items()},
           "failed": summary.failed, "seconds": summary.seconds}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def _takes_images(model: nn.Module) -> bool:
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Embedding, nn.Linear, nn.Conv1d))),
                 None)
    return isinstance(first, nn.Conv2d)
