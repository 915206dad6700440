"""Tokenizer training (bort_infer.export.tokenizer_training): Bort's RoBERTa-style byte-level BPE and
BERT's WordPiece, trained locally and deterministically."""
from __future__ import annotations

import itertools

import pytest

from bort_infer.export.tokenizer_training import generate_corpus, train_byte_level_bpe, train_wordpiece

VOCAB_SIZE = 1000  # tiny-bort's and tiny-bert-large's; the trainers behave alike at Bort's 50265


@pytest.fixture(scope="module")
def byte_level_bpe():
    return train_byte_level_bpe(VOCAB_SIZE, seed=0)


@pytest.fixture(scope="module")
def wordpiece():
    return train_wordpiece(VOCAB_SIZE, seed=0)


def test_corpus_is_deterministic_per_seed():
    head = list(itertools.islice(generate_corpus(seed=0), 200))
    assert head == list(itertools.islice(generate_corpus(seed=0), 200))
    assert head != list(itertools.islice(generate_corpus(seed=1), 200))
    assert all(isinstance(line, str) and line for line in head)


def test_byte_level_bpe_special_ids_and_size(byte_level_bpe):
    tok = byte_level_bpe
    assert tok.get_vocab_size() == VOCAB_SIZE
    assert [tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, VOCAB_SIZE - 1]
    assert type(tok.model).__name__ == "BPE" and type(tok.pre_tokenizer).__name__ == "ByteLevel"


def test_byte_level_bpe_frames_a_text_with_s_and_end_s(byte_level_bpe):
    encoding = byte_level_bpe.encode("Hello world.")
    assert encoding.ids[0] == 0 and encoding.ids[-1] == 2
    assert len(encoding.ids) > 3 and not {0, 1, 2, 3} & set(encoding.ids[1:-1])


def test_byte_level_bpe_round_trips_any_text_without_unknown_tokens(byte_level_bpe):
    # Every byte is in the alphabet, so no text needs <unk> and decoding gives the text back exactly.
    text = "Ünïcödé têxt, 日本語, emoji 😀🚀👍🏽, tabs\tand\nnewlines"
    ids = byte_level_bpe.encode(text, add_special_tokens=False).ids
    assert 3 not in ids
    assert byte_level_bpe.decode(ids) == text


def test_wordpiece_special_ids_framing_and_lowercasing(wordpiece):
    tok = wordpiece
    assert tok.get_vocab_size() == VOCAB_SIZE
    assert [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert type(tok.model).__name__ == "WordPiece"
    encoding = tok.encode("Hello world.")
    assert encoding.ids[0] == 2 and encoding.ids[-1] == 3
    assert encoding.ids == tok.encode("HELLO WORLD.").ids


@pytest.mark.parametrize("trainer, trained", [(train_byte_level_bpe, "byte_level_bpe"), (train_wordpiece, "wordpiece")])
def test_training_is_deterministic(trainer, trained, request):
    # Same seed and size → the same tokenizer, byte for byte (random checkpoints depend on it).
    first = request.getfixturevalue(trained)
    assert trainer(VOCAB_SIZE, seed=0).to_str() == first.to_str()
