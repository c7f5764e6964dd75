"""The benchmark scripts' shared helpers (benchmarks/_results.py)."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
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


def test_ship_writes_the_metadata_and_the_decoding_settings_evaluated(tmp_path, monkeypatch):
    import json
    import math
    import sys

    from models import ProtoData, ToyArchs

    from ghn.hypernet import GraphHyperNetwork
    from ghn.training import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(out_dir=str(run), steps=2, meta_batch=2, batch_size=16, log_every=1, progress=False, cpu=True,
                      ghn=dict(hidden=32, layers=2, rank=8, code_dim=32, default_scale_under_norm=False)),
          data=ProtoData(), archs=ToyArchs())
    result = {"n": 48, "acc_pred": 0.3, "acc_default": 0.1, "args": {"ft_steps": 100}, "ft_n": 8, "ft_pred": 0.7,
              "ft_default": 0.69, "ft_no_harm": 0.875, "rank_ratio": 0.9, "top_energy": 0.1, "role_cos": 0.4,
              "command": "python benchmarks/proxy.py --name x"}
    (tmp_path / "r.json").write_text(json.dumps(result))
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("ship", None)
    import ship

    out = tmp_path / "shipped.safetensors"
    assert ship.main(["--ckpt", str(run / "ghn.safetensors"), "--result", str(tmp_path / "r.json"), "--out", str(out),
                      "--default-scale-under-norm"]) == 0
    g = GraphHyperNetwork.load(out)
    assert g.config.default_scale_under_norm  # the decoding setting the result was measured with
    assert g.extra["val"]["ft_no_harm"] == 0.875 and "archs" not in g.extra and "eval" not in g.extra
    # eval.py summaries of the same checkpoint go in the metadata, keyed by split and budget; another step's do not
    ev = {"ckpt_extra": {"step": 2}, "args": {"split": ["test"], "epochs": [], "steps": [100], "test_n": 1000},
          "summary": {"n_archs": 2, "acc_pred_mean": 0.31234, "by_size": {"<=500k": {"n": 1, "acc_pred_mean": 0.3},
                                                                          ">1M": {"n": 1, "acc_pred_mean": 0.32}}}}
    (tmp_path / "e.json").write_text(json.dumps(ev))
    assert ship.main(["--ckpt", str(run / "ghn.safetensors"), "--result", str(tmp_path / "r.json"), "--out", str(out),
                      "--eval", str(tmp_path / "e.json")]) == 0
    e = GraphHyperNetwork.load(out).extra["eval"]["test_100steps"]
    assert e["acc_pred_mean"] == 0.3123 and e["by_size"][">1M"]["acc_pred_mean"] == 0.32 and e["test_images"] == 1000
    (tmp_path / "e.json").write_text(json.dumps({**ev, "ckpt_extra": {"step": 7}}))
    with pytest.raises(SystemExit, match="step 7, not this one"):
        ship.main(["--ckpt", str(run / "ghn.safetensors"), "--result", str(tmp_path / "r.json"), "--out", str(out),
                   "--eval", str(tmp_path / "e.json")])
    # hours from the log: an hour at the logged 1 core, then an hour of records without `cores` (--cores 2 counts),
    # then an hour after the checkpoint's step 2 that does not count; a run/ckpt-STEP/ finds the run's log
    rec = {"archs_per_step": 2, "archs_per_s": 2 / 3600, "loss": 2.0, "acc": 0.1}
    recs = [{**rec, "step": 1, "cores": 1}, {**rec, "step": 2}, {**rec, "step": 3}]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for ckpt in (run / "ghn.safetensors", run / "ckpt-0000002" / "ghn.safetensors"):
        assert ship.main(["--ckpt", str(ckpt), "--result", str(tmp_path / "r.json"), "--out", str(out),
                          "--cores", "2"]) == 0
        g = GraphHyperNetwork.load(out)
        assert math.isclose(g.extra["wall_hours"], 2.0) and math.isclose(g.extra["cpu_hours"], 3.0)
        assert "conv" in g.extra["trained_ops"] and g.extra["step"] == 2
    # a run started --init-from the run's ckpt-0000002 (since rotated out: the log is enough) counts its hours too
    parent = run / "ckpt-0000002" / "ghn.safetensors"
    child = tmp_path / "child"
    train(TrainConfig(out_dir=str(child), steps=1, meta_batch=2, batch_size=16, log_every=1, progress=False,
                      cpu=True, init_from=str(parent)), data=ProtoData(), archs=ToyArchs())
    (child / "log.jsonl").write_text(json.dumps({**rec, "step": 1, "cores": 2}) + "\n")
    assert ship.main(["--ckpt", str(child / "ghn.safetensors"), "--result", str(tmp_path / "r.json"), "--out",
                      str(out), "--cores", "2"]) == 0
    g = GraphHyperNetwork.load(out)
    assert [(r["steps"], r["cpu_hours"]) for r in g.extra["lineage"]] == [(2, 3.0), (1, 2.0)]
    assert g.extra["total_steps"] == 3 and math.isclose(g.extra["cpu_hours"], 5.0)
    # a run started --init-from that shipped file counts the runs its metadata records, then its own
    grand = tmp_path / "grand"
    train(TrainConfig(out_dir=str(grand), steps=1, meta_batch=2, batch_size=16, log_every=1, progress=False,
                      cpu=True, init_from=str(out)), data=ProtoData(), archs=ToyArchs())
    (grand / "log.jsonl").write_text(json.dumps({**rec, "step": 1, "cores": 1}) + "\n")
    shipped_lineage = g.extra["lineage"]
    assert GraphHyperNetwork.load(grand / "ghn.safetensors").extra["init_lineage"] == shipped_lineage
    # the file it started from is overwritten before the grandchild ships: the lineage train.py recorded still counts
    kept = shutil.copy(out, tmp_path / "kept.safetensors")
    shutil.copy(child / "ghn.safetensors", out)
    assert ship.main(["--ckpt", str(grand / "ghn.safetensors"), "--result", str(tmp_path / "r.json"), "--out",
                      str(tmp_path / "again.safetensors"), "--cores", "2"]) == 0
    g = GraphHyperNetwork.load(tmp_path / "again.safetensors")
    assert [(r["steps"], r["cpu_hours"]) for r in g.extra["lineage"]] == [(2, 3.0), (1, 2.0), (1, 1.0)]
    assert g.extra["total_steps"] == 4 and math.isclose(g.extra["cpu_hours"], 6.0)
    train(TrainConfig(out_dir=str(grand), steps=2, meta_batch=2, batch_size=16, log_every=1, progress=False,
                      cpu=True, resume="latest"), data=ProtoData(), archs=ToyArchs())
    assert GraphHyperNetwork.load(grand / "ghn.safetensors").extra["init_lineage"] == shipped_lineage  # resumed
    # the shipped file itself shipped again under another decoding setting: its lineage, the new setting
    assert ship.main(["--ckpt", str(kept), "--result", str(tmp_path / "r.json"), "--out",
                      str(tmp_path / "re.safetensors"), "--post-norm-branch-scale", "0.5"]) == 0
    g = GraphHyperNetwork.load(tmp_path / "re.safetensors")
    assert g.config.post_norm_branch_scale == 0.5 and g.extra["total_steps"] == 3
    assert [(r["steps"], r["cpu_hours"]) for r in g.extra["lineage"]] == [(2, 3.0), (1, 2.0)]
    # a run started --init-from another run's final file (neither shipped nor a ckpt-STEP): train.py records that
    # run up to the file's step from its log, after the runs behind it; a third run counts both
    second, third = tmp_path / "second", tmp_path / "third"
    train(TrainConfig(out_dir=str(second), steps=1, meta_batch=2, batch_size=16, log_every=1, progress=False,
                      cpu=True, init_from=str(run / "ghn.safetensors")), data=ProtoData(), archs=ToyArchs())
    first = {"run": str(run), "steps": 2, "cpu_hours": 2.0, "wall_hours": 2.0}  # the record without cores: 1 core
    assert GraphHyperNetwork.load(second / "ghn.safetensors").extra["init_lineage"] == [first]
    train(TrainConfig(out_dir=str(third), steps=1, meta_batch=2, batch_size=16, log_every=1, progress=False,
                      cpu=True, init_from=str(second / "ghn.safetensors")), data=ProtoData(), archs=ToyArchs())
    behind = GraphHyperNetwork.load(third / "ghn.safetensors").extra["init_lineage"]
    assert behind[0] == first and behind[1]["run"] == str(second) and behind[1]["steps"] == 1
    assert ship.main(["--ckpt", str(third / "ghn.safetensors"), "--result", str(tmp_path / "r.json"), "--out",
                      str(tmp_path / "third.safetensors")]) == 0
    assert [r["run"] for r in GraphHyperNetwork.load(tmp_path / "third.safetensors").extra["lineage"]] == [
        str(run), str(second), str(third)]
    fourth = tmp_path / "fourth"  # from second's ckpt-0000001: second recounted from its log, the run behind kept
    train(TrainConfig(out_dir=str(fourth), steps=1, meta_batch=2, batch_size=16, log_every=1, progress=False,
                      cpu=True, init_from=str(second / "ckpt-0000001" / "ghn.safetensors")), data=ProtoData(),
          archs=ToyArchs())
    assert ship.main(["--ckpt", str(fourth / "ghn.safetensors"), "--result", str(tmp_path / "r.json"), "--out",
                      str(tmp_path / "fourth.safetensors")]) == 0
    assert [r["run"] for r in GraphHyperNetwork.load(tmp_path / "fourth.safetensors").extra["lineage"]] == [
        str(run), str(second), str(fourth)]
    (run / "log.jsonl").write_text(json.dumps(recs[2]) + "\n")  # a log that starts after the checkpoint
    with pytest.raises(SystemExit, match="no record up to the checkpoint's step 2"):
        ship.main(["--ckpt", str(run / "ghn.safetensors"), "--result", str(tmp_path / "r.json"), "--out", str(out)])


def test_proxy_resumes_a_stopped_evaluation_from_its_rows(tmp_path, monkeypatch):
    import json
    import sys

    from ghn.data import ArchDataset
    from ghn.hypernet import GraphHyperNetwork
    from ghn.task import Task

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("proxy", None)
    import proxy

    calls, stop = [], [3]

    def row(job):  # the evaluation of one architecture, stopped (like a killed process) at the third call
        k, i = job
        calls.append(i)
        if len(calls) == stop[0]:
            raise KeyboardInterrupt
        return {"index": i, "family": "cnn", "norm": "bn", "acc_pred": 0.1 * k, "acc_default": 0.1,
                "median_rank_ratio": 1.0, "median_top_energy": 0.1, "median_role_cos": 0.2}

    monkeypatch.setattr(proxy, "_setup_eval", lambda a, ckpt: proxy._CTX.update(
        a=a, task=Task(10, 1, 28), val=ArchDataset("val")))
    monkeypatch.setattr(proxy, "_arch_row", row)
    GraphHyperNetwork(hidden=16, layers=1, rank=4).save(tmp_path / "g.safetensors")
    out = tmp_path / "r.json"
    argv = ["--eval-only", "--ckpt", str(tmp_path / "g.safetensors"), "--n", "4", "--ft-n", "0", "--name", "t",
            "--out", str(out)]
    with pytest.raises(KeyboardInterrupt):
        proxy.main(argv)
    first = list(calls)
    assert not out.exists() and len(first) == 3
    stop[0] = 0
    assert proxy.main(argv) == 0
    assert calls[3:] == first[2:] + [calls[-1]] and len(calls) == 5  # only the rows the stopped run had not saved
    rows = json.loads(out.read_text())["rows"]
    assert [r["acc_pred"] for r in rows] == [0.0, 0.1, 0.2, 0.30000000000000004]
    assert not out.with_name("r.json.partial.jsonl").exists()
    calls.clear()
    with pytest.raises(KeyboardInterrupt):  # stopped again, then resumed with another setting: refused
        stop[0] = 2
        proxy.main(argv)
    with pytest.raises(SystemExit, match="other settings"):
        proxy.main(argv[:-2] + ["--test-n", "500", "--out", str(out)])


@pytest.mark.slow  # two spawned processes that each load torch and Fashion-MNIST
def test_proxy_in_two_processes_gives_the_rows_of_one(tmp_path, monkeypatch):
    import json
    import sys

    from ghn.datasets import get_dataset
    from ghn.hypernet import GraphHyperNetwork

    try:
        get_dataset("fashion-mnist", None, train=False)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); CI installs it")
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("proxy", None)
    import proxy

    torch.manual_seed(0)
    GraphHyperNetwork(hidden=16, layers=1, rank=4).save(tmp_path / "g.safetensors")
    common = ["--eval-only", "--ckpt", str(tmp_path / "g.safetensors"), "--n", "3", "--ft-n", "2", "--ft-steps",
              "1", "--ft-seeds", "2", "--test-n", "200", "--calib-batches", "1", "--threads", "1",
              "--no-default-cache", "--name", "t"]
    assert proxy.main(common + ["--out", str(tmp_path / "one.json")]) == 0
    assert proxy.main(common + ["--procs", "2", "--out", str(tmp_path / "two.json")]) == 0
    one, two = (json.loads((tmp_path / f).read_text())["rows"] for f in ("one.json", "two.json"))
    assert len(one) == 3 and [r for r in one if "ft_pred_seeds" in r] == one[:2]
    assert one == two  # the same architectures in the same order, bit for bit


def test_proxy_reuses_fine_tuning_results_only_of_the_same_checkpoint_and_settings(tmp_path, monkeypatch):
    import argparse
    import json
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("proxy", None)
    import proxy

    ckpt = tmp_path / "g.safetensors"
    args = dict(ft_steps=100, ft_seeds=2, test_n=1000, calib_batches=5, max_arch_params=500_000, ckpt=str(ckpt))
    rows = [{"index": 1, "acc_pred": 0.3, "ft_pred": 0.7, "ft_default": 0.69, "ft_pred_seeds": [0.7, 0.7]},
            {"index": 2, "acc_pred": 0.2}]
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"args": args, "ghn": {"equal_rows": "norm_fed"}, "rows": rows}))
    a = argparse.Namespace(**{**args, "ft_from": str(old), "ghn_over": {"equal_rows": "norm_fed"}})
    assert proxy._reused_ft(a, ckpt) == {1: {"ft_pred": 0.7, "ft_default": 0.69, "ft_pred_seeds": [0.7, 0.7]}}
    for change in ({"ft_steps": 50}, {"ghn_over": {}}, {"ft_seeds": 1}):
        with pytest.raises(SystemExit, match="differ"):
            proxy._reused_ft(argparse.Namespace(**{**vars(a), **change}), ckpt)
    with pytest.raises(SystemExit, match="ckpt"):
        proxy._reused_ft(a, tmp_path / "other.safetensors")
    # results that carry the checkpoint's fingerprint follow the weights, not the path
    from ghn.hypernet import GraphHyperNetwork, checkpoint_fingerprint

    GraphHyperNetwork(hidden=16, layers=1, rank=4, code_dim=16).save(ckpt)
    old.write_text(json.dumps({"args": {**args, "ckpt": "elsewhere.safetensors"}, "ghn": {"equal_rows": "norm_fed"},
                               "ghn_fingerprint": checkpoint_fingerprint(ckpt), "rows": rows}))
    assert proxy._reused_ft(a, ckpt)[1]["ft_pred"] == 0.7
    GraphHyperNetwork(hidden=16, layers=1, rank=4, code_dim=16).save(ckpt)  # other weights, same path
    with pytest.raises(SystemExit, match="ckpt"):
        proxy._reused_ft(a, ckpt)


def test_eval_speedup_probe_leaves_the_fine_tuning_run_unchanged(monkeypatch):
    import sys

    from models import ProtoData

    from ghn.evaluation import evaluate_init, finetune

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("eval", None)
    import eval as ev

    data = ProtoData(n=256)

    def net():  # BatchNorm (the probe re-estimates statistics on a copy) and dropout (global RNG)
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3),
                             nn.Linear(400, 4))

    plain, probed = net(), net()
    torch.manual_seed(1)
    n = finetune(plain, data, epochs=2, batch_size=32, lr=0.05)
    torch.manual_seed(1)
    probe = ev.StepProbe(probed, [2, 5, 9], lambda m: evaluate_init(m, data, data, calib_batches=2, batch_size=32))
    assert finetune(probe, data, epochs=2, batch_size=32, lr=0.05) == n == 16
    assert sorted(probe.curve) == [2, 5, 9]
    for a, b in zip(plain.state_dict().values(), probed.state_dict().values()):
        assert torch.equal(a, b)
    assert ev.speedup({25: 0.5, 50: 0.8, 469: 0.9}, 469, 0.8) == 469 / 50
    assert ev.speedup({25: 0.5, 469: 0.79}, 469, 0.8) == 0.0  # not reached within the epoch
    assert [ev.size_band(p) for p in (500_000, 500_001, 3_000_000)] == ["<=500k", "<=1M", ">1M"]


def test_paired_applies_the_declared_shipping_rule(tmp_path, monkeypatch, capsys):
    import json
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("paired", None)
    import paired

    def result(name, accs, fts):
        rows = [{"index": i, "acc_pred": a, "acc_default": 0.1} for i, a in enumerate(accs)]
        for r, (p, d) in zip(rows, fts):
            r.update(ft_pred=p, ft_default=d)
        (tmp_path / name).write_text(json.dumps({"rows": rows}))
        return str(tmp_path / name)

    ship = result("s.json", [0.30, 0.30, 0.30, 0.30], [(0.80, 0.80), (0.70, 0.72)])  # no-harm 1/2
    same = result("a.json", [0.31, 0.29, 0.30, 0.30], [(0.80, 0.80), (0.70, 0.72)])
    assert paired.main([same, ship, "--out", str(tmp_path / "o.json")]) == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["ships"] and out["acc_pred"]["n"] == 4 and abs(out["acc_pred"]["diff"]) < 1e-12
    assert out["no_harm"] == {"candidate": [1, 2], "shipped": [1, 2]}
    worse_signal = result("b.json", [0.25, 0.26, 0.24, 0.25], [(0.80, 0.80), (0.72, 0.72)])  # -5 +- 0.4 points
    assert paired.main([worse_signal, ship, "--out", str(tmp_path / "o.json")]) == 0
    assert not json.loads((tmp_path / "o.json").read_text())["ships"]
    more_harm = result("c.json", [0.40, 0.40, 0.40, 0.40], [(0.78, 0.80), (0.70, 0.72)])  # no-harm 0/2
    paired.main([more_harm, ship, "--out", str(tmp_path / "o.json")])
    out = json.loads((tmp_path / "o.json").read_text())
    assert not out["ships"]
    assert out["no_harm_flips"]["gained"] == [] and [r["key"] for r in out["no_harm_flips"]["lost"]] == ["0"]
    assert abs(out["no_harm_flips"]["lost"][0]["candidate_gap"] + 2.0) < 1e-9
    printed = capsys.readouterr().out
    assert "does not ship" in printed and "no-harm lost: 0 (candidate -2.0, shipped +0.0" in printed
    # eval.py rows fine-tuned at one step budget pair like proxy.py's
    ev = [{"split": "test", "index": i, "acc_pred": 0.3, "acc_default": 0.1, "ft100s_pred": p, "ft100s_default": 0.8}
          for i, p in enumerate([0.81, 0.78])]
    (tmp_path / "e.json").write_text(json.dumps({"rows": ev}))
    ev[1]["ft100s_pred"] = 0.8
    (tmp_path / "f.json").write_text(json.dumps({"rows": ev}))
    assert paired.main([str(tmp_path / "e.json"), str(tmp_path / "f.json"), "--out", str(tmp_path / "o.json")]) == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["no_harm"] == {"candidate": [1, 2], "shipped": [2, 2]} and not out["ships"]
    assert [r["key"] for r in out["no_harm_flips"]["lost"]] == ["test/1"]
    # a stopped run's rows so far (.partial.jsonl), counted against the same architectures of the other file
    part = tmp_path / "g.json.partial.jsonl"
    part.write_text(json.dumps({"settings": {}}) + "\n" + json.dumps(ev[1]) + "\n")
    assert paired.main([str(part), str(tmp_path / "e.json"), "--out", str(tmp_path / "o.json")]) == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["no_harm"] == {"candidate": [1, 1], "shipped": [0, 1]} and out["acc_pred"]["n"] == 1
    no_ft = result("d.json", [0.35, 0.35, 0.35, 0.35], [])  # a no-training design comparison: numbers, no verdict
    assert paired.main([no_ft, ship, "--out", str(tmp_path / "o.json")]) == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["ships"] is None and abs(out["acc_pred"]["diff"] - 0.05) < 1e-12
    assert "rule is not applied" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="rows"):
        paired.main([str(tmp_path / "bad.json"), ship])
    with pytest.raises(SystemExit, match="missing.json: cannot read a results file"):  # e.g. a run still going
        paired.main([str(tmp_path / "missing.json"), ship])
    # one ft_probe.py file, two of its variants; default init from its "default" rows
    probe = [{"index": 7, "variant": "default", "acc0": 0.1, "ft": 0.50},
             {"index": 7, "variant": "pred", "acc0": 0.40, "ft": 0.30},
             {"index": 7, "variant": "x=1", "acc0": 0.38, "ft": 0.55},
             {"index": 9, "variant": "default", "acc0": 0.1, "ft": 0.60},
             {"index": 9, "variant": "pred", "acc0": 0.30, "ft": 0.70},
             {"index": 9, "variant": "x=1", "acc0": 0.30, "ft": 0.69}]
    (tmp_path / "p.json").write_text(json.dumps({"rows": probe}))
    pf = str(tmp_path / "p.json")
    assert paired.main([pf, pf, "--variants", "x=1", "pred", "--out", str(tmp_path / "o.json")]) == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["no_harm"] == {"candidate": [2, 2], "shipped": [1, 2]} and abs(out["acc_pred"]["diff"] + 0.01) < 1e-12
    with pytest.raises(SystemExit, match="--variants"):
        paired.main([pf, pf])
    with pytest.raises(SystemExit, match="no rows of variant"):
        paired.main([pf, pf, "--variants", "y=2", "pred"])


def test_ft_probe_reset_suffix_puts_only_that_kind_back_to_default_init(monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("ft_probe", None)
    import ft_probe

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))

    default, m = net(), net()
    with torch.no_grad():
        for q in m.parameters():
            q.add_(1.0)  # "predicted"
    ft_probe.apply_modifier(m, default, "reset=conv")
    assert torch.equal(m[0].weight, default[0].weight) and torch.equal(m[0].bias, default[0].bias)
    assert not torch.equal(m[1].weight, default[1].weight) and not torch.equal(m[3].weight, default[3].weight)
    ft_probe.apply_modifier(m, default, "reset=norm")
    assert torch.equal(m[1].weight, default[1].weight) and not torch.equal(m[3].weight, default[3].weight)
    ft_probe.apply_modifier(m, default, "reset=head")
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), default.parameters()))
    with pytest.raises(SystemExit, match="unknown variant suffix"):
        ft_probe.apply_modifier(m, default, "reset=attention")


def test_ft_probe_step_response_is_the_loss_before_and_after_one_clipped_sgd_step(monkeypatch):
    import sys

    import torch.nn.functional as F

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("ft_probe", None)
    import ft_probe

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 10, (16,))
    before = {k: t.clone() for k, t in m.state_dict().items() if "running" not in k and "tracked" not in k}
    l0, l1 = ft_probe.step_response(m, x, y, lr=0.0)
    assert abs(l0 - float(F.cross_entropy(m.train()(x[:8]), y[:8]))) < 1e-5
    assert abs(l1 - float(F.cross_entropy(m.train()(x[8:]), y[8:]))) < 1e-5  # lr 0: no move
    assert all(torch.equal(t, m.state_dict()[k]) for k, t in before.items())  # the model's weights are untouched
    l0b, l1b = ft_probe.step_response(m, x, y, lr=0.5)
    assert abs(l0b - l0) < 1e-5 and abs(l1b - l1) > 1e-4


def test_eval_resumes_a_stopped_evaluation_from_its_partial_rows(tmp_path, monkeypatch):
    import json
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("eval", None)
    import eval as ev

    calls = []

    def fake_eval(item, stop_at=None):  # the per-architecture work, without the minutes of evaluation
        if item == stop_at:
            raise KeyboardInterrupt  # a session's end
        calls.append(item)
        return {"split": item[0], "index": item[1], "spec": {"family": "cnn", "norm": "bn"}, "params": 1000,
                "acc_pred": 0.3 + item[1] / 100, "acc_default": 0.1}

    monkeypatch.setattr(ev, "_setup", lambda a: None)
    out = tmp_path / "r.json"
    argv = ["--split", "val", "--indices", "0", "1", "2", "--epochs", "--out", str(out), "--default-cache", "none"]
    monkeypatch.setattr(ev, "_eval_arch", lambda item: fake_eval(item, stop_at=("val", 2)))
    with pytest.raises(KeyboardInterrupt):
        ev.main(argv)
    partial = tmp_path / "r.json.partial.jsonl"
    assert not out.exists() and len(partial.read_text().splitlines()) == 3  # settings + 2 finished rows
    with partial.open("a") as f:
        f.write('{"split": "val", "index": 2, "acc_')  # killed in the middle of appending a row
    monkeypatch.setattr(ev, "_eval_arch", fake_eval)
    assert ev.main(argv) == 0
    assert calls == [("val", 0), ("val", 1), ("val", 2)]  # the first two were not evaluated again
    doc = json.loads(out.read_text())
    assert [r["index"] for r in doc["rows"]] == [0, 1, 2] and abs(doc["summary"]["acc_pred_mean"] - 0.31) < 1e-9
    assert not partial.exists()
    partial.write_text(json.dumps({"settings": {"test_n": 5}}) + "\n")  # a stopped run with other settings
    with pytest.raises(SystemExit, match="other settings"):
        ev.main(argv)
    assert ev.main(argv + ["--fresh"]) == 0 and len(calls) == 6


def test_eval_takes_the_rows_of_a_second_process_that_ran_the_list_from_the_other_end(tmp_path, monkeypatch):
    import json
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("eval", None)
    import eval as ev

    calls = []

    def fake_eval(item, stop_at=None):
        if item == stop_at:
            raise KeyboardInterrupt
        calls.append(item)
        return {"split": item[0], "index": item[1], "spec": {"family": "cnn", "norm": "bn"}, "params": 1000,
                "acc_pred": 0.3 + item[1] / 100, "acc_default": 0.1}

    monkeypatch.setattr(ev, "_setup", lambda a: None)
    common = ["--split", "val", "--epochs", "--default-cache", "none"]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    monkeypatch.setattr(ev, "_eval_arch", lambda item: fake_eval(item, stop_at=("val", 1)))
    with pytest.raises(KeyboardInterrupt):  # the first process did val 0, the second (reversed list) val 3 and 2
        ev.main(common + ["--indices", "0", "1", "2", "3", "--out", str(first)])
    with pytest.raises(KeyboardInterrupt):
        ev.main(common + ["--indices", "3", "2", "1", "0", "--out", str(second)])
    assert calls == [("val", 0), ("val", 3), ("val", 2)]
    monkeypatch.setattr(ev, "_eval_arch", fake_eval)
    with (tmp_path / "b.json.partial.jsonl").open("a") as f:
        f.write('{"split": "val", "index": 1, "acc_')  # the second process killed mid-append: that row is not taken
    assert ev.main(common + ["--indices", "0", "1", "2", "3", "--out", str(first),
                             "--rows-from", str(tmp_path / "b.json.partial.jsonl")]) == 0
    assert calls[3:] == [("val", 1)]  # only the architecture neither process finished
    assert [r["index"] for r in json.loads(first.read_text())["rows"]] == [0, 1, 2, 3]
    other = tmp_path / "c.partial.jsonl"
    other.write_text(json.dumps({"settings": {"test_n": 5}}) + "\n")
    with pytest.raises(SystemExit, match="other settings"):
        ev.main(common + ["--indices", "0", "--out", str(tmp_path / "d.json"), "--rows-from", str(other)])


def test_ft_probe_resumes_a_stopped_probe_from_its_partial_rows(tmp_path, monkeypatch):
    import json
    import sys

    import ghn.datasets
    import ghn.evaluation

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("ft_probe", None)
    import ft_probe

    real = ghn.datasets.get_dataset

    def data(name, root=None, train=True):  # tiny synthetic images instead of Fashion-MNIST (the loop is tested)
        return real("synthetic", n=64, in_channels=1, image_size=28, train=train)

    runs = []

    lrs = []

    def fake_finetune(m, *args, stop_at=None, **kw):  # the minutes of fine-tuning, replaced
        runs.append(len(runs))
        lrs.append(kw["lr"])
        if len(runs) == stop_at:
            raise KeyboardInterrupt  # a session's end

    monkeypatch.setattr(ghn.datasets, "get_dataset", data)
    monkeypatch.setattr(ft_probe, "ROOT", tmp_path)  # its default-init cache: never the repository's
    monkeypatch.setattr(ghn.evaluation, "finetune", lambda *a, **kw: fake_finetune(*a, stop_at=3, **kw))
    out = tmp_path / "p.json"
    argv = ["--indices", "107", "172", "--variants", "default", "pred", "--test-n", "16", "--threads", "1",
            "--out", str(out)]
    with pytest.raises(KeyboardInterrupt):
        ft_probe.main(argv)
    partial = tmp_path / "p.json.partial.jsonl"
    rows = [json.loads(x) for x in partial.read_text().splitlines()]
    assert not out.exists() and [(r["index"], r["variant"]) for r in rows[1:]] == [(107, "default"), (107, "pred")]
    assert rows[0]["settings"]["ghn_fingerprint"]  # rows are reused only with the same hypernetwork
    monkeypatch.setattr(ghn.evaluation, "finetune", fake_finetune)
    runs.clear()
    assert ft_probe.main(argv) == 0
    assert len(runs) == 2  # only the second architecture's two variants ran again
    doc = json.loads(out.read_text())
    assert [(r["index"], r["variant"]) for r in doc["rows"]] == [(107, "default"), (107, "pred"), (172, "default"),
                                                                  (172, "pred")]
    assert doc["rows"][:2] == rows[1:] and not partial.exists()
    assert doc["summary"]["default"]["n"] == 2 and doc["summary"]["default"]["ft_gap"] == 0.0
    assert doc["summary"]["pred"]["holds"] == sum(  # fine-tuning replaced: ft is the no-training top-1
        r["acc0"] >= d["acc0"] - 0.005 for r, d in zip(doc["rows"][1::2], doc["rows"][::2]))
    for r in doc["rows"]:  # fine-tuning replaced: the features it ends with are those it started from
        assert r["ft_erank"] == pytest.approx(r["feat_erank"], rel=1e-4)
    pred_rows = doc["rows"][1::2]
    assert doc["summary"]["pred"]["ft_erank"] == pytest.approx(sum(r["ft_erank"] for r in pred_rows) / 2)
    n_runs, out0 = len(runs), tmp_path / "screen.json"
    assert ft_probe.main(argv + ["--steps", "0", "--out", str(out0)]) == 0  # a screen: no fine-tuning at all
    doc0 = json.loads(out0.read_text())
    assert len(runs) == n_runs and all("ft" not in r for r in doc0["rows"]) and "ft" not in doc0["summary"]["pred"]
    assert [r["acc0"] for r in doc0["rows"]] == [r["acc0"] for r in doc["rows"]]
    assert set(lrs) == {0.05}
    out2 = tmp_path / "lr.json"
    assert ft_probe.main(argv + ["--lr", "0.02", "--indices", "107", "--out", str(out2)]) == 0
    assert lrs[-2:] == [0.02, 0.02] and json.loads(out2.read_text())["args"]["lr"] == 0.02
    partial.write_text(json.dumps({"settings": {"steps": 5}}) + "\n")  # a stopped probe with other settings
    with pytest.raises(SystemExit, match="other settings"):
        ft_probe.main(argv)


def test_eval_refuses_a_missing_checkpoint_in_one_line(tmp_path, monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("eval", None)
    import eval as ev

    with pytest.raises(SystemExit, match="no hypernetwork checkpoint"):
        ev.main(["--ckpt", str(tmp_path / "nope.safetensors"), "--split", "val", "--indices", "0", "--epochs",
                 "--out", str(tmp_path / "r.json")])


def test_conv_mix_records_each_distinct_conv_call_and_names_its_kind(monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("conv_mix", None)
    import conv_mix

    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 5, padding=4, dilation=2, groups=4),
                        nn.Conv2d(4, 4, 5, stride=2, padding=4, dilation=2, groups=4), nn.Conv2d(4, 8, 1))
    rec = conv_mix._Record()
    with torch.no_grad(), rec:
        net(torch.randn(2, 1, 8, 8))
        net(torch.randn(2, 1, 8, 8))  # the same calls again: counted, not new entries
    kinds = {conv_mix.kind(w, s, d, g): n for (_, w, s, _, d, g), n in rec.calls.items()}
    assert kinds == {"dense3x3": 2, "depthwise5x5 dil2": 2, "depthwise5x5 dil2 stride2": 2, "dense1x1": 2}
    assert conv_mix.time_call((2, 4, 8, 8), (4, 1, 5, 5), (1, 1), (4, 4), (2, 2), 4, repeat=1) > 0


def test_orders_reads_no_harm_on_the_mean_of_data_orders(tmp_path, monkeypatch):
    import json
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("orders", None)
    import orders

    spec = {"family": "cnn", "norm": "bn"}
    seed0 = [{"split": "test", "index": 1, "spec": spec, "ft100s_pred": 0.80, "ft100s_default": 0.79},
             {"split": "test", "index": 2, "spec": spec, "ft100s_pred": 0.70, "ft100s_default": 0.74},
             {"split": "test", "index": 3, "spec": spec, "ft100s_pred": 0.60, "ft100s_default": 0.50}]
    (tmp_path / "a.json").write_text(json.dumps({"rows": seed0}))
    lines = [json.dumps({"settings": {}}),  # a stopped run: settings line, rows, a torn last row
             json.dumps({**seed0[0], "ft100s_pred": 0.75}), json.dumps({**seed0[1], "ft100s_pred": 0.80}), '{"split"']
    (tmp_path / "b.partial.jsonl").write_text("\n".join(lines))
    out = tmp_path / "o.json"
    assert orders.main([str(tmp_path / "a.json"), str(tmp_path / "b.partial.jsonl"), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["n"] == 2  # index 3 is in one order only
    assert doc["holds_per_order"] == [1, 1]  # index 1: +1 / -4 points; index 2: -4 / +6
    assert doc["holds_on_mean"] == 1 and [m["index"] for m in doc["misses_on_mean"]] == [1]  # means -1.5 / +1.0
    with pytest.raises(SystemExit, match="at least two"):
        orders.main([str(tmp_path / "a.json")])


def test_ghn_pass_times_the_shipped_hypernetwork(tmp_path, monkeypatch):
    import json
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("ghn_pass", None)
    import ghn_pass

    out = tmp_path / "g.json"
    assert ghn_pass.main(["--n", "2", "--repeat", "1", "--meta-batch", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["seconds"] > 0
    preds = tmp_path / "p.pt"
    ghn_pass.main(["--n", "2", "--repeat", "1", "--save-preds", str(preds)])
    saved = torch.load(preds)
    assert len(saved) == 2 and all(t.dim() >= 1 for p in saved for t in p.values())


def test_ft_probe_reuses_default_init_rows_across_probes(tmp_path, monkeypatch):
    """Default init's rows do not depend on the hypernetwork: a second probe takes them from the cache."""
    import sys

    import ghn.datasets

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("ft_probe", None)
    import ft_probe

    real = ghn.datasets.get_dataset  # synthetic images of Fashion-MNIST's shape: no data needed
    monkeypatch.setattr(ghn.datasets, "get_dataset", lambda name, root=None, train=True: real(
        "synthetic", None, train, n=600 if train else 200, in_channels=1, image_size=28))
    monkeypatch.setattr(ft_probe, "ROOT", tmp_path)  # the cache file lives under ROOT
    args = ["--indices", "107", "--variants", "default", "--steps", "2", "--test-n", "100", "--threads", "1"]
    assert ft_probe.main(args + ["--out", str(tmp_path / "a.json")]) == 0
    monkeypatch.setattr(ft_probe, "step_response", lambda *a, **k: pytest.fail("default init measured again"))
    assert ft_probe.main(args + ["--out", str(tmp_path / "b.json")]) == 0
    rows = [json.loads((tmp_path / f).read_text())["rows"] for f in ("a.json", "b.json")]
    assert rows[0] == rows[1] and rows[0][0]["variant"] == "default" and "ft" in rows[0][0]
    with pytest.raises(pytest.fail.Exception):  # with --fresh nothing is reused
        ft_probe.main(args + ["--out", str(tmp_path / "c.json"), "--fresh"])
    monkeypatch.setattr(ghn.datasets, "get_dataset", lambda name, root=None, train=True: real(
        "synthetic", None, train, n=600 if train else 200, in_channels=1, image_size=28, seed=1))
    with pytest.raises(pytest.fail.Exception):  # other images: another dataset's rows are never reused
        ft_probe.main(args + ["--out", str(tmp_path / "d.json")])


