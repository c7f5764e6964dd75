"""Architecture datasets: generating, storing and loading splits of specs (see ``ghn.space``).

A split is a gzip JSON-lines file (one canonical spec per line, written as independent gzip members of
``BLOCK`` lines so a reader can decompress one block at a time) plus a small ``*.manifest.json`` (split, n, seed,
generator version, rejection counts, families, file digest). Files are byte-for-byte reproducible from the seed.

    python -m ghn.data make-eval --out data/                                  # the small shipped splits
    python -m ghn.data generate --split train --n 1000000 --seed 0 --out data/train.jsonl.gz
    python -m ghn.data generate --split test --n 200 --out /tmp/x.jsonl.gz --check 20

Disjointness: every (seed, split, chunk) has its own random stream; the evaluation splits are generated in the
order of ``EVAL_ORDER``, each excluding the hashes of the ones before it, and ``train`` excludes all of them (by
default the shipped files in ``data/``). No spec appears twice within a split.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import sys
import time
import zlib
from collections import Counter, deque
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from ghn import space as S

__all__ = [
    "GENERATOR_VERSION", "EVAL_ORDER", "EVAL_SIZES", "DEFAULT_DATA_DIR", "BLOCK",
    "generate", "make_eval", "write_split", "read_lines", "read_manifest", "load_hashes", "default_excludes",
    "resolve_split_path", "manifest_path", "check_specs", "ArchDataset", "main",
]

GENERATOR_VERSION = "ghn.data/1"
#: evaluation splits, in generation order (each excludes the hashes of the ones before it)
EVAL_ORDER: Tuple[str, ...] = ("val", "test", "wide", "deep", "dense", "normfree", "transformer", "predefined")
EVAL_SIZES: Dict[str, int] = {"val": 200, "test": 200, "wide": 50, "deep": 50, "dense": 50, "normfree": 50,
                              "transformer": 50, "predefined": len(S.PREDEFINED_NAMES)}
#: the repository's data/ directory (overridable with $GHN_DATA_DIR)
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
BLOCK = 1000  # lines per gzip member
CHUNK = 1000  # specs per sampling chunk (part of the output definition: recorded in the manifest)
SUFFIX = ".jsonl.gz"

PathLike = Union[str, Path]


# ----------------------------------------------------------------------------------------------------------------
# paths
# ----------------------------------------------------------------------------------------------------------------
def data_dir() -> Path:
    """``$GHN_DATA_DIR`` if set, else the repository's ``data/``."""
    env = os.environ.get("GHN_DATA_DIR")
    return Path(env) if env else DEFAULT_DATA_DIR


def manifest_path(path: PathLike) -> Path:
    """``data/test.jsonl.gz`` -> ``data/test.manifest.json``."""
    p = Path(path)
    name = p.name
    for suf in (".jsonl.gz", ".jsonl", ".gz"):
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    return p.with_name(name + ".manifest.json")


def resolve_split_path(name_or_path: PathLike) -> Path:
    """A split file path from a path or a split name (``"test"`` -> ``<data dir>/test.jsonl.gz``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    s = str(name_or_path)
    if s in S.SPLITS or (os.sep not in s and "." not in s):
        return data_dir() / f"{s}{SUFFIX}"
    return p


def _missing(path: Path) -> FileNotFoundError:
    stem = manifest_path(path).name.replace(".manifest.json", "")
    if stem in EVAL_SIZES:
        how = f"python -m ghn.data make-eval --out {path.parent}/"
    else:
        split = stem if stem in S.SPLITS else "train"
        how = f"python -m ghn.data generate --split {split} --n 1000000 --seed 0 --out {path}"
    return FileNotFoundError(f"architecture split file not found: {path}\n  generate it with: {how}")


# ----------------------------------------------------------------------------------------------------------------
# storage
# ----------------------------------------------------------------------------------------------------------------
def _gzip_block(lines: Sequence[bytes]) -> bytes:
    return gzip.compress(b"".join(line + b"\n" for line in lines), compresslevel=9, mtime=0)


class _SplitWriter:
    """Streams canonical lines into gzip members of ``BLOCK`` lines; ``close`` writes the manifest."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.f = open(self.tmp, "wb")
        self.digest = hashlib.sha256()
        self.size = 0
        self.buf: List[bytes] = []

    def add(self, line: bytes) -> None:
        self.buf.append(line)
        if len(self.buf) >= BLOCK:
            self._flush()

    def _flush(self) -> None:
        if self.buf:
            blob = _gzip_block(self.buf)
            self.f.write(blob)
            self.digest.update(blob)
            self.size += len(blob)
            self.buf = []

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)

    def close(self, manifest: Dict[str, Any]) -> Dict[str, Any]:
        self._flush()
        self.f.close()
        os.replace(self.tmp, self.path)
        manifest = {**manifest, "file": self.path.name, "bytes": self.size, "sha256": self.digest.hexdigest()}
        manifest_path(self.path).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        return manifest


