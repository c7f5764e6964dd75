"""The benchmark scripts' shared helpers (benchmarks/_results.py)."""
import importlib.util
from pathlib import Path

import torch
import torch.nn as nn

_spec = importlib.util.spec_from_file_location("_results", Path(__file__).parent.parent / "benchmarks" / "_results.py")
_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_results)


def test_default_init_cache_reuses_only_identical_models_and_settings(tmp_path):
    calls = []

    def compute(v):
        calls.append(v)
        return v

    cache = _results.DefaultInitCache(tmp_path / "c.json")
    torch.manual_seed(0)
    m = nn.Linear(3, 2)
    k = cache.key(m, test_n=100)
    assert cache.get(k, lambda: compute(0.5)) == 0.5
    again = _results.DefaultInitCache(tmp_path / "c.json")  # a later run: read from disk, not recomputed
    assert again.get(again.key(m, test_n=100), lambda: compute(0.9)) == 0.5 and calls == [0.5]
    assert cache.key(m, test_n=200) != k  # another setting
    with torch.no_grad():
        m.weight[0, 0] += 1e-6
    assert cache.key(m, test_n=100) != k  # another init (e.g. a changed builder or seed)
    off = _results.DefaultInitCache(tmp_path / "c.json", enabled=False)
    assert off.get(k, lambda: compute(0.7)) == 0.7 and calls == [0.5, 0.7]
