"""Real Hugging Face transformers models, built from small configs (no download): the `nlp` extra, installed by CI.

What is checked is what the plain-torch reductions in test_real_models.py stand in for: the whole model is covered,
``ghn.initialize`` writes every parameter with finite values, and the post-norm residual branches (BERT-style
``norm(x + dropout(dense(h)))``) are found in train and in eval mode, and only in post-norm models.
"""
from __future__ import annotations

import pytest
import torch

from ghn.graph import ArchGraph
from ghn.hypernet import GraphHyperNetwork

tr = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hyper():
    torch.manual_seed(0)
    return GraphHyperNetwork(hidden=16, layers=1, rank=4)


def tokens():
    return torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))


SMALL = dict(vocab_size=100, max_position_embeddings=16)
MODELS = {  # name: (model factory, the modules ending a post-norm residual branch, {k}: the layer)
    "bert": (lambda: tr.BertForSequenceClassification(tr.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=3, **SMALL)),
        ["bert.encoder.layer.{k}.attention.output.dense", "bert.encoder.layer.{k}.output.dense"]),
    "distilbert": (lambda: tr.DistilBertForSequenceClassification(tr.DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=64, **SMALL)),
        ["distilbert.transformer.layer.{k}.attention.out_lin", "distilbert.transformer.layer.{k}.ffn.lin2"]),
    "gpt2": (lambda: tr.GPT2LMHeadModel(tr.GPT2Config(
        vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=16, bos_token_id=0, eos_token_id=0)), []),
    "llama": (lambda: tr.LlamaForCausalLM(tr.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        bos_token_id=0, eos_token_id=0, **SMALL)), []),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_post_norm_branches_are_found_only_in_post_norm_models(name, mode):
    make, branches = MODELS[name]
    torch.manual_seed(0)
    model = make()
    getattr(model, mode)()
    g = ArchGraph.from_module(model, tokens())
    assert g.coverage().fraction == 1.0, g.coverage()
    found = {r.name.rsplit(".", 1)[0] for i, r in g.param_refs() if i in g.post_norm_branches()}
    assert found == {b.format(k=k) for b in branches for k in range(2)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_initialize_writes_every_parameter_finite(name, hyper):
    import ghn

    torch.manual_seed(0)
    model = MODELS[name][0]().eval()
    before = {k: v.clone() for k, v in model.named_parameters()}
    ghn.initialize(model, example_input=tokens(), ghn=hyper)
    after = dict(model.named_parameters())
    assert all(torch.isfinite(p).all() for p in after.values())
    assert [k for k in before if torch.equal(before[k], after[k])] == []
    with torch.no_grad():
        assert torch.isfinite(model(tokens()).logits).all()


def test_hf_name_takes_a_local_config_directory_and_a_bad_one_is_one_line(tmp_path):
    from ghn.zoo import get_model

    tr.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=16, bos_token_id=0,
                  eos_token_id=0).save_pretrained(tmp_path / "tiny")
    model = get_model(f"hf:{tmp_path / 'tiny'}")
    assert type(model).__name__ == "GPT2LMHeadModel" and model.config.n_embd == 32
    with pytest.raises(FileNotFoundError, match=r"^hf:\S+missing: no model config \(.*\); give a Hub id") as e:
        get_model(f"hf:{tmp_path / 'missing'}")
    assert "\n" not in str(e.value)
