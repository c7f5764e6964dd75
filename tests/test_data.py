"""Dataset generation: determinism, worker independence, disjointness, storage and the ArchDataset loader."""
import gzip
import hashlib
import json
import random
from itertools import combinations

import pytest

from ghn import data as D
from ghn import space as S


def _hashes(lines):
    return [hashlib.sha1(line).hexdigest() for line in lines]


@pytest.fixture(scope="module")
def shipped_hashes():
    return {s: D.load_hashes(s) for s in D.EVAL_ORDER}


def test_same_seed_gives_identical_bytes_for_any_worker_count(tmp_path):
    a, b, c = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz", tmp_path / "c.jsonl.gz"
    D.generate("train", 450, seed=7, out=a, workers=1, chunk_size=100)
    D.generate("train", 450, seed=7, out=b, workers=2, chunk_size=100)
    D.generate("train", 450, seed=7, out=c, workers=2, chunk_size=100)
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    ma, mb = D.read_manifest(a), D.read_manifest(b)
    assert ma == {**mb, "file": "a.jsonl.gz"}
    d = tmp_path / "d.jsonl.gz"
    D.generate("train", 450, seed=8, out=d, workers=1, chunk_size=100)
    assert d.read_bytes() != a.read_bytes()


def test_prefix_property(tmp_path):
    small, _ = D.generate("test", 120, seed=1, workers=1, chunk_size=50)
    big, _ = D.generate("test", 300, seed=1, workers=1, chunk_size=50)
    assert big[:120] == small


def test_shipped_eval_splits_are_reproducible(tmp_path):
    D.make_eval(tmp_path, seed=0, workers=1)
    for split in D.EVAL_ORDER:
        name = f"{split}.jsonl.gz"
        assert (tmp_path / name).read_bytes() == (D.DEFAULT_DATA_DIR / name).read_bytes(), split
        assert D.read_manifest(tmp_path / name) == D.read_manifest(D.DEFAULT_DATA_DIR / name), split


def test_shipped_split_sizes_and_contents(shipped_hashes):
    for split, n in D.EVAL_SIZES.items():
        ds = D.ArchDataset(split)
        assert len(ds) == n and len(shipped_hashes[split]) == n, split  # no duplicates
        assert (D.DEFAULT_DATA_DIR / f"{split}.jsonl.gz").stat().st_size < 20_000
        man = ds.manifest
        assert man["split"] == split and man["n"] == n and man["generator"] == D.GENERATOR_VERSION
        assert "rejected" in man and "draws" in man
    assert [s["name"] for s in D.ArchDataset("predefined")] == list(S.PREDEFINED_NAMES)
    assert {s["family"] for s in D.ArchDataset("transformer")} == {"vit"}
    assert sum(D.read_manifest(D.resolve_split_path("test"))["rejected"].values()) > 0


def test_shipped_splits_are_pairwise_disjoint(shipped_hashes):
    for a, b in combinations(D.EVAL_ORDER, 2):
        assert not shipped_hashes[a] & shipped_hashes[b], (a, b)


def test_train_excludes_eval_hashes(shipped_hashes):
    # a train run that would produce some eval specs: seed the exclusion with the first specs of its own stream
    lines, _ = D.generate("train", 300, seed=0, workers=1, chunk_size=100)
    own = set(_hashes(lines[:50]))
    excl = set().union(*shipped_hashes.values()) | own
    lines2, man = D.generate("train", 300, seed=0, workers=1, chunk_size=100, exclude=sorted(excl))
    got = set(_hashes(lines2))
    assert len(got) == 300 and not got & excl
    assert man["rejected"]["excluded"] >= 50 and man["excluded_hashes"] == len(excl)
    assert lines2[:10] == lines[50:60]  # excluded specs are skipped, the stream goes on


