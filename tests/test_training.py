import json
import math
import os

import pytest
import torch
from models import ProtoData, ToyArchs

from ghn.hypernet import GraphHyperNetwork
from ghn.training import TrainConfig, pack_meta_batch, train

SMALL = dict(hidden=32, layers=2, rank=8, code_dim=32)


def cfg(tmp_path, name, **kw):
    base = dict(out_dir=str(tmp_path / name), steps=30, meta_batch=2, batch_size=32, lr=3e-3, warmup_steps=5,
                log_every=1, ckpt_every=1000, progress=False, ghn=SMALL, cpu=True)
    base.update(kw)
    return TrainConfig(**base)


def losses(out_dir):
    return [json.loads(line)["loss"] for line in open(os.path.join(out_dir, "log.jsonl"))]


def state(path):
    return GraphHyperNetwork.load(path).state_dict()


def test_loss_goes_down_single_process(tmp_path):
    c = cfg(tmp_path, "a", steps=100)  # the base-weight design learns the toy task slower than the legacy one
    train(c, data=ProtoData(), archs=ToyArchs())
    ls = losses(c.out_dir)
    assert len(ls) == 100
    first = json.loads(open(os.path.join(c.out_dir, "log.jsonl")).readline())
    assert first["cores"] == torch.get_num_threads()  # one process: its threads (CPU-hours in ghn.plot)
    assert sum(ls[-10:]) / 10 < 0.85 * sum(ls[:10]) / 10


