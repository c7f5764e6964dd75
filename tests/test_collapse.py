"""Collapse regression: a briefly trained hypernetwork must keep full-rank, layer-specific predictions.

The shipped hypernetwork of c7d4c10 emitted nearly rank-1 matrices, identical across layers of a role, and training
was what drove it there. This trains the default design for a few dozen steps on a small real task (Fashion-MNIST
images, tiny CNNs and a ViT) and inspects what it predicts for a deeper unseen CNN.
"""
import pytest
import torch
from models import TinyCNN, ToyArchs

from ghn.datasets import get_dataset
from ghn.hypernet import GraphHyperNetwork
from ghn.inspect import MAX_ROLE_COS, MIN_RANK_RATIO, inspect_model
from ghn.training import TrainConfig, train


@pytest.fixture(scope="module")
def fmnist():
    try:
        data = get_dataset("fashion-mnist", train=True)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); CI installs it")
    data.images, data.labels = data.images[:2048], data.labels[:2048]
    return data


def _train_and_inspect(tmp_path, data, **ghn):
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), steps=40, meta_batch=2, batch_size=32, lr=3e-3, warmup_steps=5,
                      log_every=10, ckpt_every=1000, progress=False, cpu=True,
                      ghn=dict(hidden=32, layers=2, rank=8, code_dim=32, **ghn))
    train(cfg, data=data, archs=ToyArchs())
    hyper = GraphHyperNetwork.load(tmp_path / "run" / "ghn.safetensors")
    unseen = TinyCNN(num_classes=10, in_channels=1, width=24, depth=4)  # 4 blocks: repeated same-role layers
    ins = inspect_model(unseen, hyper, torch.zeros(2, 1, 28, 28))
    return ins, max(t.role_cos for t in ins.tensors if t.role_cos is not None)


def test_trained_hypernetwork_keeps_rank_and_distinct_layers(tmp_path, fmnist):
    ins, worst_cos = _train_and_inspect(tmp_path, fmnist)
    assert ins.summary()["median_rank_ratio"] >= 2 * MIN_RANK_RATIO, ins
    assert worst_cos < MAX_ROLE_COS, ins  # no two layers of a role got the same matrix


def test_the_setup_does_collapse_the_legacy_design(tmp_path, fmnist):
    """The same 40 steps collapse the original decoder: the test above would catch a regression."""
    ins, worst_cos = _train_and_inspect(tmp_path, fmnist, base=False, pos_features=False, max_pred_share=1.0,
                                        orth=False, noise_share=0.0)
    assert ins.summary()["median_rank_ratio"] < MIN_RANK_RATIO and worst_cos > MAX_ROLE_COS, ins
