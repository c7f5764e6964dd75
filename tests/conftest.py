"""Shared fixtures. The tests directory is on ``sys.path`` (pytest's rootdir conftest), so ``models`` (the small
plain-torch models of tests/models.py) is importable, also as ``models:Class`` names in CLI calls."""
from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import dataclass

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def _run(entry, argv) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["prog", *map(str, argv)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = entry()
            except SystemExit as e:  # argparse errors
                code = e.code if isinstance(e.code, int) else 2
    finally:
        sys.argv = old
    return CliResult(int(code or 0), out.getvalue(), err.getvalue())


@pytest.fixture
def predict_cli():
    """Run ``predict.py`` in this process: ``predict_cli(*args) -> CliResult`` (one line per error, no traceback)."""
    from ghn.cli.predict import cli

    return lambda *argv: _run(cli, argv)


@pytest.fixture
def train_cli():
    """Run ``train.py`` in this process: ``train_cli(*args) -> CliResult``."""
    from ghn.cli.train import cli

    return lambda *argv: _run(lambda: cli(sys.argv[1:]), argv)


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """An untrained small hypernetwork checkpoint for a 4-class 1x12x12 task."""
    from ghn.hypernet import GraphHyperNetwork

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "ghn.safetensors"
    GraphHyperNetwork(hidden=32, layers=2, rank=8, code_dim=32).save(
        path, extra={"dataset": "synthetic", "num_classes": 4, "in_channels": 1, "image_size": 12})
    return path
