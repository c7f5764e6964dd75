#!/usr/bin/env python
"""Train or fine-tune a graph hypernetwork: ``python train.py --help``.

The code is ``ghn/cli/train.py`` (also the ``ghn-train`` command).
"""
import sys

from ghn.cli.train import cli, main, parse_args  # noqa: F401  (the code lives in the package: also `ghn-train`)

if __name__ == "__main__":
    sys.exit(cli())
