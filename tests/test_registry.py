import pytest

from bort_infer.registry import known_models, model_spec


def test_known_models():
    assert {"bort", "bert-large", "tiny-bort", "tiny-bert-large"} <= set(known_models())


def test_bort_is_the_papers_architecture():
    c = model_spec("bort")["hf_config"]
    shape = (c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["num_hidden_layers"])
    assert shape == (1024, 768, 8, 4)
    extras = (c["vocab_size"], c["max_position_embeddings"], c["type_vocab_size"], c["pad_token_id"])
    assert extras == (50265, 512, 1, 1)
    assert c["layer_norm_eps"] == 1e-5 and c["hidden_act"] == "gelu"


def test_bert_large():
    c = model_spec("bert-large")["hf_config"]
    shape = (c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["num_hidden_layers"])
    assert shape == (1024, 4096, 16, 24)
    assert c["vocab_size"] == 30522


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'bort-xl'; known models: bert-large, bort"):
        model_spec("bort-xl")