def write_split(path: PathLike, lines: Iterable[bytes], manifest: Dict[str, Any]) -> Dict[str, Any]:
    """Write canonical spec lines (gzip members of ``BLOCK`` lines) and the manifest; returns the manifest."""
    w = _SplitWriter(path)
    try:
        for line in lines:
            w.add(line)
    except BaseException:
        w.abort()
        raise
    return w.close(manifest)


def _scan_members(raw: bytes) -> List[Tuple[int, int, int]]:
    """(start, end, number of lines) of every gzip member of ``raw`` (one streaming pass)."""
    members = []
    view = memoryview(raw)
    pos = 0
    step = 1 << 16
    while pos < len(raw):
        d = zlib.decompressobj(wbits=31)
        i, n_lines = pos, 0
        while not d.eof:
            if i >= len(raw):
                raise ValueError("truncated gzip member")
            piece = view[i:i + step]
            i += len(piece)
            n_lines += d.decompress(piece).count(b"\n")
        end = i - len(d.unused_data)
        members.append((pos, end, n_lines))
        pos = end
    return members


def read_lines(path: PathLike) -> List[bytes]:
    """All spec lines of a split file (gzip or plain JSON lines), as bytes."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return [line for line in raw.split(b"\n") if line.strip()]


def read_manifest(path: PathLike) -> Optional[Dict[str, Any]]:
    """The manifest next to a split file, or ``None``."""
    m = manifest_path(path)
    return json.loads(m.read_text()) if m.is_file() else None


def load_hashes(path: PathLike) -> Set[str]:
    """sha1 hashes (``ghn.space.spec_hash``) of the specs in a split file."""
    return {hashlib.sha1(_canonical_line(line)).hexdigest() for line in read_lines(resolve_split_path(path))}


def _canonical_line(line: bytes) -> bytes:
    return S.canonical_json(json.loads(line)).encode()


def _key(digest_hex: str) -> int:
    return int(digest_hex[:16], 16)


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
    rng = random.Random(S.split_seed(seed, split, chunk_id))
    cap = S.SPACES[split].max_params
    seen: Set[int] = set()
    out: List[Tuple[int, bytes, Tuple[str, ...]]] = []
    pending: List[str] = []
    draws = 0
    while len(out) < size:
        draws += 1
        spec = S.draw_spec(rng, split)
        reason = S.rejection_reason(spec, cap)
        if reason is None:
            line = S.canonical_json(spec).encode()
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
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(exclude,))


_FAMILY = re.compile(rb'"family":"([a-z_]+)"')


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
    if split not in S.SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {S.SPLITS}")
    if n < 0:
        raise ValueError("n must be >= 0")
    excl = {_key(h) for h in exclude}
    rejected: Counter = Counter()
    families: Counter = Counter()
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

    bar = pool = None
    try:
        if split == "predefined":
            names = list(S.PREDEFINED_NAMES)
            if n > len(names):
                raise ValueError(f"the predefined split holds {len(names)} names, asked for {n}")
            for nm in names[:n]:
                keep(S.canonical_json({"family": "predefined", "name": nm}).encode())
            draws = kept
        else:
            seen: Set[int] = set()
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=n, desc=f"generate {split}", unit="arch", dynamic_ncols=True, file=sys.stderr)
            pool = _pool(workers, excl) if workers > 1 else None
            _init_worker(excl if pool is None else set())
            window: Deque[Any] = deque()  # chunks in flight, in chunk order (bounded memory)
            next_chunk = 0
            while kept < n:
                if pool is None:
                    items = _chunk((split, seed, next_chunk, chunk_size))
                    next_chunk += 1
                else:
                    while len(window) < 4 * workers:
                        window.append(pool.apply_async(_chunk, ((split, seed, next_chunk, chunk_size),)))
                        next_chunk += 1
                    items = window.popleft().get()
                before = kept
                for key, line, rej in items:
                    if kept >= n:
                        break
                    rejected.update(rej)
                    draws += len(rej) + 1
                    if key in seen:
                        rejected["duplicate"] += 1
                        continue
                    seen.add(key)
                    keep(line)
                if bar is not None:
                    bar.update(kept - before)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        _init_worker(set())
        if bar is not None:
            bar.close()
    manifest: Dict[str, Any] = {
        "split": split, "n": kept, "seed": seed, "generator": GENERATOR_VERSION, "chunk_size": chunk_size,
        "max_params": S.SPACES[split].max_params if split != "predefined" else None,
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
                model = S.build_model(spec, nc, ic, size)
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
                failures.append({"spec": S.spec_hash(spec), "task": [nc, ic, size], "error": repr(e)[:300]})
    return {"checked": len(specs) * len(tasks), "ok": n_ok, "failures": failures,
            "seconds": round(time.perf_counter() - t0, 2)}


# ----------------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------------
class ArchDataset:
    """A split of architecture specs loaded from disk (a path, or a split name such as ``"test"``).

    Only the compressed file is kept in memory; ``ds[i]`` decompresses the block that holds spec ``i`` (the
    last block is cached), so a 1M-spec split costs ~70 MB of RAM and one decompression pass to index.

        >>> ds = ArchDataset("test")
        >>> model = ds.build(0, num_classes=10, in_channels=1, image_size=28)
    """

    def __init__(self, path: PathLike = "train"):
        self.path = resolve_split_path(path)
        if not self.path.is_file():
            raise _missing(self.path)
        raw = self.path.read_bytes()
        self.manifest = read_manifest(self.path)
        self._raw: Optional[bytes] = None
        self._lines: Optional[List[bytes]] = None
        if raw[:2] == b"\x1f\x8b":
            self._raw = raw
            members = _scan_members(raw)
            self._members = [(a, b) for a, b, k in members if k]
            counts = [k for _, _, k in members if k]
            self._starts = [0]
            for k in counts:
                self._starts.append(self._starts[-1] + k)
        else:
            self._lines = [line for line in raw.split(b"\n") if line.strip()]
            self._starts = [0, len(self._lines)]
        self._cache: Tuple[int, List[bytes]] = (-1, [])
        self.split = (self.manifest or {}).get("split", manifest_path(self.path).name.split(".")[0])

    def __len__(self) -> int:
        return self._starts[-1]

    def __repr__(self) -> str:
        return f"ArchDataset({str(self.path)!r}, n={len(self)})"

    def line(self, i: int) -> bytes:
        """The canonical JSON text of spec ``i``."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} specs")
        if self._lines is not None:
            return self._lines[i]
        lo, hi = 0, len(self._members) - 1
        while lo < hi:  # block holding i
            mid = (lo + hi + 1) // 2
            if self._starts[mid] <= i:
                lo = mid
            else:
                hi = mid - 1
        if self._cache[0] != lo:
            a, b = self._members[lo]
            assert self._raw is not None
            text = zlib.decompress(self._raw[a:b], wbits=31)
            self._cache = (lo, text.split(b"\n")[:-1])
        return self._cache[1][i - self._starts[lo]]

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return json.loads(self.line(i))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def hash(self, i: int) -> str:
        """``spec_hash`` of spec ``i``."""
        return hashlib.sha1(_canonical_line(self.line(i))).hexdigest()

    def build(self, i: int, num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        """Build the ``nn.Module`` of spec ``i`` for a task."""
        return S.build_model(self[i], num_classes=num_classes, in_channels=in_channels, image_size=image_size)


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
    g.add_argument("--split", required=True, choices=S.SPLITS)
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
        print(f"[{k}] {S.describe(ds[k])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
