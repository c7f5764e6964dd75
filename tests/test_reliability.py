"""Bad input, concurrent runs and NaN: never lose data, never write silent garbage (one test per probe)."""
from __future__ import annotations

import gzip
import json
import os
import time

import pytest
import torch
import torch.nn as nn
from models import ProtoData, ToyArchs
from safetensors.torch import load_file, save_file

from ghn import rundir
from ghn.graph import shortest_path_edges
from ghn.hypernet import CheckpointError, GraphHyperNetwork, NonFiniteError
from ghn.space import build_model, check_spec
from ghn.task import Task
from ghn.training import TrainConfig, TrainerState, train
from ghn.zoo import initialize_zoo, read_zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(hidden=16, layers=1, rank=4, code_dim=16)


def tiny_ckpt(path):
    torch.manual_seed(0)
    GraphHyperNetwork(**SMALL).save(path)
    return path


def cfg(tmp_path, name="run", **kw):
    base = dict(out_dir=str(tmp_path / name), steps=4, meta_batch=2, batch_size=16, lr=1e-3, warmup_steps=1,
                log_every=1, ckpt_every=2, progress=False, ghn=SMALL, cpu=True)
    base.update(kw)
    return TrainConfig(**base)


def log_steps(c):
    return [json.loads(line)["step"] for line in open(os.path.join(c.out_dir, "log.jsonl"))]


# -- absurd sizes and bad specs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("patch,msg", [
    ({"cells": 10_000}, "cells=10000"), ({"steps": 0}, "steps=0"), ({"mult": 0}, "mult=0"),
    ({"C": "16"}, "C='16'"), ({"colour": 1}, "unknown keys"),
])
def test_bad_cnn_specs_refused_in_one_line(patch, msg):
    specs = (json.loads(line) for line in gzip.open(os.path.join(ROOT, "data", "test.jsonl.gz"), "rt"))
    spec = next(s for s in specs if s["family"] == "cnn")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=msg) as e:
        build_model({**spec, **patch})
    assert "\n" not in str(e.value) and time.perf_counter() - t0 < 5


VIT = {"family": "vit", "dim": 64, "depth": 2, "heads": 4, "mlp": 2.0, "pre_norm": True, "pool": "cls",
       "attn": "sdpa", "norm": "ln", "qkv_bias": True, "patches": 4}


@pytest.mark.parametrize("spec,msg", [
    ([1, 2], "must be a JSON object"), ({**VIT, "depth": 10_000}, "depth=10000"), ({**VIT, "heads": 0}, "heads=0"),
    ({k: v for k, v in VIT.items() if k != "pool"}, r"missing keys \['pool'\]"), ({**VIT, "pool": "max"}, "pool"),
    ({"family": "mlp"}, "unknown spec family"),
])
def test_bad_transformer_specs_refused(spec, msg):
    with pytest.raises(ValueError, match=msg):
        check_spec(spec)


def test_virtual_edges_are_sparse_on_huge_graphs():
    n = 200_000  # a dense N x N frontier would need 40 GB
    ei = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    idx, dist = shortest_path_edges(ei, n, 3)
    assert idx.shape[1] == 2 * (n - 2) + 2 * (n - 3) and set(dist.tolist()) == {2, 3}


# -- checkpoints ---------------------------------------------------------------------------------------------------
def _rewrite(path, out, meta_patch=None, tensor_patch=None):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    state = load_file(str(path))
    meta.update(meta_patch or {})
    if tensor_patch:
        tensor_patch(state)
    save_file(state, str(out), meta)
    return out


@pytest.mark.parametrize("patch,msg", [
    ({"config": json.dumps({"hidden": 100_000_000})}, "do not match the config"),
    ({"config": "{not json"}, "bad metadata"),
    ({"config": json.dumps([1])}, "not a JSON object"),
    ({"config": json.dumps({"hidden": "big"})}, "hidden='big'"),
    ({"format_version": "x"}, "bad metadata"),
    ({"op_types": json.dumps(["conv"])}, "op vocabulary"),
])
def test_forged_metadata_is_a_checkpoint_error_before_allocating(tmp_path, patch, msg):
    bad = _rewrite(tiny_ckpt(tmp_path / "a.safetensors"), tmp_path / "b.safetensors", patch)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=msg):
        GraphHyperNetwork.load(bad)
    assert time.perf_counter() - t0 < 5


def test_one_flipped_value_is_detected(tmp_path):
    def flip(state):
        k = sorted(state)[3]
        state[k].view(-1)[0] += 1.0

    bad = _rewrite(tiny_ckpt(tmp_path / "a.safetensors"), tmp_path / "b.safetensors", tensor_patch=flip)
    with pytest.raises(CheckpointError, match="SHA-256"):
        GraphHyperNetwork.load(bad)


# -- NaN predictions -----------------------------------------------------------------------------------------------
def nan_ghn():
    torch.manual_seed(0)
    g = GraphHyperNetwork(**SMALL)
    with torch.no_grad():
        g.decoder.head_scale.bias.fill_(float("nan"))
    return g


