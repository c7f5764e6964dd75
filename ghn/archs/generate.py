"""Generating architecture splits (the sampler in parallel, disjoint evaluation splits), checking them, and the
``python -m ghn.data`` command line."""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import re
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from ghn.archs.darts import build_model
from ghn.archs.sampling import draw_spec, rejection_reason
from ghn.archs.spec import PREDEFINED_NAMES, SPACES, SPLITS, canonical_json, describe, spec_hash, split_seed
from ghn.archs.storage import (
    CHUNK,
    DEFAULT_DATA_DIR,
    EVAL_ORDER,
    EVAL_SIZES,
    GENERATOR_VERSION,
    SUFFIX,
    ArchDataset,
    PathLike,
    _key,
    _SplitWriter,
    data_dir,
    load_hashes,
    resolve_split_path,
)

# ----------------------------------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------------------------------
_WORKER_EXCLUDE: Set[int] = set()


def _init_worker(exclude: Set[int]) -> None:
    global _WORKER_EXCLUDE
    _WORKER_EXCLUDE = exclude


def _chunk(args: Tuple[str, int, int, int]) -> List[Tuple[int, bytes, Tuple[str, ...]]]:
    """Sample one chunk: ``size`` valid specs, unique within the chunk and not excluded.

    Returns ``[(64-bit hash key, canonical line, reasons of the draws rejected just before it)]`` so the caller
    can count rejections exactly up to the last spec it keeps.
    """
    split, seed, chunk_id, size = args
    rng = random.Random(split_seed(seed, split, chunk_id))
    cap = SPACES[split].max_params
    seen: Set[int] = set()
    out: List[Tuple[int, bytes, Tuple[str, ...]]] = []
    pending: List[str] = []
    draws = 0
    while len(out) < size:
        draws += 1
        spec = draw_spec(rng, split)
        reason = rejection_reason(spec, cap)
        if reason is None:
            line = canonical_json(spec).encode()
            key = _key(hashlib.sha1(line).hexdigest())
            if key in _WORKER_EXCLUDE:
                reason = "excluded"
            elif key in seen:
                reason = "duplicate"
            else:
                seen.add(key)
                out.append((key, line, tuple(pending)))
                pending = []
                continue
        pending.append(reason)
        if draws > 1000 * size + 10_000:
            raise RuntimeError(f"split {split!r}: chunk {chunk_id} cannot find {size} valid unique specs")
    return out


def _pool(workers: int, exclude: Set[int]):
    """Worker processes started clean (forkserver, else spawn), never forked from a caller that may hold torch's
    OpenMP threads; a worker that dies raises ``BrokenProcessPool`` instead of leaving its chunk waited on forever
    (a forked ``multiprocessing.Pool`` hung a test run that way)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=_init_worker,
                               initargs=(exclude,))


_FAMILY = re.compile(rb'"family":"([a-z_]+)"')


def _chunk_stream(split: str, seed: int, chunk_size: int, workers: int, excl: Set[int]) -> Iterator[list]:
    """The sampled chunks ``0, 1, 2, ...`` of a split, in order (``workers`` > 1: computed ahead in a pool)."""
    pool = _pool(workers, excl) if workers > 1 else None
    _init_worker(excl if pool is None else set())
    window: Deque[Any] = deque()  # chunks in flight, in chunk order (bounded memory)
    k = 0
    try:
        while True:
            if pool is None:
                yield _chunk((split, seed, k, chunk_size))
                k += 1
                continue
            while len(window) < 4 * workers:
                window.append(pool.submit(_chunk, (split, seed, k, chunk_size)))
                k += 1
            yield window.popleft().result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        _init_worker(set())


def _first_occurrences(chunks: Iterator[Any], rejected: Counter) -> Iterator[Tuple[bytes, int]]:
    """The lines of a chunk stream seen for the first time, each with the draws it took (itself, and the rejected
    and duplicate draws since the previous one); rejections are counted into ``rejected`` as they are met, so a
    consumer that stops after a line has counted exactly the draws up to it."""
    seen: Set[int] = set()
    took = 0
    for items in chunks:
        for key, line, rej in items:
            rejected.update(rej)
            took += len(rej) + 1
            if key in seen:
                rejected["duplicate"] += 1
                continue
            seen.add(key)
            yield line, took
            took = 0


def generate(split: str, n: int, seed: int = 0, out: Optional[PathLike] = None, workers: int = 2,
             exclude: Iterable[str] = (), exclude_files: Sequence[str] = (), chunk_size: int = CHUNK,
             progress: bool = False, keep_lines: bool = True) -> Tuple[List[bytes], Dict[str, Any]]:
    """Generate ``n`` unique valid specs of ``split``; returns ``(canonical lines, manifest)`` and writes ``out``.

    The result depends only on ``(split, n, seed, chunk_size, exclude)``, never on ``workers``: chunk ``k`` is
    sampled from its own stream ``split_seed(seed, split, k)`` and chunks are merged in order, dropping specs
    already taken from earlier chunks, until ``n`` are accepted. ``exclude`` holds spec hashes that must not
    appear (the evaluation splits). ``draws`` and ``rejected`` count exactly the draws up to the last kept spec.
    The file is written while sampling; with ``keep_lines=False`` the returned list is empty (saves memory).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if n < 0:
        raise ValueError("n must be >= 0")
    excl = {_key(h) for h in exclude}
    rejected, families = Counter(), Counter()
    lines: List[bytes] = []
    writer = _SplitWriter(out) if out is not None else None
    kept = draws = 0

    def keep(line: bytes) -> None:
        nonlocal kept
        kept += 1
        m = _FAMILY.search(line)
        families[m.group(1).decode() if m else "?"] += 1
        if keep_lines:
            lines.append(line)
        if writer is not None:
            writer.add(line)

    bar = chunks = None
    try:
        if split == "predefined":
            names = list(PREDEFINED_NAMES)
            if n > len(names):
                raise ValueError(f"the predefined split holds {len(names)} names, asked for {n}")
            for nm in names[:n]:
                keep(canonical_json({"family": "predefined", "name": nm}).encode())
            draws = kept
        else:
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=n, desc=f"generate {split}", unit="arch", dynamic_ncols=True, file=sys.stderr)
            chunks = _chunk_stream(split, seed, chunk_size, workers, excl)
            for line, took in itertools.islice(_first_occurrences(chunks, rejected), n):
                draws += took
                keep(line)
                if bar is not None:
                    bar.update(1)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if chunks is not None:
            chunks.close()  # stops the worker pool
        if bar is not None:
            bar.close()
    manifest: Dict[str, Any] = {
        "split": split, "n": kept, "seed": seed, "generator": GENERATOR_VERSION, "chunk_size": chunk_size,
        "max_params": SPACES[split].max_params if split != "predefined" else None,
        "draws": draws, "rejected": dict(sorted(rejected.items())), "families": dict(sorted(families.items())),
        "excluded_hashes": len(excl), "exclude_files": list(exclude_files),
    }
    if writer is not None:
        manifest = writer.close(manifest)
    return lines, manifest


