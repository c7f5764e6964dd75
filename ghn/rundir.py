"""A training run's directory: one writer at a time, complete checkpoints only, a log without repeated steps.

    out_dir/
      .lock                 held (flock) by the training process writing here; holds its pid
      log.jsonl             one JSON record per logged step
      ckpt-0001000/         complete checkpoints: written as ckpt-0001000.tmp/, renamed when complete
      ghn.safetensors       the latest hypernetwork
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import List, Optional

CKPT_GLOB = "ckpt-[0-9][0-9][0-9][0-9][0-9][0-9][0-9]"


class RunDirError(RuntimeError):
    """The run directory is in use by another training, or already holds a run that was not asked to resume."""


class RunLock:
    """An exclusive, process-lifetime lock on a run directory (``fcntl.flock``: released when the process dies)."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / ".lock"
        self._f = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise RunDirError(f"{self.path.parent} is in use by another training (pid {pid}); "
                              "wait for it or choose another --out-dir") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._f = f
        return self

    def release(self) -> None:
        if self._f is not None:
            self._f.close()  # closing the descriptor releases the flock
            self._f = None


def is_checkpoint(path: Path) -> bool:
    return (path / "trainer_state.json").is_file() and (path / "ghn.safetensors").is_file()


def latest_checkpoint(out_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint directory of a run (None if there is none)."""
    ckpts = [p for p in sorted(Path(out_dir).glob(CKPT_GLOB)) if is_checkpoint(p)]
    return ckpts[-1] if ckpts else None


def holds_a_run(out_dir: Path) -> bool:
    out_dir = Path(out_dir)
    return (out_dir / "log.jsonl").is_file() or any(out_dir.glob(CKPT_GLOB))


def remove_partial(out_dir: Path) -> None:
    """Delete what a killed writer left half-done (``*.tmp`` files and checkpoint directories)."""
    for p in Path(out_dir).glob("*.tmp"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def truncate_log(log_path: Path, step: int) -> None:
    """Keep only the records up to ``step`` (a resume repeats the later ones); drop a torn last line."""
    if not log_path.is_file():
        return
    keep = []
    for line in log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if int(rec.get("step", 0)) <= step:
            keep.append(line)
    tmp = log_path.with_name(log_path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(log_path)


def publish(tmp_dir: Path, final: Path) -> None:
    """Rename a fully written checkpoint directory into place (replacing an older one of the same step)."""
    if final.exists():
        shutil.rmtree(final)
    tmp_dir.replace(final)


def prune(out_dir: Path, keep: int) -> List[Path]:
    """Delete all but the newest ``keep`` complete checkpoints (``keep <= 0``: keep all); returns the deleted ones."""
    if keep <= 0:
        return []
    ckpts = [p for p in sorted(Path(out_dir).glob(CKPT_GLOB)) if is_checkpoint(p)]
    for p in ckpts[:-keep]:
        shutil.rmtree(p)
    return ckpts[:-keep]


def run_log(ckpt: str | Path) -> Optional[Path]:
    """The log of the run that wrote ``ckpt``: next to it (a run's final file) or in the run dir above it
    (``run/ckpt-STEP/``); None if neither has one."""
    return next((d / "log.jsonl" for d in (Path(ckpt).parent, Path(ckpt).parent.parent)
                 if (d / "log.jsonl").is_file()), None)


def run_record(ckpt: str | Path, step: Optional[int], cores: int = 1) -> dict:
    """Steps and CPU-/wall-hours of the run that wrote ``ckpt``, from its :func:`run_log` up to ``step``: the
    logged archs/s of every interval times its cores (``cores`` for records that do not log theirs)."""
    from ghn.plot import cpu_hours, read_log

    log = run_log(ckpt)
    if log is None:
        raise RunDirError(f"no log.jsonl next to {ckpt} or in its run dir: the training log gives the CPU-hours")
    recs = [r for r in read_log(str(log)) if step is None or r["step"] <= step]  # the run went on past a ckpt-STEP
    if not recs:
        raise RunDirError(f"{log} has no record up to the checkpoint's step {step}: it is not this checkpoint's run")
    wall = cpu_hours([{k: v for k, v in r.items() if k != "cores"} for r in recs])[-1]
    return {"run": str(log.parent), "steps": recs[-1]["step"] if step is None else step,
            "cpu_hours": round(cpu_hours(recs, procs=cores)[-1], 2), "wall_hours": round(wall, 2)}


def lineage_of(path: str | Path, extra: dict) -> list:
    """The runs behind the hypernetwork file at ``path`` (metadata ``extra``), oldest first: the ``lineage`` a
    shipped file records; for a run's own output, the runs it started from (``init_lineage``) and then that run up
    to the file's step, from its log (when the log is there)."""
    if extra.get("lineage"):
        return list(extra["lineage"])
    before = list(extra.get("init_lineage") or [])
    return before + [run_record(path, extra.get("step"))] if run_log(path) is not None else before
