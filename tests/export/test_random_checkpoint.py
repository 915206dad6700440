"""Random-init checkpoints (bort_infer.export.random_checkpoint): real Hugging Face checkpoint directories
with the exact configurations of models/*.json, deterministic per seed."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bort_infer.export.random_checkpoint import create_random_checkpoint
from bort_infer.registry import model_spec


def load_weights(directory) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(directory / "model.safetensors"))


def test_tiny_bort_checkpoint_loads_with_transformers(checkpoints):
    from transformers import AutoTokenizer, BertModel

    directory = checkpoints("tiny-bort")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (directory / name).is_file(), name
    config = json.loads((directory / "config.json").read_text())
    spec = model_spec("tiny-bort")["hf_config"]
    assert {k: config[k] for k in spec} == spec

    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert type(tokenizer).__name__ == "RobertaTokenizerFast"
    assert type(tokenizer.backend_tokenizer.model).__name__ == "BPE"
    assert type(tokenizer.backend_tokenizer.pre_tokenizer).__name__ == "ByteLevel"
    assert len(tokenizer) == config["vocab_size"]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")}
    assert ids == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": config["vocab_size"] - 1}
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id) == (1, 0, 2)
    encoded = tokenizer("A man is riding a horse.", return_tensors="pt")
    assert encoded["input_ids"][0, 0] == 0 and encoded["input_ids"][0, -1] == 2

    model = BertModel.from_pretrained(directory, add_pooling_layer=False).eval()
    assert model.config.hidden_size == spec["hidden_size"] and model.config.pad_token_id == 1
    states = model(**encoded).last_hidden_state
    assert tuple(states.shape) == (1, encoded["input_ids"].shape[1], spec["hidden_size"])


def test_tiny_bert_large_checkpoint_has_a_wordpiece_tokenizer(checkpoints):
    from transformers import AutoTokenizer, BertModel

    directory = checkpoints("tiny-bert-large")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert type(tokenizer).__name__ == "BertTokenizerFast"
    assert type(tokenizer.backend_tokenizer.model).__name__ == "WordPiece"
    assert len(tokenizer) == model_spec("tiny-bert-large")["tokenizer"]["vocab_size"]
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")]
    assert ids == [0, 1, 2, 3, 4]
    encoded = tokenizer("Hello World.")["input_ids"]
    assert encoded[0] == 2 and encoded[-1] == 3 and encoded == tokenizer("hello world.")["input_ids"]
    assert BertModel.from_pretrained(directory).config.num_hidden_layers == 12


def test_biases_and_layernorms_are_random_not_their_identity_init(checkpoints):
    # A parity test on zero biases and identity LayerNorms could not see one wired to the wrong place.
    weights = load_weights(checkpoints("tiny-bort"))
    biases = [k for k in weights if k.endswith("bias")]
    gammas = [k for k in weights if k.endswith("LayerNorm.weight")]
    assert len(biases) > 10 and len(gammas) == 1 + 2 * 2  # embeddings + two per layer
    for name in biases:
        assert weights[name].std() > 0.01, name
    for name in gammas:
        assert weights[name].std() > 0.01 and abs(weights[name].mean() - 1.0) < 0.1, name


def test_same_seed_same_checkpoint_other_seed_other_weights(checkpoints, tmp_path):
    reference = checkpoints("tiny-bort")  # seed 0
    again = create_random_checkpoint("tiny-bort", tmp_path / "seed0", seed=0)
    assert (again / "tokenizer.json").read_bytes() == (reference / "tokenizer.json").read_bytes()
    ref_weights, again_weights = load_weights(reference), load_weights(again)
    assert ref_weights.keys() == again_weights.keys()
    for name, value in ref_weights.items():
        np.testing.assert_array_equal(again_weights[name], value, err_msg=name)

    other = create_random_checkpoint("tiny-bort", tmp_path / "seed1", seed=1)
    other_weights = load_weights(other)
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.1.output.dense.bias",
                 "encoder.layer.0.attention.output.LayerNorm.weight"):
        assert not np.array_equal(other_weights[name], ref_weights[name]), name
    assert (other / "tokenizer.json").read_bytes() != (reference / "tokenizer.json").read_bytes()


def test_unknown_model_is_a_value_error_naming_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'bort-xl'; known models: .*tiny-bort"):
        create_random_checkpoint("bort-xl", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bort_tokenizer_has_the_exact_vocabulary_and_special_ids(checkpoints):
    from transformers import AutoTokenizer

    directory = checkpoints("bort")  # shared with the full-size parity and rewrite tests
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert len(tokenizer) == 50265 == json.loads((directory / "config.json").read_text())["vocab_size"]
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")]
    assert ids == [0, 1, 2, 3, 50264]
    encoded = tokenizer("The quick brown fox jumps over the lazy dog!")["input_ids"]
    assert encoded[0] == 0 and encoded[-1] == 2 and 3 not in encoded
