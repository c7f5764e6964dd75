#!/usr/bin/env python
"""Predict the parameters of a model (or a whole zoo) with a graph hypernetwork: ``python predict.py --help``.

The code is ``ghn/cli/predict.py`` (also the ``ghn-predict`` command).
"""
import sys

from ghn.cli.predict import cli, main  # noqa: F401  (the code lives in the package: also `ghn-predict`)

if __name__ == "__main__":
    sys.exit(cli())
