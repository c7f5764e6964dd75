"""The Task value: validation, defaults from a hypernetwork's checkpoint, and what models are built for."""
import pytest
import torch
from models import ProtoData

from ghn.hypernet import GraphHyperNetwork
from ghn.task import Task


def test_task_validates_and_builds_inputs():
    t = Task(7, 1, 12, "x")
    assert t.example_input(3).shape == (3, 1, 12, 12)
    assert t.model_kwargs() == {"num_classes": 7, "in_channels": 1, "image_size": 12}
    assert t.with_overrides(num_classes=None, image_size=16) == Task(7, 1, 16, "x")
    for bad in ({"num_classes": 0}, {"image_size": -1}, {"in_channels": True}):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            Task(**bad)


def test_hypernetwork_declares_its_task(tmp_path):
    assert GraphHyperNetwork(hidden=8, layers=1, rank=2, code_dim=8).task == Task()
    data = ProtoData(num_classes=4)
    t = Task.of(data)
    assert (t.num_classes, t.in_channels) == (4, int(data.images.shape[1]))
    g = GraphHyperNetwork(hidden=8, layers=1, rank=2, code_dim=8)
    g.save(tmp_path / "g.safetensors", extra={**t.to_dict(), "step": 3})
    assert GraphHyperNetwork.load(tmp_path / "g.safetensors").task == t
    assert torch.is_tensor(t.example_input())