def test_resume_reproduces_next_steps_exactly(tmp_path):
    straight = cfg(tmp_path, "straight", steps=12)
    train(straight, data=ProtoData(), archs=ToyArchs())
    first = cfg(tmp_path, "first", steps=12, ckpt_every=6)
    train(first, data=ProtoData(), archs=ToyArchs())
    resumed = cfg(tmp_path, "resumed", steps=12, resume=os.path.join(first.out_dir, "ckpt-0000006"))
    train(resumed, data=ProtoData(), archs=ToyArchs())
    assert losses(resumed.out_dir) == losses(straight.out_dir)[6:]
    a, b = state(os.path.join(straight.out_dir, "ghn.safetensors")), state(
        os.path.join(resumed.out_dir, "ghn.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ops = GraphHyperNetwork.load(os.path.join(straight.out_dir, "ghn.safetensors")).trained_ops
    assert {"conv", "linear"} <= ops  # recorded: what the decoder trusts the learned scale of
    assert GraphHyperNetwork.load(os.path.join(resumed.out_dir, "ghn.safetensors")).trained_ops == ops


def test_resume_from_wrong_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        train(cfg(tmp_path, "x", resume=str(tmp_path)), data=ProtoData(), archs=ToyArchs())


def test_finetune_from_checkpoint_with_other_number_of_classes(tmp_path):
    base = cfg(tmp_path, "base", steps=5)
    train(base, data=ProtoData(num_classes=4), archs=ToyArchs())
    ft = cfg(tmp_path, "ft", steps=25, init_from=os.path.join(base.out_dir, "ghn.safetensors"), ghn={})
    train(ft, data=ProtoData(num_classes=7, seed=1), archs=ToyArchs())
    ls = losses(ft.out_dir)
    assert ls[0] > 0 and all(math.isfinite(v) for v in ls)
    assert sum(ls[-5:]) / 5 < sum(ls[:5]) / 5
    assert GraphHyperNetwork.load(os.path.join(ft.out_dir, "ghn.safetensors")).config.hidden == SMALL["hidden"]


def test_init_from_takes_design_overrides_that_keep_the_tensors(tmp_path):
    base = cfg(tmp_path, "base", steps=3)
    train(base, data=ProtoData(), archs=ToyArchs())
    src = os.path.join(base.out_dir, "ghn.safetensors")
    ft = cfg(tmp_path, "ft", steps=1, lr=1e-12, init_from=src, ghn={"base_kind": "identity", "max_pred_share": 0.5})
    train(ft, data=ProtoData(), archs=ToyArchs())
    got = GraphHyperNetwork.load(os.path.join(ft.out_dir, "ghn.safetensors"))
    assert (got.config.base_kind, got.config.max_pred_share) == ("identity", 0.5)
    before = state(src)
    assert all(torch.allclose(before[k], v, atol=1e-6) for k, v in got.state_dict().items())
    with pytest.raises(ValueError, match="change the hypernetwork's tensors"):
        train(cfg(tmp_path, "bad", steps=1, init_from=src, ghn={"hidden": 16}), data=ProtoData(), archs=ToyArchs())


def test_init_from_grows_the_rank(tmp_path):
    base = cfg(tmp_path, "base", steps=2)
    train(base, data=ProtoData(), archs=ToyArchs())
    src = os.path.join(base.out_dir, "ghn.safetensors")
    grown = cfg(tmp_path, "grown", steps=3, init_from=src, ghn={"rank": 12})
    train(grown, data=ProtoData(), archs=ToyArchs())
    assert all(math.isfinite(v) for v in losses(grown.out_dir))
    got = GraphHyperNetwork.load(os.path.join(grown.out_dir, "ghn.safetensors"))
    assert got.config.rank == 12 and got.decoder.head_a.weight.shape[0] == SMALL["code_dim"] * 12
    with pytest.raises(ValueError, match="rank can only grow"):
        train(cfg(tmp_path, "bad", steps=1, init_from=src, ghn={"rank": 4}), data=ProtoData(), archs=ToyArchs())


def test_nan_steps_are_skipped_and_counted(tmp_path):
    data = ProtoData()
    data.images[:] = float("nan")
    c = cfg(tmp_path, "nan", steps=4)
    rec = train(c, data=data, archs=ToyArchs())
    assert rec["skipped_nan"] == 4
    sd = state(os.path.join(c.out_dir, "ghn.safetensors"))
    assert all(torch.isfinite(v).all() for v in sd.values())


def test_meta_batch_budget_packs_but_never_drops():
    assert pack_meta_batch([10, 10, 10], 25) == 2
    assert pack_meta_batch([100, 1], 25) == 1  # an architecture over budget still trains, alone
    assert pack_meta_batch([1, 1], 25) == 2


def _ddp_worker(out_dir, arch_grad_norm=False):
    from accelerate import PartialState

    c = TrainConfig(out_dir=out_dir, steps=100, meta_batch=2, batch_size=32, lr=3e-3, warmup_steps=5, log_every=1,
                    ckpt_every=25, progress=False, ghn=SMALL, cpu=True,
                    arch_grad_norm=arch_grad_norm)  # mid-run checkpoints: every rank
    # writes its RNG state into the same directory before it is published
    train(c, data=ProtoData(), archs=ToyArchs())
    st = PartialState()
    with open(os.path.join(out_dir, f"world-{st.process_index}.txt"), "w") as f:
        f.write(str(st.num_processes))


@pytest.mark.slow
@pytest.mark.parametrize("agn", [False, True], ids=["mean", "arch_grad_norm"])
def test_two_process_ddp_on_cpu(tmp_path, agn):
    # a fresh interpreter: forking gloo workers from a pytest process whose torch threads already ran can hang
    import subprocess
    import sys

    out = str(tmp_path / "ddp")
    os.makedirs(out)
    here = os.path.dirname(os.path.abspath(__file__))
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from accelerate import debug_launcher\n"
            "from test_training import _ddp_worker\n"
            "if __name__ == '__main__':\n"
            "    debug_launcher(_ddp_worker, args=(%r, %r), num_processes=2)\n") % (here, out, agn)
    script = tmp_path / "launch.py"
    script.write_text(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 processes x 1 thread: default threads crawl (177 s vs 38 s)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out)).count("world-0.txt") == 1
    assert open(os.path.join(out, "world-1.txt")).read() == "2"
    ls = losses(out)
    assert len(ls) == 100
    assert sum(ls[-10:]) / 10 < 0.85 * sum(ls[:10]) / 10
    GraphHyperNetwork.load(os.path.join(out, "ghn.safetensors"))
    for step in (25, 50, 75, 100):
        ck = os.path.join(out, f"ckpt-{step:07d}")
        assert {"random_states_0.pkl", "random_states_1.pkl", "trainer_state.json"} <= set(os.listdir(ck))
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_robust_mean_caps_exploding_architectures_and_drops_nonfinite():
    from ghn.training import robust_mean

    ls = torch.tensor([2.0, 1e6, float("nan"), 3.0], requires_grad=True)
    m, capped, bad = robust_mean(ls, cap=10.0)
    assert (capped, bad) == (1, 1)
    assert m.item() == pytest.approx((2.0 + 10.0 + 3.0) / 3)
    m.backward()
    g = ls.grad
    assert g[0].item() == pytest.approx(1 / 3) and g[3].item() == pytest.approx(1 / 3)
    assert g[1].item() == pytest.approx(10.0 / 1e6 / 3)  # same direction, gradient bounded by the cap
    assert g[2].item() == 0.0
    allbad, _, nbad = robust_mean(torch.tensor([float("inf"), float("nan")]), cap=10.0)
    assert nbad == 2 and not torch.isfinite(allbad)


