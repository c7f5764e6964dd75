"""Command-line entry points: ``ghn-predict`` (predict.py) and ``ghn-train`` (train.py)."""
