"""Runs N training steps of the throughput config in whatever ``ghn`` is first on ``sys.path`` (a git worktree of
another revision, or the working tree) and prints one JSON line: per-step losses and archs/s. Uses only the API
that every revision has (``TrainConfig``, ``train``, ``log.jsonl``). Launched by ``train_throughput.py --compare``,
under ``torch.distributed.run`` for multi-process layouts."""
import json
import os
import statistics
import sys
import tempfile

args = json.loads(sys.argv[1])
from ghn.training import TrainConfig, train  # noqa: E402

rank = int(os.environ.get("RANK", "0"))
with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "run")
    cfg = TrainConfig(dataset="fashion-mnist", archs=args["archs"], out_dir=out, steps=args["steps"],
                      meta_batch=args["meta_batch"], batch_size=args["batch_size"], lr=1e-3, warmup_steps=5,
                      max_arch_params=args["max_arch_params"], log_every=1, ckpt_every=10 ** 9, progress=False,
                      cpu=True, seed=0, ghn=args["ghn"], **args.get("extra", {}))
    train(cfg)
    if rank == 0:
        recs = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
        tail = recs[args["warmup"]:]
        print("RESULT " + json.dumps({"losses": [r["loss"] for r in recs],
                                      "archs_per_s": statistics.mean(r["archs_per_s"] for r in tail)}), flush=True)