def test_nan_predictions_are_refused_and_nothing_is_written():
    model = nn.Sequential(nn.Linear(4, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteError, match="non-finite"):
        nan_ghn().initialize(model, torch.randn(2, 4))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_predict_cli_refuses_nan_predictions(predict_cli, tmp_path):
    ck = tmp_path / "nan.safetensors"
    nan_ghn().save(ck)
    out = tmp_path / "w.safetensors"
    r = predict_cli("--model", "resnet18", "--ckpt", str(ck), "--out", str(out))
    assert r.returncode == 2 and "non-finite" in r.stderr and not out.exists()


# -- zoo -----------------------------------------------------------------------------------------------------------
def test_zoo_skips_bad_entries_and_always_writes_the_summary(tmp_path):
    good = json.loads(gzip.open(os.path.join(ROOT, "data", "test.jsonl.gz"), "rt").readline())
    d = tmp_path / "zoo"
    d.mkdir()
    (d / "a_good.json").write_text(json.dumps(good))
    (d / "b_broken.json").write_text("{nope")
    (d / "c_badspec.json").write_text(json.dumps({**good, "family": "mlp"}))
    jl = tmp_path / "zoo.jsonl"
    jl.write_text(json.dumps(good) + "\n{broken line\n" + json.dumps(good) + "\n")
    torch.manual_seed(0)
    ghn = GraphHyperNetwork(**SMALL)
    out = tmp_path / "out"
    s = initialize_zoo(read_zoo(d), ghn, out, task=Task(4, 1, 12), progress=False)
    assert set(s.reports) == {"a_good"} and set(s.failed) == {"b_broken", "c_badspec"}
    assert "b_broken.json" in s.failed["b_broken"] and "malformed JSON" in s.failed["b_broken"]
    doc = json.loads((out / "summary.json").read_text())
    assert set(doc["failed"]) == {"b_broken", "c_badspec"} and (out / "a_good.safetensors").is_file()
    s = initialize_zoo(read_zoo(jl), ghn, None, task=Task(4, 1, 12), progress=False)
    assert len(s.reports) == 2 and list(s.failed) == ["zoo-00001"] and "zoo.jsonl:2" in s.failed["zoo-00001"]


def test_zoo_with_nan_hypernetwork_fails_every_model_without_writing(tmp_path):
    entries = read_zoo(os.path.join(ROOT, "data", "test.jsonl.gz"))[:2]
    s = initialize_zoo(entries, nan_ghn(), tmp_path, task=Task(4, 1, 12), progress=False)
    assert not s.reports and len(s.failed) == 2 and all("non-finite" in v for v in s.failed.values())
    assert (tmp_path / "summary.json").is_file() and not list(tmp_path.glob("*.safetensors"))


# -- training runs -------------------------------------------------------------------------------------------------
def test_second_run_in_a_locked_dir_is_refused(tmp_path):
    c = cfg(tmp_path)
    lock = rundir.RunLock(tmp_path / "run").acquire()
    try:
        with pytest.raises(rundir.RunDirError, match="in use by another training"):
            train(c, data=ProtoData(), archs=ToyArchs())
    finally:
        lock.release()
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_new_run_over_an_old_one_is_refused_and_resume_latest_continues(tmp_path):
    train(cfg(tmp_path, steps=4), data=ProtoData(), archs=ToyArchs())
    with pytest.raises(rundir.RunDirError, match="already holds a run"):
        train(cfg(tmp_path, steps=6), data=ProtoData(), archs=ToyArchs())
    with pytest.raises(ValueError, match="already at step 4"):
        train(cfg(tmp_path, steps=4, resume="latest"), data=ProtoData(), archs=ToyArchs())
    rundir.RunLock(tmp_path / "run").acquire().release()  # a failed set-up released the directory
    train(cfg(tmp_path, steps=6, resume="latest"), data=ProtoData(), archs=ToyArchs())
    assert TrainerState.read(rundir.latest_checkpoint(tmp_path / "run") / "trainer_state.json").step == 6


def test_log_has_no_duplicate_steps_after_resume_and_tmp_leftovers_go(tmp_path):
    c = cfg(tmp_path, steps=5, ckpt_every=2)
    train(c, data=ProtoData(), archs=ToyArchs())  # checkpoints at 2, 4, 5; log up to 5
    assert log_steps(c) == [1, 2, 3, 4, 5]
    run = tmp_path / "run"
    (run / "ckpt-0000009.tmp").mkdir()  # a writer killed mid-checkpoint
    train(cfg(tmp_path, steps=7, resume=str(run / "ckpt-0000004")), data=ProtoData(), archs=ToyArchs())
    assert log_steps(c) == [1, 2, 3, 4, 5, 6, 7]
    assert not list(run.glob("*.tmp"))


def test_keep_checkpoints_prunes_old_ones_and_resume_still_works(tmp_path):
    train(cfg(tmp_path, steps=6, ckpt_every=2, keep_checkpoints=1), data=ProtoData(), archs=ToyArchs())
    run = tmp_path / "run"
    assert [p.name for p in sorted(run.glob("ckpt-*"))] == ["ckpt-0000006"]
    train(cfg(tmp_path, steps=8, ckpt_every=2, keep_checkpoints=1, resume="latest"), data=ProtoData(),
          archs=ToyArchs())
    assert [p.name for p in sorted(run.glob("ckpt-*"))] == ["ckpt-0000008"]


def test_resume_takes_the_hypernetwork_config_and_refuses_conflicts(tmp_path):
    big = dict(SMALL, hidden=24)
    train(cfg(tmp_path, steps=2, ghn=big, lr=3e-3), data=ProtoData(), archs=ToyArchs())
    ck = str(tmp_path / "run" / "ckpt-0000002")
    with pytest.raises(ValueError, match=r"lr=0.001 \(run: 0.003\)"):
        train(cfg(tmp_path, steps=3, ghn={}, resume=ck), data=ProtoData(), archs=ToyArchs())
    with pytest.raises(ValueError, match=r"lr=0.001 \(run: 0.003\)"):  # also when "latest" is resolved here
        train(cfg(tmp_path, steps=3, ghn={}, resume="latest"), data=ProtoData(), archs=ToyArchs())
    with pytest.raises(ValueError, match=r"hidden=32"):
        train(cfg(tmp_path, steps=3, ghn={"hidden": 32}, resume=ck, lr=3e-3), data=ProtoData(), archs=ToyArchs())
    train(cfg(tmp_path, steps=3, ghn={}, resume=ck, lr=3e-3), data=ProtoData(), archs=ToyArchs())  # no --hidden
    assert GraphHyperNetwork.load(tmp_path / "run" / "ghn.safetensors").config.hidden == 24


def test_train_cli_resume_uses_the_runs_settings(tmp_path):
    from train import parse_args

    train(cfg(tmp_path, steps=2, lr=3e-3, ghn=dict(SMALL, hidden=24)), data=ProtoData(), archs=ToyArchs())
    c = parse_args(["--out-dir", str(tmp_path / "run"), "--resume", "latest", "--steps", "9"])
    assert c.lr == 3e-3 and c.steps == 9 and c.resume.endswith("ckpt-0000002") and c.ghn == {}


@pytest.mark.parametrize("argv,msg", [
    (["--steps", "0"], "nothing to train"),
    (["--archs", "{corrupt}"], "bad.jsonl.gz: cannot read architecture specs"),
    (["--archs", "{empty}"], "holds no architecture specs"),
    (["--resume", "latest"], "no complete checkpoint"),
])
def test_train_cli_errors_are_one_line(train_cli, tmp_path, argv, msg):
    corrupt = tmp_path / "bad.jsonl.gz"
    corrupt.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    argv = [a.format(corrupt=corrupt, empty=empty) for a in argv]
    r = train_cli("--out-dir", tmp_path / "o", "--cpu", "--no-progress", "--dataset", "synthetic", *argv)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and msg in lines[-1] and "Traceback" not in r.stderr


def test_all_nan_run_stops_with_an_error(tmp_path):
    data = ProtoData()
    data.images[:] = float("nan")
    with pytest.raises(FloatingPointError, match="3 consecutive steps"):
        train(cfg(tmp_path, steps=10, max_skipped=3), data=data, archs=ToyArchs())


# -- predict.py input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,msg", [
    (["--model", "resnt18"], "did you mean resnet18"),
    (["--model", "resnet18", "--num-classes", "0"], "--num-classes must be >= 1"),
    (["--model", "resnet18", "--image-size", "0"], "--image-size must be >= 1"),
    (["--model", "torch.nn:Identity"], "nothing to predict"),
    (["--model", "torch.nn:Conv1d"], "cannot build it with no arguments"),
    (["--model", "resnet18", "--example-shape", "2,x"], "--example-shape"),
])
def test_predict_bad_input_is_one_line(predict_cli, argv, msg):
    r = predict_cli(*argv)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr


def test_predict_out_is_checked_before_the_work(predict_cli, tmp_path):
    target = tmp_path / "real.safetensors"
    target.write_text("keep me")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    for bad, msg in ((link, "symbolic link"), (tmp_path, "not a regular file"), (tmp_path / "w.bin", ".safetensors")):
        r = predict_cli("--model", "resnet18", "--out", str(bad))
        assert r.returncode == 2 and msg in r.stderr and "predicted" not in r.stdout
    assert target.read_text() == "keep me"


def test_predict_example_shape_for_conv1d_and_tokens(predict_cli, tmp_path):
    out = tmp_path / "c.safetensors"
    r = predict_cli("--model", "models:Conv1dNet", "--example-shape", "2,3,32")
    assert r.returncode == 2 and "give a fitting --example-shape" in r.stderr  # the shipped task has 1 channel
    r = predict_cli("--model", "models:Conv1dNet", "--example-shape", "2,1,32", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert load_file(str(out)) and not list(tmp_path.glob("*.tmp"))
    r = predict_cli("--model", "gpt_tiny", "--example-shape", "2,8")
    assert r.returncode == 0 and "gpt_tiny: predicted" in r.stdout, r.stderr
