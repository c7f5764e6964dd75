"""The one results writer of the benchmarks: every JSON they write carries the date, the machine and the command."""
from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Union

import torch


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