def test_builder_workers_give_the_same_run_as_in_process(tmp_path):
    a = cfg(tmp_path, "inproc", steps=6)
    train(a, data=ProtoData(), archs=ToyArchs())
    b = cfg(tmp_path, "workers", steps=6, workers=2)
    train(b, data=ProtoData(), archs=ToyArchs())
    assert losses(a.out_dir) == losses(b.out_dir)


def test_max_arch_params_filters_and_explains_an_empty_pool(tmp_path):
    from ghn.data import ArchDataset

    with pytest.raises(ValueError, match="no architecture .* <= 10 parameters"):
        train(cfg(tmp_path, "small", steps=1, max_arch_params=10), data=ProtoData(), archs=ArchDataset("test"))


def test_pool_size_trains_only_on_the_first_architectures(tmp_path):
    built = []

    class Recording(ToyArchs):
        def build(self, i, num_classes, in_channels, image_size):
            built.append(i)
            return super().build(i, num_classes, in_channels, image_size)

    train(cfg(tmp_path, "pool", steps=8, pool_size=2), data=ProtoData(), archs=Recording())
    assert built and set(built) <= {0, 1}


def test_arch_filter_parsing_and_empty_match(tmp_path):
    from ghn.data import ArchDataset
    from ghn.training import parse_arch_filter

    assert parse_arch_filter("family=cnn; norm=bn|gn") == {"family": {"cnn"}, "norm": {"bn", "gn"}}
    with pytest.raises(ValueError, match="key=value"):
        parse_arch_filter("cnn")
    with pytest.raises(ValueError, match="matches --arch-filter"):
        train(cfg(tmp_path, "f", steps=1, arch_filter="family=mlp"), data=ProtoData(), archs=ArchDataset("test"))


def test_standardized_logits_keep_the_prediction_and_ignore_scale():
    from ghn.training import standardize_logits

    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    z = standardize_logits(logits, 4.0)
    assert torch.equal(z.argmax(-1), logits.argmax(-1))
    assert torch.allclose(z, standardize_logits(0.1 * logits + 3.0, 4.0), atol=2e-3)  # scale/shift free
    assert torch.allclose(z.std(-1), torch.full((16,), 4.0), atol=1e-3)


def two_toy_networks(in_channels=1):
    """Two toy architectures, a batch for them, an untrained small hypernetwork and their graphs (seeded)."""
    from ghn.graph import ArchGraph

    torch.manual_seed(0)
    archs = ToyArchs()
    models = [archs.build(i, num_classes=4, in_channels=in_channels, image_size=8) for i in range(2)]
    x, y = torch.randn(8, in_channels, 8, 8), torch.randint(0, 4, (8,))
    return models, x, y, GraphHyperNetwork(**SMALL), [ArchGraph.from_module(m, x[:2]) for m in models]


