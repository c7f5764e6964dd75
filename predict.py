#!/usr/bin/env python
"""Predict the parameters of a model (or a whole zoo) with a graph hypernetwork.

    python predict.py --model resnet18 --out resnet18.safetensors      # shipped hypernetwork
    python predict.py --model mypkg.models:MyNet --ckpt runs/x/ghn.safetensors --num-classes 100
    python predict.py --zoo data/test.jsonl.gz --out-dir out/zoo          # batch-initialize many models
    python predict.py --model resnet18 --eval fashion-mnist               # + accuracy with no training
"""
import sys

from ghn.cli.predict import cli, main  # noqa: F401  (the code lives in the package: also `ghn-predict`)

if __name__ == "__main__":
    sys.exit(cli())
