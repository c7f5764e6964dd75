import json
import os

import pytest
import torch
from models import TinyCNN
from safetensors.torch import load_file

from ghn.hypernet import GraphHyperNetwork
from ghn.task import Task
from ghn.zoo import ZooEntry, get_model, initialize_zoo, read_zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ckpt(small_ckpt):
    return small_ckpt


@pytest.fixture
def run(predict_cli):
    return predict_cli


def test_predict_cli_writes_loadable_weights(run, ckpt, tmp_path):
    out = tmp_path / "w.safetensors"
    r = run("--model", "models:TinyCNN", "--ckpt", str(ckpt), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "predicted" in r.stdout and "4 classes" in r.stdout  # task defaults come from the checkpoint
    weights = load_file(str(out))
    model = TinyCNN(num_classes=4, in_channels=1)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert unexpected == [] and all("running" in k or "num_batches" in k for k in missing)
    ref = GraphHyperNetwork.load(ckpt).eval().predict_params(model, torch.zeros(2, 1, 12, 12))
    torch.testing.assert_close(weights["fc.weight"], ref["fc.weight"].detach())


def test_predict_cli_builtin_name_and_errors(run, ckpt, tmp_path):
    r = run("--model", "resnet18", "--ckpt", str(ckpt), "--num-classes", "3", "--image-size", "16")
    assert r.returncode == 0, r.stderr
    assert "resnet18: predicted 62 parameter tensors" in r.stdout
    r = run("--model", "no_such_net", "--ckpt", str(ckpt))
    assert r.returncode != 0 and "unknown model 'no_such_net'" in r.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    r = run("--model", "resnet18", "--ckpt", str(bad))
    assert r.returncode != 0 and "CheckpointError" in r.stderr


def test_zoo_cli_batches_many_models(run, ckpt, tmp_path):
    zoo = tmp_path / "zoo.txt"
    zoo.write_text("models:TinyCNN\ndensenet_tiny  # a comment\nnot_a_model\n")
    out = tmp_path / "out"
    r = run("--zoo", str(zoo), "--ckpt", str(ckpt), "--out-dir", str(out), "--batch-size", "2", "--inspect")
    assert r.returncode == 1 and "1 of 3 zoo entries failed" in r.stderr  # the others are still written
    rows = [ln.split()[0] for ln in r.stdout.splitlines() if ln.startswith(("models_TinyCNN", "densenet_tiny"))]
    assert sorted(rows) == ["densenet_tiny", "models_TinyCNN"] and "median over 2 models" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"models_TinyCNN", "densenet_tiny"}
    assert "not_a_model" in summary["failed"] and "unknown model" in summary["failed"]["not_a_model"]
    assert (out / "densenet_tiny.safetensors").is_file()


def test_zoo_batched_equals_single(ckpt):
    ghn = GraphHyperNetwork.load(ckpt)
    specs = read_zoo(os.path.join(ROOT, "data", "test.jsonl.gz"))[:3]
    entries = [ZooEntry(f"m{i}", e.source) for i, e in enumerate(specs)]
    batched, single = {}, {}
    sb = initialize_zoo(entries, ghn, batch_size=3, task=Task(4, 1, 12), progress=False,
                        on_model=lambda name, m, _: batched.__setitem__(name, m))
    ss = initialize_zoo(entries, ghn, batch_size=1, task=Task(4, 1, 12), progress=False,
                        on_model=lambda name, m, _: single.__setitem__(name, m))
    assert sb.failed == {} and ss.failed == {} and set(batched) == set(single) == {"m0", "m1", "m2"}
    for name in batched:
        a, b = batched[name].state_dict(), single[name].state_dict()
        assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # float summation order only (values ~1)


def test_get_model_spec_json_and_missing_file(tmp_path):
    spec = read_zoo(os.path.join(ROOT, "data", "test.jsonl.gz"))[0].source
    p = tmp_path / "arch.json"
    p.write_text(json.dumps(spec))
    m = get_model(str(p), num_classes=5, in_channels=1, image_size=12)
    assert m(torch.randn(2, 1, 12, 12)).shape == (2, 5)
    with pytest.raises(FileNotFoundError):
        get_model(str(tmp_path / "nope.json"))


def test_predict_cli_inspect_reports_spectrum(run, ckpt):
    r = run("--model", "models:TinyCNN", "--ckpt", str(ckpt), "--inspect")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("models:TinyCNN:") and " | " in ln)
    assert "effective rank / default" in line and "top-sigma energy" in line and "degenerate:" in line


def test_predict_cli_max_dir_ratio_decodes_like_with_config(run, ckpt, tmp_path):
    out = tmp_path / "w.safetensors"
    r = run("--model", "models:TinyCNN", "--ckpt", str(ckpt), "--out", str(out), "--max-dir-ratio", "0.01")
    assert r.returncode == 0, r.stderr
    model = TinyCNN(num_classes=4, in_channels=1)
    g = GraphHyperNetwork.load(ckpt).eval()
    capped = g.with_config(max_dir_ratio=0.01).predict_params(model, torch.zeros(2, 1, 12, 12))
    plain = g.predict_params(model, torch.zeros(2, 1, 12, 12))
    weights = load_file(str(out))
    torch.testing.assert_close(weights["fc.weight"], capped["fc.weight"].detach())
    assert not torch.allclose(weights["blocks.0.0.weight"], plain["blocks.0.0.weight"].detach())
    r = run("--model", "models:TinyCNN", "--ckpt", str(ckpt), "--max-dir-ratio", "-1")
    assert r.returncode != 0 and "max_dir_ratio must be >= 0" in r.stderr
    # a checkpoint with a looser cap for some models: --max-dir-ratio is one cap for every model
    g.with_config(max_dir_ratio=0.25, max_dir_ratio_loose=4.0).save(tmp_path / "loose.safetensors")
    r = run("--model", "models:TinyCNN", "--ckpt", str(tmp_path / "loose.safetensors"), "--out", str(out),
            "--max-dir-ratio", "0.01")
    assert r.returncode == 0, r.stderr
    torch.testing.assert_close(load_file(str(out))["fc.weight"], capped["fc.weight"].detach())