def test_decide_rule_phase7r64b_allows_one_flip_only_when_fine_tuning_holds_on_average(monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("decide", None)
    import decide

    def rows(fts):
        return {(i,): {"acc_pred": 0.4, "ft_pred": p, "ft_default": d} for i, (p, d) in enumerate(fts)}

    ship = rows([(0.800, 0.800), (0.700, 0.702), (0.600, 0.610), (0.500, 0.500)])  # 3 of 4 within half a point
    # one lost (arch 1), fine-tuning higher on average: only the new rule lets it pass
    one_lost = rows([(0.830, 0.800), (0.690, 0.702), (0.604, 0.610), (0.510, 0.500)])
    for rule, holds in (("phase4", False), ("phase7r64b", True)):
        r = decide.judge(1, one_lost, ship, rule)
        assert r["no_harm"] == [2, 4] and r["shipped_no_harm"] == [3, 4] and r["holds"] is holds
    # one lost and lower on every architecture: the mean fell by more than its SE
    one_lost_lower = rows([(0.799, 0.800), (0.690, 0.702), (0.598, 0.610), (0.497, 0.500)])
    assert decide.judge(1, one_lost_lower, ship, "phase7r64b")["holds"] is False
    # two lost, however much better the rest
    two_lost = rows([(0.790, 0.800), (0.690, 0.702), (0.604, 0.610), (0.700, 0.500)])
    r = decide.judge(1, two_lost, ship, "phase7r64b")
    assert r["no_harm"] == [1, 4] and r["ft_pred"]["diff"] > 0 and r["holds"] is False
    # criterion 2 (the post-norm ViTs) keeps the strict count
    assert decide.judge(2, one_lost, ship, "phase7r64b")["holds"] is False


def test_decide_runs_the_criteria_cheapest_first_and_stops_at_a_failure(tmp_path, monkeypatch, capsys):
    import json
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("decide", None)
    import decide

    (tmp_path / "proxy").mkdir()
    monkeypatch.setattr(decide, "RESULTS", tmp_path)

    def write(path, accs, fts=(), variant=None, command=None):
        rows = [{"index": i, "acc_pred": a, "acc_default": 0.1} for i, a in enumerate(accs)]
        for r, (p, d) in zip(rows, fts):
            r.update(ft_pred=p, ft_default=d)
        if variant:  # an ft_probe.py file: default rows and the variant's rows
            rows = ([{"index": r["index"], "variant": "default", "ft": r.get("ft_default"), "acc0": 0.1} for r in rows]
                    + [{"index": r["index"], "variant": variant, "ft": r.get("ft_pred"), "acc0": r["acc_pred"]}
                       for r in rows])
        path.write_text(json.dumps({"rows": rows, **({"command": command} if command else {})}))
        return str(path)

    ship = {"--shipped-proxy": write(tmp_path / "sp.json", [0.4] * 4, [(0.8, 0.8), (0.7, 0.72)]),
            "--shipped-probe": write(tmp_path / "sf.json", [0.3] * 2, [(0.6, 0.5), (0.4, 0.5)], "pred"),
            "--shipped-val32big": write(tmp_path / "sb.json", [0.3] * 3), "--shipped-probe-variant": "pred"}
    ckpt = tmp_path / "c.safetensors"
    ckpt.write_bytes(b"x")
    args = ["--ckpt", str(ckpt), "--name", "c", "--decode", "max_dir_ratio_attn=0.5", *sum(ship.items(), ())]
    a = decide.argparse.Namespace(ckpt=str(ckpt), name="c", decode="max_dir_ratio_attn=0.5", procs=2)
    cmds = {Path(path).name: " ".join(cmd) for _, path, cmd in decide.plan(a)}  # as a script records its command
    write(tmp_path / "ft_probe_c_postnorm.json", [0.3] * 2, [(0.6, 0.5), (0.45, 0.5)], "max_dir_ratio_attn=0.5",
          cmds["ft_probe_c_postnorm.json"])
    calls = []

    def run(cmd, env):  # the evaluation: a lower no-training mean on the 32 larger architectures
        calls.append(cmd)
        write(Path(cmd[cmd.index("--out") + 1]), [0.29, 0.28, 0.3], command=" ".join(cmd))

    monkeypatch.setattr(decide, "run", run)
    assert decide.main(args) == 0
    (cmd,) = calls
    assert "eval.py" in cmd[1] and cmd[cmd.index("--max-dir-ratio-attn") + 1] == "0.5"
    out = json.loads((tmp_path / "decision_c.json").read_text())
    assert out["criteria"]["2"]["holds"] and not out["criteria"]["4"]["holds"] and "1" not in out["criteria"]
    assert not out["ships"] and "does not ship" in capsys.readouterr().out
    # every result present and better: nothing runs, all four hold
    write(tmp_path / "eval_val32big_c_notrain.json", [0.35, 0.31, 0.3], command=cmds["eval_val32big_c_notrain.json"])
    write(tmp_path / "proxy" / "c.json", [0.41, 0.40, 0.42, 0.40], [(0.81, 0.8), (0.71, 0.72)],
          command=cmds["c.json"].replace("--procs 2", "--procs 1"))  # the worker count does not change the numbers
    calls.clear()
    assert decide.main(args) == 0 and calls == []
    out = json.loads((tmp_path / "decision_c.json").read_text())
    assert out["ships"] and sorted(out["criteria"]) == ["1", "2", "3", "4"]
    with pytest.raises(SystemExit, match="--decode 'no_such_field=1'"):
        decide.main(args[:2] + ["--name", "c", "--decode", "no_such_field=1"])
    # the same name for another decoding: the files of the first are not silently reused
    with pytest.raises(SystemExit, match="was made by another command"):
        decide.main([*args[:4], "--decode", "max_dir_ratio_attn=0.4", *args[6:]])