def default_excludes(split: str, eval_dir: Optional[PathLike] = None) -> List[Path]:
    """The split files whose hashes ``split`` must exclude: earlier ``EVAL_ORDER`` splits, or all of them."""
    d = Path(eval_dir) if eval_dir is not None else data_dir()
    before = EVAL_ORDER[:EVAL_ORDER.index(split)] if split in EVAL_ORDER else EVAL_ORDER
    return [d / f"{s}{SUFFIX}" for s in before if s != "predefined"]


def make_eval(out_dir: PathLike, seed: int = 0, workers: int = 1, sizes: Optional[Dict[str, int]] = None,
              progress: bool = False) -> Dict[str, Dict[str, Any]]:
    """Generate the evaluation splits into ``out_dir`` in ``EVAL_ORDER`` (each excluding the previous ones)."""
    sizes = {**EVAL_SIZES, **(sizes or {})}
    out_dir = Path(out_dir)
    hashes: Set[str] = set()
    done: List[str] = []
    manifests = {}
    for split in EVAL_ORDER:
        files = [f"{s}{SUFFIX}" for s in done if s != "predefined"]
        lines, man = generate(split, sizes[split], seed, out_dir / f"{split}{SUFFIX}", workers=workers,
                              exclude=sorted(hashes), exclude_files=files, progress=progress)
        hashes |= {hashlib.sha1(line).hexdigest() for line in lines}
        done.append(split)
        manifests[split] = man
    return manifests


# ----------------------------------------------------------------------------------------------------------------
# checking
# ----------------------------------------------------------------------------------------------------------------
def check_specs(specs: Sequence[Dict[str, Any]], tasks: Sequence[Tuple[int, int, int]] = ((10, 3, 32), (10, 1, 28)),
                graph: bool = True) -> Dict[str, Any]:
    """Build every spec for every ``(num_classes, in_channels, image_size)``, run a batch-2 forward, and (if
    ``ghn.graph`` is importable and ``graph``) check the graph covers every parameter. Returns a report."""
    import torch

    try:
        from ghn.graph import ArchGraph
    except ImportError:  # pragma: no cover - the graph module is part of the package
        ArchGraph = None  # type: ignore[assignment]
    failures: List[Dict[str, Any]] = []
    n_ok, t0 = 0, time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    for spec in specs:
        for nc, ic, size in tasks:
            try:
                model = build_model(spec, nc, ic, size)
                if spec.get("family") == "gpt":
                    x = torch.randint(0, 100, (2, 8), generator=gen)
                else:
                    x = torch.randn(2, ic, size, size, generator=gen)
                with torch.no_grad():
                    y = model(x)
                if not torch.isfinite(y).all():
                    raise RuntimeError("non-finite output")
                if graph and ArchGraph is not None:
                    cov = ArchGraph.from_module(model, x).coverage()
                    if cov.fraction < 1.0:
                        raise RuntimeError(f"graph coverage {cov.fraction:.3f}, missing {cov.missing[:5]}")
                n_ok += 1
            except Exception as e:  # noqa: BLE001 - reported, not swallowed
                failures.append({"spec": spec_hash(spec), "task": [nc, ic, size], "error": repr(e)[:300]})
    return {"checked": len(specs) * len(tasks), "ok": n_ok, "failures": failures,
            "seconds": round(time.perf_counter() - t0, 2)}


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def _out_file(out: str, split: str) -> Path:
    p = Path(out)
    if out.endswith(("/", os.sep)) or p.is_dir():
        return p / f"{split}{SUFFIX}"
    return p


