"""Tokenizers for random-init checkpoints, trained locally and deterministically with `tokenizers`.

There is no model hub here, so the Bort tokenizer (RoBERTa-style byte-level BPE) and the BERT-large one
(lower-cased WordPiece) are trained on text generated from a fixed seed: common English words in
sentence-like order (so real English tokenizes into plausible pieces), a large lexicon of pseudo-words
(enough distinct pairs for the BPE / WordPiece trainers to reach the configured vocabulary size), digits,
punctuation and some non-Latin scripts. Same seed and vocabulary size → the same tokenizer, byte for byte.
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

COMMON_WORDS = """
the of and to a in is it you that he was for on are with as I his they be at one have this from or had by
not word but what some we can out other were all there when up use your how said an each she which do their
time if will way about many then them write would like so these her long make thing see him two has look
more day could go come did number sound no most people my over know water than call first who may down side
been now find any new work part take get place made live where after back little only round man year came
show every good me give our under name very through just form sentence great think say help low line differ
turn cause much mean before move right boy old too same tell does set three want air well also play small
end put home read hand port large spell add even land here must big high such follow act why ask men change
went light kind off need house picture try us again animal point mother world near build self earth father
head stand own page should country found answer school grow study still learn plant cover food sun four
between state keep eye never last let thought city tree cross farm hard start might story saw far sea draw
left late run while press close night real life few north open seem together next white children begin got
walk example ease paper group always music those both mark often letter until mile river car feet care
second book carry took science eat room friend began idea fish mountain stop once base hear horse cut sure
watch color face wood main enough plain girl usual young ready above ever red list though feel talk bird
soon body dog family direct pose leave song measure door product black short numeral class wind question
happen complete ship area half rock order fire south problem piece told knew pass since top whole king space
heard best hour better true during hundred five remember step early hold west ground interest reach fast
verb sing listen six table travel less morning ten simple several vowel toward war lay against pattern slow
center love person money serve appear road map rain rule govern pull cold notice voice unit power town fine
certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct able pound done
beauty drive stood contain front teach week final gave green oh quick develop ocean warm free minute strong
special mind behind clear tail produce fact street inch multiply nothing course stay wheel full force blue
object decide surface deep moon island foot system busy test record boat common gold possible plane stead
dry wonder laugh thousand ago ran check game shape equate hot miss brought heat snow tire bring yes distant
fill east paint language among woman women playing riding dancing eating cutting sitting running walking
cat cats dogs guitar piano violin bread meat market stock stocks bank government president police news
report company price percent market said says saying today yesterday tomorrow million billion against
""".split()

_SYLLABLES = ("a e i o u y ka ke ki ko ku ta te ti to tu ra re ri ro ru la le li lo lu ma me mi mo mu na ne ni "
              "no nu sa se si so su pa pe pi po pu ba be bi bo bu da de di do du ga ge gi go gu va ve vi vo vu "
              "za ze zi zo zu th sh ch st str tr pr br gr cr fl pl bl cl qu wh ng nd nt rt ll ss ck x q j w h f "
              "an en in on un ar er ir or ur al el il ol ul as es is os us at et it ot ut").split()
_PUNCT = list(".,;:!?\"'()-/&%$#@*+=<>[]{}|~^_`\\")
_OTHER_SCRIPTS = ("é è ê ë à â ä ç ô ö ü û ï î ñ ß ø å æ œ á í ó ú ã õ ł ś ż č š ž ř ğ ı ş "
                  "α β γ δ ε ζ η θ ι κ λ μ ν ξ ο π ρ σ τ υ φ χ ψ ω а б в г д е ж з и й к л м н о п р с т у ф х ц ч ш щ ы э ю я "
                  "日 本 語 中 文 東 京 的 一 是 不 了 人 我 在 有 他 这 个 们 こ ん に ち は の を が で す ま "
                  "한 국 어 안 녕 ا ل م ر ب ح ع ה ש ל ו ם 😀 🚀 🎉 👍 🏽 ❤ ✓ € £ ¥ © ® ™ — – … « » “ ” ‘ ’").split()


def generate_corpus(seed: int = 0, sentences: int = 40_000, lexicon_size: int = 120_000) -> Iterator[str]:
    """Deterministic training text: one line per item."""
    rng = random.Random(seed)
    lexicon = sorted({"".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 6))) for _ in range(lexicon_size)})
    rng.shuffle(lexicon)
    # Zipf-like weights so frequent pseudo-words merge whole and rare ones stay in pieces, as in real text.
    cum_weights = list(itertools.accumulate(1.0 / (rank + 10) for rank in range(len(lexicon))))
    for i in range(sentences):
        n = rng.randint(4, 24)
        parts = []
        for _ in range(n):
            r = rng.random()
            if r < 0.55:
                w = rng.choice(COMMON_WORDS)
            elif r < 0.93:
                w = rng.choices(lexicon, cum_weights=cum_weights)[0]
            elif r < 0.97:
                w = str(rng.randint(0, 10 ** rng.randint(1, 6)))
            else:
                w = "".join(rng.choice(_OTHER_SCRIPTS) for _ in range(rng.randint(1, 4)))
            if rng.random() < 0.12:
                w = w.capitalize()
            if rng.random() < 0.06:
                w += rng.choice(_PUNCT)
            parts.append(w)
        parts[0] = parts[0].capitalize()
        yield " ".join(parts) + rng.choice([".", ".", ".", "?", "!", ""])
        if i % 8 == 0:  # every pseudo-word also appears once, so rare pairs exist to be merged
            start = (i // 8) * 24 % len(lexicon)
            yield " ".join(lexicon[start:start + 24])


def train_byte_level_bpe(vocab_size: int, seed: int = 0):
    """RoBERTa-style byte-level BPE: <s>=0, <pad>=1, </s>=2, <unk>=3, ..., <mask> = vocab_size - 1;
    encodes a single text as <s> … </s>. Returns a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(generate_corpus(seed), trainer)
    _check_size(tok, vocab_size - 1, "byte-level BPE")
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.RobertaProcessing(sep=("</s>", 2), cls=("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    _check_size(tok, vocab_size, "byte-level BPE")
    return tok


def train_wordpiece(vocab_size: int, lowercase: bool = True, seed: int = 0):
    """BERT-style WordPiece: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4; a single text is [CLS] … [SEP]."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    def tokenizer(model):
        tok = Tokenizer(model)
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None, clean_text=True,
                                                    handle_chinese_chars=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        return tok

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    corpus = list(generate_corpus(seed))
    draft = tokenizer(models.WordPiece(unk_token="[UNK]"))
    # WordPieceTrainer numbers each '##'-prefixed character when it first meets it while walking a hash map,
    # so those ids, the tie-breaks between equally frequent merges that depend on them, and with them the
    # learned pieces change from run to run. Registering every continuation character up front, in sorted
    # order, fixes all ids: the same seed then gives the same tokenizer, byte for byte. A training without
    # merges (vocab_size 0) lists exactly those characters.
    draft.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=0, show_progress=False))
    continuations = sorted(t for t in draft.get_vocab(with_added_tokens=False) if t.startswith("##"))
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials + continuations,
                                        show_progress=False)
    draft.train_from_iterator(corpus, trainer)
    _check_size(draft, vocab_size, "WordPiece")
    # The same pieces, with only the real special tokens registered as such ('##x' are ordinary pieces).
    tok = tokenizer(models.WordPiece(draft.get_vocab(with_added_tokens=False), unk_token="[UNK]"))
    tok.add_special_tokens(specials)
    tok.post_processor = processors.BertProcessing(sep=("[SEP]", 3), cls=("[CLS]", 2))
    _check_size(tok, vocab_size, "WordPiece")
    return tok


def _check_size(tok, expected: int, kind: str) -> None:
    got = tok.get_vocab_size()
    if got != expected:
        raise RuntimeError(f"{kind} training reached {got} tokens, not the configured {expected}: the generated "
                           "corpus has too few distinct pairs for this vocabulary size")
