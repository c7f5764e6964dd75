import json
import os

import pytest
import torch
import torch.nn.functional as F
from models import ProtoData, ToyArchs
from test_training import cfg, two_toy_networks

from ghn.datasets import ImageDataset
from ghn.teacher import distill_loss, load_logits, predict_logits, save_logits, train_teacher
from ghn.training import Distill, meta_batch_loss, train


def proto_dataset(**kw):
    d = ProtoData(**kw)
    return ImageDataset(d.images, d.labels, d.num_classes, name="proto")


def test_distill_loss_is_zero_at_the_teacher_and_scaled_kl_elsewhere():
    t = torch.randn(16, 5)
    assert float(distill_loss(t.clone(), t, 3.0)) == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(16, 5)
    p = F.softmax(t / 2, -1)
    kl = (p * (p.log() - F.log_softmax(s / 2, -1))).sum(-1).mean()
    assert float(distill_loss(s, t, 2.0)) == pytest.approx(4 * float(kl), rel=1e-5)


def test_teacher_learns_the_task_and_its_logits_file_is_tied_to_the_training_labels(tmp_path):
    data = proto_dataset(n=256, num_classes=4, size=12)
    before = torch.random.get_rng_state()
    model = train_teacher(data, epochs=2, batch_size=32, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is left alone
    logits = predict_logits(model, data.images)
    assert logits.shape == (256, 4)
    assert float((logits.argmax(-1) == data.labels).float().mean()) > 0.6  # chance: 0.25
    path = tmp_path / "t.safetensors"
    save_logits(path, logits, data.labels, "proto")
    assert torch.equal(load_logits(path, data.labels, "proto"), logits)
    with pytest.raises(ValueError, match="other labels"):
        load_logits(path, data.labels.roll(1), "proto")
    with pytest.raises(ValueError, match="training set has 255"):
        load_logits(path, data.labels[:255], "proto")
    with pytest.raises(ValueError, match="made for dataset 'proto'"):
        load_logits(path, data.labels, "fashion-mnist")
    with pytest.raises(FileNotFoundError, match="python -m ghn.teacher"):
        load_logits(tmp_path / "missing.safetensors", data.labels)
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="not a teacher logits file"):
        load_logits(tmp_path / "junk.safetensors", data.labels)


def test_distillation_mixes_cross_entropy_and_the_teacher_term_per_architecture():
    models, x, y, hyper, graphs = two_toy_networks()
    teacher = torch.randn(len(y), 4) * 3
    plain = meta_batch_loss(hyper, models, graphs, x, y)
    mixed = meta_batch_loss(hyper, models, graphs, x, y, distill=Distill(teacher, 0.25, 2.0))
    assert torch.allclose(mixed.ce, plain.ce)  # the logged cross-entropy stays the plain one
    preds = hyper(graphs)
    for i, (m, p) in enumerate(zip(models, preds)):
        logits = torch.func.functional_call(m, p, (x,), strict=False)
        want = 0.75 * F.cross_entropy(logits, y) + 0.25 * distill_loss(logits, teacher, 2.0)
        assert float(mixed.losses[i].detach()) == pytest.approx(float(want), rel=1e-4)


def test_a_distilled_run_logs_both_losses_and_a_resume_must_keep_the_teacher(tmp_path):
    data = ProtoData()
    path = tmp_path / "teacher.safetensors"
    save_logits(path, torch.nn.functional.one_hot(data.labels, 4).float() * 4, data.labels, "")
    c = cfg(tmp_path, "kd", steps=4, ckpt_every=2, arch_grad_norm=True, distill=str(path), distill_alpha=0.5)
    train(c, data=data, archs=ToyArchs())
    recs = [json.loads(line) for line in open(os.path.join(c.out_dir, "log.jsonl"))]
    assert len(recs) == 4 and all("objective" in r and r["objective"] != r["loss"] for r in recs)
    with pytest.raises(ValueError, match="distill_alpha"):  # another mix would silently be another run
        train(cfg(tmp_path, "kd", steps=6, resume=os.path.join(c.out_dir, "ckpt-0000002"), distill=str(path),
                  distill_alpha=0.9), data=data, archs=ToyArchs())
    # the same path regenerated with other values (e.g. another machine's teacher): the resume is refused
    save_logits(path, torch.nn.functional.one_hot(data.labels, 4).float() * 3, data.labels, "")
    with pytest.raises(ValueError, match="not the teacher logits the run was trained with"):
        train(cfg(tmp_path, "kd", steps=6, resume=os.path.join(c.out_dir, "ckpt-0000002"), distill=str(path),
                  distill_alpha=0.5), data=data, archs=ToyArchs())
    save_logits(path, torch.nn.functional.one_hot(data.labels, 4).float() * 4, data.labels, "")
    train(cfg(tmp_path, "kd", steps=6, resume=os.path.join(c.out_dir, "ckpt-0000002"), distill=str(path),
              distill_alpha=0.5, arch_grad_norm=True),
          data=data, archs=ToyArchs())  # the same file resumes
    with pytest.raises(ValueError, match="distill-alpha"):
        train(cfg(tmp_path, "bad", distill=str(path), distill_alpha=0.0), data=data, archs=ToyArchs())
    with pytest.raises(ValueError, match="training set has"):  # logits of another training set
        train(cfg(tmp_path, "other", distill=str(path)), data=ProtoData(n=100), archs=ToyArchs())