def test_arch_grad_norm_gives_each_architecture_a_unit_gradient_in_its_loss_direction():
    from ghn.training import normalized_arch_grads

    models, x, y, hyper, graphs = two_toy_networks()
    preds = hyper(graphs)
    (losses_, *_), tensors, grads = normalized_arch_grads(preds, models, x * 50, y)  # a steep loss: large raw grads
    assert len(tensors) == len(grads) == sum(len({id(t) for t in p.values()}) for p in preds)
    k = len({id(t) for t in preds[0].values()})
    for part in (grads[:k], grads[k:]):  # per architecture: norm 1 / number of architectures
        assert math.isclose(float(torch.sqrt(sum(g.pow(2).sum() for g in part))), 0.5, rel_tol=1e-4)
    raw = torch.autograd.grad(
        torch.nn.functional.cross_entropy(torch.func.functional_call(models[0], preds[0], (x * 50,)), y),
        tensors[:k], retain_graph=True)
    cos = sum((a * b).sum() for a, b in zip(raw, grads[:k])) / torch.sqrt(sum(a.pow(2).sum() for a in raw)) / 0.5
    assert float(cos) > 0.9999 and float(losses_[0]) > 0


def test_arch_grad_norm_trains(tmp_path):
    c = cfg(tmp_path, "agn", steps=60, arch_grad_norm=True)
    train(c, data=ProtoData(), archs=ToyArchs())
    ls = losses(c.out_dir)
    assert sum(ls[-10:]) / 10 < 0.85 * sum(ls[:10]) / 10


def test_channels_last_gives_the_same_losses_and_gradients_up_to_rounding():
    from ghn.training import meta_batch_loss, normalized_arch_grads

    models, x, y, hyper, graphs = two_toy_networks(in_channels=3)
    a = meta_batch_loss(hyper, models, graphs, x, y).losses
    b = meta_batch_loss(hyper, models, graphs, x, y, channels_last=True).losses
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    preds = hyper(graphs)
    _, _, g1 = normalized_arch_grads(preds, models, x, y)
    _, _, g2 = normalized_arch_grads(preds, models, x, y, channels_last=True)
    assert all(u.shape == v.shape and torch.allclose(u, v, rtol=1e-4, atol=1e-6) for u, v in zip(g1, g2))