def test_no_duplicates_and_rejections_counted():
    lines, man = D.generate("transformer", 3000, seed=0, workers=2, chunk_size=500)
    assert len(set(lines)) == len(lines) == 3000
    assert man["draws"] == 3000 + sum(man["rejected"].values())
    assert man["rejected"]["too_many_params"] > 0
    assert man["families"] == {"vit": 3000}


def test_storage_is_gzip_jsonl_in_blocks(tmp_path):
    out = tmp_path / "x.jsonl.gz"
    lines, man = D.generate("val", 2500, seed=3, out=out, workers=1)
    with gzip.open(out, "rt") as f:
        text = f.read().splitlines()
    assert [t.encode() for t in text] == lines
    for t in text[:20]:
        spec = json.loads(t)
        assert S.canonical_json(spec) == t
    members = D._scan_members(out.read_bytes())
    assert [k for _, _, k in members] == [1000, 1000, 500]
    assert man["bytes"] == out.stat().st_size < 2500 * 100  # well under 100 B per spec
    assert man["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_arch_dataset(tmp_path):
    out = tmp_path / "y.jsonl.gz"
    lines, _ = D.generate("train", 2100, seed=5, out=out, workers=1)
    ds = D.ArchDataset(out)
    assert len(ds) == 2100
    for i in random.Random(0).sample(range(2100), 30) + [0, 999, 1000, 2099, -1]:
        assert ds.line(i) == lines[i]
        assert S.canonical_json(ds[i]) == lines[i].decode()
        assert ds.hash(i) == S.spec_hash(ds[i])
    with pytest.raises(IndexError):
        ds[2100]
    small = next(i for i in range(2100) if ds[i]["family"] == "cnn" and S.count_params(ds[i]) < 3e5)
    model = ds.build(small, num_classes=5, in_channels=1, image_size=28)
    assert model.head[-1].out_features == 5
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(b"\n".join(lines[:10]) + b"\n")
    assert [d for d in D.ArchDataset(plain)] == [json.loads(x) for x in lines[:10]]


def test_missing_split_error_says_how_to_generate(tmp_path, monkeypatch):
    monkeypatch.setenv("GHN_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"train\.jsonl\.gz[\s\S]*python -m ghn\.data generate --split train"):
        D.ArchDataset("train")
    with pytest.raises(FileNotFoundError, match="make-eval"):
        D.ArchDataset("test")
    with pytest.raises(FileNotFoundError, match="nope"):
        D.ArchDataset(tmp_path / "nope.jsonl.gz")


def test_cli_generate_with_check(tmp_path, capsys):
    out = tmp_path / "cli"
    out.mkdir()
    rc = D.main(["generate", "--split", "normfree", "--n", "30", "--out", str(out), "--workers", "1",
                 "--no-progress", "--check", "2", "--eval-dir", str(D.DEFAULT_DATA_DIR)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "check: 4/4" in text and (out / "normfree.jsonl.gz").is_file()
    man = D.read_manifest(out / "normfree.jsonl.gz")
    assert man["exclude_files"] == [f"{s}.jsonl.gz" for s in ("val", "test", "wide", "deep", "dense")]
    # train without its exclusion files is refused
    rc = D.main(["generate", "--split", "train", "--n", "5", "--out", str(out), "--eval-dir", str(tmp_path),
                 "--no-progress"])
    assert rc == 2 and "make-eval" in capsys.readouterr().err


def test_check_specs_reports_failures():
    bad = {"family": "cnn", "C": 8, "cells": 4, "steps": 1, "mult": 2.0, "norm": "bn", "act": "relu",
           "stem": "conv", "stem_k": 3, "stem_mult": 1, "fc_hidden": 0, "normal": [["conv9", 1, "skip", 0]],
           "reduce": [["conv3", 1, "skip", 0]]}
    good = dict(bad, normal=[["conv3", 1, "skip", 0]])
    rep = D.check_specs([good, bad], tasks=[(10, 1, 12)])
    assert rep["checked"] == 2 and rep["ok"] == 1 and "unknown op" in rep["failures"][0]["error"]
