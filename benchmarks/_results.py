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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)
    return path