def test_arch_threads_give_the_one_thread_results_bit_for_bit_and_in_order():
    from ghn.training import normalized_arch_grads

    models, x, y, hyper, graphs = two_toy_networks(in_channels=3)
    # three networks, more than the two threads; the first model drawn twice (its two runs must not overlap)
    models, graphs = [models[0], *models], [graphs[0], *graphs]
    preds = hyper(graphs)
    preds[2] = {k: t * float("nan") if i == 0 else t for i, (k, t) in enumerate(preds[2].items())}  # non-finite
    intra = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one, t1, g1 = normalized_arch_grads(preds, models, x, y, channels_last=True)
    finally:
        torch.set_num_threads(intra)
    two, t2, g2 = normalized_arch_grads(preds, models, x, y, channels_last=True, threads=2)
    assert torch.get_num_threads() == intra  # restored
    assert not bool(torch.isfinite(one.losses[2])) and len(t1) == len(t2) < sum(len(p) for p in preds)
    assert all(a is b for a, b in zip(t1, t2))  # the same predicted tensors, in architecture order
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
    torch.testing.assert_close(one.losses, two.losses, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(one.accs, two.accs)


def test_arch_threads_never_run_one_model_twice_at_once():
    import time

    from ghn.training import normalized_arch_grads

    class Slow(torch.nn.Module):  # records how many threads are inside its forward at once (sleep releases the GIL)
        def __init__(self):
            super().__init__()
            self.fc, self.inside, self.most = torch.nn.Linear(4, 3), 0, 0

        def forward(self, x):
            self.inside += 1
            self.most = max(self.most, self.inside)
            time.sleep(0.05)
            self.inside -= 1
            return self.fc(x)

    a, b = Slow(), Slow()
    preds = [{k: t.detach().clone() for k, t in m.named_parameters()} for m in (a, a, b, a)]
    res, _, _ = normalized_arch_grads(preds, [a, a, b, a], torch.randn(8, 4), torch.randint(0, 3, (8,)), threads=2)
    assert a.most == 1 and bool(torch.isfinite(res.losses).all())


def test_a_run_with_arch_threads_is_the_one_thread_run(tmp_path):
    intra = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, k in (("one", 1), ("two", 2)):
            train(cfg(tmp_path, name, steps=4, meta_batch=3, arch_threads=k), data=ProtoData(), archs=ToyArchs())
    finally:
        torch.set_num_threads(intra)
    assert losses(tmp_path / "one") == losses(tmp_path / "two")
    cores = [[json.loads(line)["cores"] for line in open(tmp_path / n / "log.jsonl")] for n in ("one", "two")]
    assert set(cores[0]) == {1} and set(cores[1]) == {2}  # CPU-hours count the cores the threads used
    assert all(torch.equal(a, b) for a, b in zip(state(tmp_path / "one" / "ghn.safetensors").values(),
                                                 state(tmp_path / "two" / "ghn.safetensors").values()))


@pytest.mark.parametrize("bad", [dict(arch_threads=0), dict(arch_threads=2, arch_grad_norm=False),
                                 dict(arch_threads=2, mixed_precision="bf16")])
def test_arch_threads_refuses_what_it_cannot_do_in_one_line(tmp_path, bad):
    with pytest.raises(ValueError, match="--arch-threads"):
        train(cfg(tmp_path, "bad", steps=1, **bad), data=ProtoData(), archs=ToyArchs())


def test_a_run_started_with_init_from_resumes(tmp_path):
    from ghn.training import resume_config

    base = cfg(tmp_path, "base", steps=3)
    train(base, data=ProtoData(), archs=ToyArchs())
    src = os.path.join(base.out_dir, "ghn.safetensors")
    run = cfg(tmp_path, "run", steps=4, ckpt_every=2, init_from=src)
    train(run, data=ProtoData(), archs=ToyArchs())
    again = resume_config(os.path.join(run.out_dir, "ckpt-0000002"), out_dir=str(tmp_path / "again"), steps=4,
                          ghn=SMALL)
    assert again.init_from is None  # the checkpoint is the starting point now
    train(again, data=ProtoData(), archs=ToyArchs())
    assert losses(again.out_dir) == losses(run.out_dir)[2:]


def test_a_resume_may_switch_on_the_direction_cap_and_nothing_else(tmp_path):
    from ghn.training import resume_config

    run = cfg(tmp_path, "run", steps=4, ckpt_every=2)
    train(run, data=ProtoData(), archs=ToyArchs())
    ck = os.path.join(run.out_dir, "ckpt-0000002")
    with pytest.raises(ValueError, match="rank=4"):  # the hypernetwork's shape cannot change under a run
        train(resume_config(ck, out_dir=str(tmp_path / "bad"), ghn={**SMALL, "rank": 4}), data=ProtoData(),
              archs=ToyArchs())
    capped = resume_config(ck, out_dir=str(tmp_path / "capped"), steps=6, ckpt_every=2,
                           ghn={**SMALL, "max_dir_ratio": 0.05})
    train(capped, data=ProtoData(), archs=ToyArchs())
    recs = [json.loads(line) for line in open(os.path.join(capped.out_dir, "log.jsonl"))]
    assert [r["max_dir_ratio"] for r in recs] == [0.05] * 4  # the log says where the cap was on
    assert [r["loss"] for r in recs[:2]] != losses(run.out_dir)[2:]  # it binds on these small layers
    assert GraphHyperNetwork.load(os.path.join(capped.out_dir, "ghn.safetensors")).config.max_dir_ratio == 0.05
    later = resume_config(os.path.join(capped.out_dir, "ckpt-0000004"), out_dir=str(tmp_path / "later"), steps=6,
                          ghn=SMALL)
    train(later, data=ProtoData(), archs=ToyArchs())
    assert losses(later.out_dir) == losses(capped.out_dir)[2:]  # a switched run resumes exactly, cap kept


def test_settings_missing_from_an_old_run_resume_as_they_were(tmp_path):
    from ghn.training import resume_config

    ck = tmp_path / "ckpt-0000002"
    ck.mkdir()
    GraphHyperNetwork(**SMALL).save(ck / "ghn.safetensors", extra={"train_config": {"steps": 10, "lr": 0.01}})
    (ck / "trainer_state.json").write_text(json.dumps({"step": 2}))
    old = resume_config(str(ck))
    assert old.lr == 0.01 and old.arch_grad_norm is False and old.channels_last is False  # before they existed
    assert TrainConfig().arch_grad_norm and TrainConfig().channels_last  # fresh runs: the shipped recipe


def test_participation_ratio_counts_the_directions_a_batch_spans_whatever_its_scale():
    from ghn.training import participation_ratio

    torch.manual_seed(0)
    iso = torch.randn(256, 8)
    assert 7.0 < float(participation_ratio(iso)) <= 8.0
    assert math.isclose(float(participation_ratio(iso * 1e3 + 5)), float(participation_ratio(iso)), rel_tol=1e-4)
    line = torch.randn(256, 1) * torch.randn(1, 8)  # every sample on one direction
    assert float(participation_ratio(line)) < 1.001
    squashed = iso * torch.tensor([10.0] + [0.1] * 7)  # one direction dominates
    assert float(participation_ratio(squashed)) < 1.1
    assert float(participation_ratio(torch.randn(16, 4, 3, 3))) <= 15.0 + 1e-4  # [B, ...] flattened, <= B - 1


def test_feat_rank_adds_minus_log_participation_ratio_of_the_classifier_input_and_its_gradient_raises_it():
    from ghn.training import classifier_layer, meta_batch_loss

    models, x, y, hyper, graphs = two_toy_networks()
    assert all(classifier_layer(m) is [q for q in m.modules() if isinstance(q, torch.nn.Linear)][-1] for m in models)
    plain = meta_batch_loss(hyper, models, graphs, x, y)
    reg = meta_batch_loss(hyper, models, graphs, x, y, feat_rank=0.5)
    assert torch.equal(plain.losses.detach(), plain.ce) and torch.allclose(reg.ce, plain.ce)
    assert bool((plain.feat_pr >= 1).all()) and torch.allclose(reg.feat_pr, plain.feat_pr)
    assert torch.allclose(reg.losses.detach(), reg.ce - 0.5 * reg.feat_pr.log(), atol=1e-6)
    # descending the term alone (the hypernetwork's gradient) raises the participation ratio
    opt = torch.optim.SGD(hyper.parameters(), lr=0.05)
    for _ in range(10):
        opt.zero_grad()
        res = meta_batch_loss(hyper, models, graphs, x, y, feat_rank=1.0)
        (res.losses - res.ce).sum().backward()
        opt.step()
    after = meta_batch_loss(hyper, models, graphs, x, y).feat_pr
    assert float(after.mean()) > float(plain.feat_pr.mean()) * 1.05


def test_feat_rank_run_logs_cross_entropy_objective_and_feature_participation(tmp_path):
    c = cfg(tmp_path, "fr", steps=4, arch_grad_norm=True, feat_rank=0.3)
    train(c, data=ProtoData(), archs=ToyArchs())
    recs = [json.loads(line) for line in open(os.path.join(c.out_dir, "log.jsonl"))]
    assert len(recs) == 4 and all(r["feat_pr"] >= 1 and r["objective"] < r["loss"] for r in recs)
    with pytest.raises(ValueError, match="feat-rank"):
        train(cfg(tmp_path, "neg", feat_rank=-0.1), data=ProtoData(), archs=ToyArchs())
    c0 = cfg(tmp_path, "fr0", steps=2)
    train(c0, data=ProtoData(), archs=ToyArchs())
    assert all("objective" not in json.loads(line) for line in open(os.path.join(c0.out_dir, "log.jsonl")))


def test_lookahead_gradient_is_the_gradient_after_clipped_sgd_steps():
    from ghn.training import Lookahead, lookahead_grads, normalized_arch_grads

    models, x, y, hyper, graphs = two_toy_networks()
    preds = hyper(graphs)
    model, p0 = models[0], {k: t.detach() for k, t in preds[0].items()}
    xs, ys = torch.randn(2, *x.shape), torch.randint(0, 4, (2, len(y)))
    ce = lambda p, xb, yb: torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (xb,)), yb)  # noqa
    # by hand: two SGD steps (gradient norm clipped at 5), then the gradient on the last lookahead batch
    p = {k: t.clone().requires_grad_() for k, t in p0.items()}
    for xb, yb in ((x, y), (xs[0], ys[0])):
        g = torch.autograd.grad(ce(p, xb, yb), list(p.values()))
        n = float(torch.sqrt(sum(h.pow(2).sum() for h in g)))
        p = {k: (t - 0.3 * min(1.0, 5.0 / (n + 1e-6)) * h).detach().requires_grad_() for (k, t), h in zip(p.items(), g)}
    want_ce = ce(p, xs[1], ys[1])
    want = torch.autograd.grad(want_ce, list(p.values()))
    la = Lookahead(2, 0.3, xs, ys)
    theta0 = [t.clone().requires_grad_() for t in p0.values()]
    g0 = torch.autograd.grad(ce(dict(zip(p0, theta0)), x, y), theta0)
    got_ce, got = lookahead_grads(model, {id(t): [k] for k, t in zip(p0, theta0)}, theta0, g0, la)
    assert math.isclose(float(got_ce), float(want_ce.detach()), rel_tol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(got, want))
    # in the training gradient: the lookahead term changes each architecture's direction, not its unit norm
    res, _, grads = normalized_arch_grads(preds, models, x, y, lookahead=la)
    _, _, plain = normalized_arch_grads(preds, models, x, y)
    assert res.lookahead_ce.shape == (2,) and torch.isfinite(res.lookahead_ce).all()
    k = len({id(t) for t in preds[0].values()})
    assert math.isclose(float(torch.sqrt(sum(g.pow(2).sum() for g in grads[:k]))), 0.5, rel_tol=1e-4)
    assert not all(torch.allclose(a, b) for a, b in zip(grads, plain))