def _run_check(ds: "ArchDataset", k: int, seed: int) -> Dict[str, Any]:
    rng = random.Random(seed)
    idx = sorted(rng.sample(range(len(ds)), min(k, len(ds))))
    report = check_specs([ds[i] for i in idx])
    print(f"check: {report['ok']}/{report['checked']} builds+forward+graph ok in {report['seconds']} s")
    for f in report["failures"][:20]:
        print(f"  FAIL {f['spec'][:12]} task={f['task']}: {f['error']}")
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``generate``, ``make-eval``, ``info``."""
    ap = argparse.ArgumentParser(prog="python -m ghn.data", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate one split")
    g.add_argument("--split", required=True, choices=SPLITS)
    g.add_argument("--n", type=int, required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, help="output .jsonl.gz file, or a directory")
    g.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    g.add_argument("--chunk-size", type=int, default=CHUNK)
    g.add_argument("--exclude", nargs="*", default=None,
                   help="split files whose specs must not appear (default: the shipped eval splits before this "
                        "one in EVAL_ORDER, all of them for train)")
    g.add_argument("--eval-dir", default=None, help="where the default --exclude files live (default: data/)")
    g.add_argument("--check", type=int, default=0, metavar="K",
                   help="build + forward + graph-coverage check of K random specs")
    g.add_argument("--no-progress", action="store_true")
    e = sub.add_parser("make-eval", help="generate the small evaluation splits")
    e.add_argument("--out", default=str(DEFAULT_DATA_DIR))
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--workers", type=int, default=1)
    e.add_argument("--check", type=int, default=0, metavar="K", help="check K random specs per split")
    i = sub.add_parser("info", help="print a split's manifest and a few specs")
    i.add_argument("path")
    args = ap.parse_args(argv)

    if args.cmd == "generate":
        if args.exclude is None:
            files = default_excludes(args.split, args.eval_dir)
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                print(f"error: exclusion files missing: {', '.join(missing)}\n  run `python -m ghn.data make-eval "
                      f"--out data/` first, or pass --exclude (possibly empty) explicitly", file=sys.stderr)
                return 2
        else:
            files = [resolve_split_path(f) for f in args.exclude]
        out = _out_file(args.out, args.split)
        files = [f for f in files if f.resolve() != out.resolve()]
        hashes: Set[str] = set()
        for f in files:
            hashes |= load_hashes(f)
        t0 = time.perf_counter()
        _, man = generate(args.split, args.n, args.seed, out, workers=args.workers, exclude=sorted(hashes),
                              exclude_files=[f.name for f in files], chunk_size=args.chunk_size,
                              progress=not args.no_progress, keep_lines=False)
        dt = time.perf_counter() - t0
        print(f"wrote {out} ({man['n']} specs, {man['bytes'] / 1e6:.2f} MB, {man['bytes'] / max(1, man['n']):.1f} "
              f"B/spec) in {dt:.1f} s ({man['n'] / max(dt, 1e-9):.0f} specs/s)")
        print(f"draws {man['draws']}, rejected {man['rejected']}, families {man['families']}")
        if args.check:
            rep = _run_check(ArchDataset(out), args.check, args.seed)
            return 1 if rep["failures"] else 0
        return 0
    if args.cmd == "make-eval":
        mans = make_eval(args.out, args.seed, args.workers)
        bad = 0
        for split, man in mans.items():
            print(f"{split:12s} n={man['n']:4d} {man['bytes']:7d} B rejected={man['rejected']}")
            if args.check:
                bad += len(_run_check(ArchDataset(Path(args.out) / man["file"]), args.check, args.seed)["failures"])
        return 1 if bad else 0
    ds = ArchDataset(args.path)
    print(json.dumps(ds.manifest, indent=1, sort_keys=True) if ds.manifest else "(no manifest)")
    for k in range(min(3, len(ds))):
        print(f"[{k}] {describe(ds[k])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
