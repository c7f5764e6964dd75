"""ghn.plot on a tiny log and a tiny results file (matplotlib is a test dependency)."""
import json

import pytest

from ghn.plot import cpu_hours, main, read_log

pytest.importorskip("matplotlib")  # the optional `plot` extra (installed by CI through `.[test]`)


def _write_log(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


def test_plots_from_a_tiny_log_and_results(tmp_path):
    log = tmp_path / "log.jsonl"
    recs = [{"step": s, "loss": 2.3 - 0.01 * s, "acc": 0.1 + 0.002 * s, "archs_per_step": 4, "archs_per_s": 2.0}
            for s in range(10, 110, 10)]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs) + json.dumps(recs[3]) + "\n{torn")
    got = read_log(str(log))
    assert [r["step"] for r in got] == list(range(10, 110, 10))  # repeated step once, torn line dropped
    assert cpu_hours(got)[-1] == pytest.approx(100 * 4 / 2.0 / 3600)
    assert cpu_hours(got, 2)[-1] == pytest.approx(2 * 100 * 4 / 2.0 / 3600)  # one process of 2 threads
    mixed = [dict(r, cores=1) if r["step"] > 50 else r for r in got]  # a resume with 1 thread: the log says so
    assert cpu_hours(mixed, 2)[-1] == pytest.approx((2 * 50 + 1 * 50) * 4 / 2.0 / 3600)
    res = tmp_path / "eval.json"
    rows = [{"family": f, "norm": "bn", "acc_pred": 0.1 * i, "acc_default": 0.1, "ft_pred": 0.5, "ft_default": 0.4}
            for i, f in enumerate(["cnn", "cnn", "vit"])]
    res.write_text(json.dumps({"rows": rows}))
    for kind, inp in (("curve", log), ("scatter", res), ("families", res)):
        out = tmp_path / f"{kind}.png"
        assert main([kind, str(inp), "--out", str(out)]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["curve", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x.png")]) == 2


def test_scatter_keeps_one_colour_per_family_across_panels(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from ghn.plot import plot_scatter

    rows = [{"family": "cnn", "norm": "bn", "acc_pred": 0.3, "acc_default": 0.1},  # not fine-tuned
            {"family": "vit", "norm": "ln", "acc_pred": 0.3, "acc_default": 0.1, "ft_pred": 0.5, "ft_default": 0.503}]
    res = tmp_path / "r.json"
    res.write_text(json.dumps({"rows": rows}))
    figs = []
    monkeypatch.setattr(plt, "subplots", lambda *a, _s=plt.subplots, **k: figs.append(_s(*a, **k)) or figs[-1])
    plot_scatter(str(res), str(tmp_path / "s.png"))
    no_train, tuned = figs[0][1][0]
    colour = lambda ax, fam: next(c.get_facecolor()[0].tolist() for c in ax.collections  # noqa: E731
                                  if c.get_label() == fam)
    assert colour(no_train, "vit/ln") == colour(tuned, "vit/ln") != colour(no_train, "cnn/bn")
    assert tuned.get_title().endswith("on 1/1")  # 0.3 points behind counts as no harm


def test_curve_marks_where_a_resume_switched_the_direction_cap(tmp_path, monkeypatch):
    import ghn.plot as gp

    recs = [{"step": s, "loss": 2.0, "acc": 0.2, "archs_per_step": 4, "archs_per_s": 2.0,
             **({"max_dir_ratio": 0.25} if s > 50 else {})} for s in range(10, 110, 10)]
    figs = []
    monkeypatch.setattr(gp, "_save", lambda fig, out: figs.append(fig) or out)
    gp.plot_curve(_write_log(tmp_path / "log.jsonl", recs), str(tmp_path / "c.png"))
    marks = [ln.get_xdata()[0] for a in figs[0].axes for ln in a.get_lines() if ln.get_linestyle() == ":"]
    assert len(marks) == 4 and marks[0] == marks[2] == 50  # the last uncapped step, on every panel (step, hours)
    assert any("0 -> 0.25" in t.get_text() for a in figs[0].axes for t in a.texts)


def test_scatter_and_families_read_several_results_files_and_refuse_an_architecture_in_two(tmp_path, monkeypatch):
    from ghn.plot import _rows

    row = lambda i: {"split": "test", "index": i, "family": "cnn", "norm": "bn", "acc_pred": 0.3,  # noqa: E731
                     "acc_default": 0.1, "ft1_pred": 0.8, "ft1_default": 0.79}
    a, b, c = (tmp_path / f"{n}.json" for n in "abc")
    a.write_text(json.dumps({"rows": [row(1), row(2)]}))
    b.write_text(json.dumps({"rows": [row(3)]}))
    c.write_text(json.dumps({"rows": [row(2)]}))
    assert [r["index"] for r in _rows([str(a), str(b)])] == [1, 2, 3]
    for kind in ("scatter", "families"):
        assert main([kind, str(a), str(b), "--out", str(tmp_path / f"{kind}.png")]) == 0
    with pytest.raises(ValueError, match="test/2 is in both"):
        _rows([str(a), str(c)])
    assert main(["scatter", str(a), str(c), "--out", str(tmp_path / "x.png")]) == 2
    assert main(["curve", str(a), str(b), "--out", str(tmp_path / "x.png")]) == 2


def test_fine_tuning_panels_are_titled_by_their_budget():
    from ghn.plot import _pairs

    rows = [{"acc_pred": 0.3, "acc_default": 0.1, "ft1_pred": 0.8, "ft1_default": 0.7, "ft100s_pred": 0.6,
             "ft100s_default": 0.5}]
    assert [p[0] for p in _pairs(rows)] == ["no training", "after 1 epoch", "after 100 SGD steps"]


def test_curve_draws_several_runs_and_pairs_their_losses_by_step(tmp_path, monkeypatch, capsys):
    import ghn.plot as gp

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base = [{"step": s, "loss": 2.0 + (s % 20) / 10, "acc": 0.2, "archs_per_step": 4, "archs_per_s": 2.0}
            for s in range(10, 110, 10)]
    a = _write_log(tmp_path / "a" / "log.jsonl", base)
    b = _write_log(tmp_path / "b" / "log.jsonl", [dict(r, loss=r["loss"] - 0.1 * (r["step"] != 50))
                                                  for r in base[:8]])  # 8 common steps, lower on 7 of them
    (d,) = gp.paired_loss([a, b])
    assert (d["steps"], d["lower"]) == (8, 7) and d["diff"] == pytest.approx(-0.1 * 7 / 8)
    figs = []
    monkeypatch.setattr(gp, "_save", lambda fig, out: figs.append(fig) or out)
    assert main(["curve", a, b, "--out", str(tmp_path / "ab.png")]) == 0
    assert [t.get_text() for t in figs[0].axes[0].get_legend().get_texts()] == ["a", "b"]
    assert "lower on 7" in capsys.readouterr().out
    c = _write_log(tmp_path / "c.jsonl", [dict(base[0], step=999)])
    assert main(["curve", a, c, "--out", str(tmp_path / "x.png")]) == 2  # nothing in common: one-line error