def test_lookahead_trains_logs_and_resumes_exactly(tmp_path):
    kw = dict(arch_grad_norm=True, lookahead_steps=1, lookahead_lr=0.1)
    straight = cfg(tmp_path, "straight", steps=6, **kw)
    train(straight, data=ProtoData(), archs=ToyArchs())
    recs = [json.loads(line) for line in open(os.path.join(straight.out_dir, "log.jsonl"))]
    assert all(math.isfinite(r["lookahead_loss"]) for r in recs)
    first = cfg(tmp_path, "first", steps=6, ckpt_every=3, **kw)
    train(first, data=ProtoData(), archs=ToyArchs())
    resumed = cfg(tmp_path, "resumed", steps=6, resume=os.path.join(first.out_dir, "ckpt-0000003"), **kw)
    train(resumed, data=ProtoData(), archs=ToyArchs())
    assert losses(resumed.out_dir) == losses(straight.out_dir)[3:]
    with pytest.raises(ValueError, match="lookahead_steps=2 .run: 1. differ"):
        train(cfg(tmp_path, "other", steps=6, resume=os.path.join(first.out_dir, "ckpt-0000003"),
                  **{**kw, "lookahead_steps": 2}), data=ProtoData(), archs=ToyArchs())


@pytest.mark.parametrize("kw", [dict(lookahead_steps=-1), dict(lookahead_steps=1, arch_grad_norm=False),
                                dict(lookahead_steps=1, arch_grad_norm=True, lookahead_lr=0.0)])
