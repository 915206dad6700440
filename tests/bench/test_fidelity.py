"""bort-bench's fidelity check: every backend runs the same tokenized texts and is compared with fp32."""
import numpy as np
import pytest

from bort_infer.bench.fidelity import BATCH, Batches, compare, texts


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for t in texts() for w in t.lower().split()})
    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_texts_are_the_held_out_half_of_the_built_in_set():
    from bort_infer.export.quantize import builtin_texts

    calibration, evaluation = builtin_texts()
    assert texts() == evaluation and not set(texts()) & set(calibration)


def test_batches_hold_every_text_once_right_padded(tokenizer_file):
    batches = Batches.tokenize(tokenizer_file, texts(), pad_id=0)
    assert sum(len(i) for i in batches.ids) == len(texts())
    for ids, mask in zip(batches.ids, batches.masks):
        assert ids.shape == mask.shape and len(ids) <= BATCH
        lengths = mask.sum(1)
        assert all(mask[r, :n].all() and not mask[r, n:].any() for r, n in enumerate(lengths))
        assert (ids[mask == 0] == 0).all()


def test_reference_round_trips_through_its_file(tokenizer_file, tmp_path):
    batches = Batches.tokenize(tokenizer_file, texts(), pad_id=0)
    rng = np.random.default_rng(0)
    states = [rng.standard_normal((*i.shape, 8)).astype(np.float32) for i in batches.ids]
    batches.save(tmp_path / "ref.npz", states)
    again, loaded = Batches.load(tmp_path / "ref.npz")
    for a, b in zip(batches.ids + batches.masks + states, again.ids + again.masks + loaded):
        np.testing.assert_array_equal(a, b)


def test_compare_gives_one_for_the_reference_itself_and_less_for_noise(tokenizer_file):
    batches = Batches.tokenize(tokenizer_file, texts(), pad_id=0)
    rng = np.random.default_rng(0)
    ref = [rng.standard_normal((*i.shape, 8)).astype(np.float32) for i in batches.ids]
    lookup = {i.tobytes(): r for i, r in zip(batches.ids, ref)}
    same = compare(lambda ids, mask: lookup[ids.tobytes()], batches, ref)
    assert same["texts"] == len(texts())
    assert same["cosine_min"] == pytest.approx(1.0) and same["token_cosine_min"] == pytest.approx(1.0)
    noisy = compare(lambda ids, mask: lookup[ids.tobytes()] + 0.3 * rng.standard_normal(lookup[ids.tobytes()].shape),
                    batches, ref)
    assert noisy["cosine_min"] < noisy["cosine_mean"] < 1.0 and noisy["token_cosine_min"] < noisy["cosine_min"]


def test_padding_positions_do_not_count(tokenizer_file):
    batches = Batches.tokenize(tokenizer_file, texts(), pad_id=0)
    ref = [np.ones((*i.shape, 4), np.float32) for i in batches.ids]

    def garbage_at_padding(ids, mask):
        out = np.ones((*ids.shape, 4), np.float32)
        out[mask == 0] = -1e6
        return out
    assert compare(garbage_at_padding, batches, ref)["cosine_min"] == pytest.approx(1.0)


def test_an_output_of_the_wrong_shape_is_an_error(tokenizer_file):
    batches = Batches.tokenize(tokenizer_file, texts(), pad_id=0)
    ref = [np.ones((*i.shape, 4), np.float32) for i in batches.ids]
    with pytest.raises(ValueError, match="differs from the reference"):
        compare(lambda ids, mask: np.ones((*ids.shape, 5), np.float32), batches, ref)
