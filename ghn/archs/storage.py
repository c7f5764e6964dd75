"""Architecture datasets: generating, storing and loading splits of specs (see ``ghn.archs.spec``).

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

import gzip
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

from ghn.archs.darts import build_model
from ghn.archs.spec import PREDEFINED_NAMES, SPLITS, canonical_json

GENERATOR_VERSION = "ghn.data/1"
#: evaluation splits, in generation order (each excludes the hashes of the ones before it)
EVAL_ORDER: Tuple[str, ...] = ("val", "test", "wide", "deep", "dense", "normfree", "transformer", "predefined")
EVAL_SIZES: Dict[str, int] = {"val": 200, "test": 200, "wide": 50, "deep": 50, "dense": 50, "normfree": 50,
                              "transformer": 50, "predefined": len(PREDEFINED_NAMES)}
#: the repository's data/ directory (overridable with $GHN_DATA_DIR)
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "data"
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
    if s in SPLITS or (os.sep not in s and "." not in s):
        return data_dir() / f"{s}{SUFFIX}"
    return p


def _missing(path: Path) -> FileNotFoundError:
    stem = manifest_path(path).name.replace(".manifest.json", "")
    if stem in EVAL_SIZES:
        how = f"python -m ghn.data make-eval --out {path.parent}/"
    else:
        split = stem if stem in SPLITS else "train"
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
    """sha1 hashes (``ghn.archs.spec.spec_hash``) of the specs in a split file."""
    return {hashlib.sha1(_canonical_line(line)).hexdigest() for line in read_lines(resolve_split_path(path))}


def _canonical_line(line: bytes) -> bytes:
    return canonical_json(json.loads(line)).encode()


def _key(digest_hex: str) -> int:
    return int(digest_hex[:16], 16)


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
        return build_model(self[i], num_classes=num_classes, in_channels=in_channels, image_size=image_size)