def test_bad_lookahead_settings_are_one_line_errors(tmp_path, kw):
    with pytest.raises(ValueError, match="--lookahead-steps"):
        train(cfg(tmp_path, "bad", **kw), data=ProtoData(), archs=ToyArchs())


def test_small_share_draws_each_slot_from_its_size_group_and_repeats_per_step():
    from ghn.archstream import StepArchs

    class Pool:  # records the pool positions a step asks for; builds nothing
        def __len__(self):
            return 10

        def get(self, i, device):
            return i, type("G", (), {"param_refs": lambda self: []})()

    small, large = [0, 3], [1, 2, 4, 5, 6, 7, 8, 9]
    mixed = StepArchs(Pool(), seed=0, rank=0, meta_batch=4, budget=10**9, mix=(0.5, small, large))
    drawn = [i for s in range(500) for i in mixed[s][0]]
    assert set(drawn) == set(small) | set(large)  # every position of both groups is reachable
    share = sum(i in small for i in drawn) / len(drawn)
    assert 0.45 < share < 0.55  # 2 of 10 positions, drawn half of the time
    assert mixed[7][0] == mixed[7][0]  # a pure function of the step (exact resumes)
    uniform = StepArchs(Pool(), seed=0, rank=0, meta_batch=4, budget=10**9)
    assert sum(i in small for s in range(500) for i in uniform[s][0]) / len(drawn) < 0.25


