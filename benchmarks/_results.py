"""The one results writer of the benchmarks (every JSON they write carries the date, the machine and the command),
and the architecture subsets they share."""
from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import torch


def small_archs(archs, n: int, max_params: int, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                family: str = "") -> list:
    """The first ``n`` indices of ``archs`` (an ``ArchDataset``) with at most ``max_params`` parameters for this task
    (and of ``family``, when given): the fixed subsets the benchmarks measure on."""
    from ghn.archs.counting import count_params

    return [i for i in range(len(archs)) if (not family or archs[i]["family"] == family)
            and count_params(archs[i], num_classes, in_channels, image_size) <= max_params][:n]


def machine() -> Dict[str, Any]:
    """Where a number was measured."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__}


def write_results(path: Union[str, Path], doc: Dict[str, Any]) -> Path:
    """Write ``doc`` as JSON (atomically) with ``date``, ``machine`` and ``command`` added where missing."""
    doc = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
           "command": " ".join([Path(sys.executable).name, *sys.argv]), **doc}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two evaluations may share a cache file
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)
    return path


class DefaultInitCache:
    """Results of default init per architecture (no training, or a fine-tuning budget), kept across runs.

    They do not depend on the hypernetwork, so every evaluation after the first skips half the work. A key is a
    fingerprint of the default-initialised model (every tensor), of ``ghn/evaluation.py``, of torch's version and
    thread count (100 SGD steps at lr 0.05 are chaotic enough that float reduction order shows) and of the
    settings: a change to any of them misses the cache instead of returning a stale number.
    """

    def __init__(self, path: Union[str, Path], enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        self.hits = self.misses = 0

    def _load(self) -> Dict[str, Any]:
        if not (self.enabled and self.path.is_file()):
            return {}
        return json.loads(self.path.read_text()).get("results", {})

    @staticmethod
    def key(model: torch.nn.Module, **settings: Any) -> str:
        import hashlib

        import ghn.evaluation

        h = hashlib.sha256()
        for name, t in model.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        h.update(Path(ghn.evaluation.__file__).read_bytes())
        h.update(f"{torch.__version__}|{torch.get_num_threads()}|{sorted(settings.items())}".encode())
        return h.hexdigest()[:24]

    def get(self, key: str, compute):
        """The cached value of ``key``, or ``compute()`` (then stored; other processes' entries are kept)."""
        cached = self._load()
        if key in cached:
            self.hits += 1
            return cached[key]
        self.misses += 1
        value = compute()
        if self.enabled:
            write_results(self.path, {"note": "default-init results (benchmarks/_results.py DefaultInitCache)",
                                      "results": {**self._load(), key: value}})
        return value


def ghn_fingerprint(ckpt: Union[str, Path, None]) -> str:
    """The fingerprint of hypernetwork ``ckpt`` (None: the shipped one) that resumable rows are keyed by; a missing
    file is a one-line error."""
    from ghn.hypernet import DEFAULT_CHECKPOINT, checkpoint_fingerprint

    path = Path(ckpt) if ckpt else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise SystemExit(f"error: no hypernetwork checkpoint at {path}")
    return checkpoint_fingerprint(path)


def _complete_lines(path: Path) -> Tuple[List[str], bool]:
    """The non-empty lines of a partial-rows file without a torn last one (a process killed mid-append), and
    whether there was one."""
    text = [x for x in path.read_text().splitlines() if x.strip()]
    try:
        json.loads(text[-1]) if text else None
    except json.JSONDecodeError:
        return text[:-1], True
    return text, False


class PartialRows:
    """Rows of a long benchmark appended one JSON line each as they finish, after a header of the settings.

    A stopped run resumes from them: ``rows()`` maps each row's ``key`` fields (a tuple) to the row. A file written
    under other settings is refused (``fresh`` starts it over): its numbers would silently mix with the new ones.
    """

    def __init__(self, path: Union[str, Path], settings: Dict[str, Any], key: Sequence[str], fresh: bool = False):
        self.path, self.settings, self.key = Path(path), json.loads(json.dumps(settings)), tuple(key)
        self._rows: dict = {}
        if self.path.is_file() and not fresh:
            text, torn = _complete_lines(self.path)
            if torn:  # a process killed mid-append: that row is computed again
                self.path.write_text("".join(x + "\n" for x in text))
            lines = [json.loads(x) for x in text]
            if not lines or lines[0].get("settings") != self.settings:
                raise SystemExit(f"error: {self.path} holds rows of a run with other settings; "
                                 "pass --fresh to start over, or another --out")
            self._rows = {self._key(r): r for r in lines[1:]}
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"settings": self.settings}) + "\n")

    def _key(self, row: Dict[str, Any]) -> tuple:
        return tuple(row[k] for k in self.key)

    def rows(self) -> dict:
        return dict(self._rows)

    def adopt(self, other: Union[str, Path]) -> int:
        """Copy into this file the rows of another run's partial file written under the same settings (e.g. the
        second process of an evaluation split in two) that this one does not have yet; returns how many. A file of
        other settings is refused, as on resume."""
        lines = [json.loads(x) for x in _complete_lines(Path(other))[0]]
        if not lines or lines[0].get("settings") != self.settings:
            raise SystemExit(f"error: {other} holds rows of a run with other settings than {self.path}")
        new = [r for r in lines[1:] if self._key(r) not in self._rows]
        for r in new:
            self.add(r)
        return len(new)

    def add(self, row: dict) -> dict:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._rows[self._key(row)] = row
        return row