def test_split_by_size_and_small_share_errors_are_one_line(tmp_path):
    from ghn.archs.counting import count_params
    from ghn.archstream import split_by_size
    from ghn.data import ArchDataset
    from ghn.task import Task

    archs, task = ArchDataset("test"), Task.of(ProtoData())
    small, large = split_by_size(archs, None, task, 500_000)
    assert sorted(small + large) == list(range(len(archs))) and small and large
    assert all(count_params(archs[i], **task.model_kwargs()) <= 500_000 for i in small)
    assert all(count_params(archs[i], **task.model_kwargs()) > 500_000 for i in large)
    sub = [4, 9, 2]  # positions refer to the filtered pool, not to the dataset
    s2, l2 = split_by_size(archs, sub, task, 500_000)
    assert sorted(s2 + l2) == [0, 1, 2] and all((sub[p] in small) for p in s2)
    # the size filter and the size mix share one memo of counts: each architecture is counted once
    from ghn.archstream import select_archs

    counts = {}
    kept = select_archs(archs, "test", "", 2_000_000, 0, task, counts)
    assert len(counts) == len(archs) and kept == [i for i in range(len(archs)) if counts[i] <= 2_000_000]
    assert split_by_size(archs, kept, task, 500_000, counts) == split_by_size(archs, kept, task, 500_000)
    counts[kept[0]] = 10**9  # a memoised count is what decides, not a recount
    assert 0 not in split_by_size(archs, kept, task, 10**8, counts)[0]
    with pytest.raises(ValueError, match="every architecture .* <= 1000000000 parameters"):
        train(cfg(tmp_path, "all", steps=1, small_share=0.5, small_params=10**9), data=ProtoData(), archs=archs)
    for bad in (dict(small_share=1.0), dict(small_share=-0.1), dict(small_share=0.5, small_params=0)):
        with pytest.raises(ValueError, match="--small-share"):
            train(cfg(tmp_path, "bad", steps=1, **bad), data=ProtoData(), archs=archs)
