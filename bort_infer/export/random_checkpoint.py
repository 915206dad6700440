"""Random-init Hugging Face checkpoints of the models we know (models/*.json), written as a real checkpoint
directory: config.json, model.safetensors and tokenizer files that `transformers` loads with
`AutoTokenizer.from_pretrained` and `BertModel.from_pretrained`.

Speed does not depend on weight values, and correctness is checked against PyTorch on the same weights,
so random weights with the exact configuration are what benchmarks and parity tests need.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..registry import model_spec
from .tokenizer_training import train_byte_level_bpe, train_wordpiece

log = logging.getLogger(__name__)


def _hf_tokenizer(spec: dict, seed: int):
    """The spec's tokenizer, trained here, wrapped as the transformers fast tokenizer of its kind."""
    from transformers import BertTokenizerFast, RobertaTokenizerFast

    kind, size = spec["tokenizer"]["kind"], spec["tokenizer"]["vocab_size"]
    max_len = spec["hf_config"]["max_position_embeddings"]
    if kind == "byte_level_bpe":
        return RobertaTokenizerFast(tokenizer_object=train_byte_level_bpe(size, seed=seed), bos_token="<s>",
                                    eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                    pad_token="<pad>", mask_token="<mask>", model_max_length=max_len)
    if kind == "wordpiece":
        lowercase = bool(spec["tokenizer"].get("lowercase", True))
        return BertTokenizerFast(tokenizer_object=train_wordpiece(size, lowercase=lowercase, seed=seed),
                                 do_lower_case=lowercase, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                 cls_token="[CLS]", mask_token="[MASK]", model_max_length=max_len)
    raise ValueError(f"model {spec['name']!r}: unknown tokenizer kind {kind!r} (byte_level_bpe or wordpiece)")


def _randomize_affine_parameters(model, seed: int) -> None:
    """BertModel initialises every bias to 0 and every LayerNorm to the identity; a parity test on such
    weights could not see a bias or LayerNorm wired to the wrong place, so those get random values too."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def create_random_checkpoint(name: str, out: str | Path, seed: int = 0) -> Path:
    """Write a random-init checkpoint of known model `name` to `out` (created; existing files replaced)."""
    import torch
    from transformers import BertConfig, BertModel

    spec = model_spec(name)
    cfg = dict(spec["hf_config"])
    if cfg.get("model_type") != "bert":
        raise ValueError(f"model {name!r}: only BERT-architecture configs can be created (model_type 'bert')")
    if spec["tokenizer"]["vocab_size"] != cfg["vocab_size"]:
        raise ValueError(f"model {name!r}: tokenizer vocab_size {spec['tokenizer']['vocab_size']} differs from "
                         f"the config's {cfg['vocab_size']}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log.info("creating random-init %s (seed %d) in %s", name, seed, out)
    tokenizer = _hf_tokenizer(spec, seed)
    if len(tokenizer) != cfg["vocab_size"]:
        raise RuntimeError(f"trained tokenizer has {len(tokenizer)} tokens, config says {cfg['vocab_size']}")

    config = BertConfig(**{k: v for k, v in cfg.items() if k not in ("model_type",)})
    torch.manual_seed(seed)
    model = BertModel(config, add_pooling_layer=True).eval()
    _randomize_affine_parameters(model, seed)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


HEAD_CLASSES = {"sequence-classification": "BertForSequenceClassification",
                "token-classification": "BertForTokenClassification"}


def add_random_head(checkpoint: str | Path, out: str | Path, task: str, labels: list[str],
                    problem_type: str | None = None, type_vocab_size: int | None = None, seed: int = 0) -> Path:
    """A checkpoint of `task` (see HEAD_CLASSES) on `checkpoint`'s encoder weights with a random head (pooler
    and classifier, biases included) and `labels` as id2label, written to `out` with the tokenizer. With
    type_vocab_size, the encoder gets that many random token type embeddings (BERT's segments A / B)."""
    import torch
    import transformers
    from transformers import AutoTokenizer, BertConfig

    if task not in HEAD_CLASSES:
        raise ValueError(f"unknown head task {task!r}; choose one of {', '.join(HEAD_CLASSES)}")
    checkpoint, out = Path(checkpoint), Path(out)
    config = BertConfig.from_pretrained(checkpoint, num_labels=len(labels),
                                        id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    config.architectures = [HEAD_CLASSES[task]]
    if problem_type is not None:
        config.problem_type = problem_type
    encoder_types = config.type_vocab_size
    if type_vocab_size is not None:
        config.type_vocab_size = type_vocab_size
    cls = getattr(transformers, HEAD_CLASSES[task])
    torch.manual_seed(seed)
    model = cls(config).eval()
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        state = transformers.BertModel.from_pretrained(checkpoint).state_dict()
        types = state.pop("embeddings.token_type_embeddings.weight")
        model.bert.load_state_dict(state, strict=False)
        token_types = model.bert.embeddings.token_type_embeddings.weight
        token_types.copy_(0.05 * torch.randn(token_types.shape, generator=gen))
        token_types[:encoder_types] = types[:config.type_vocab_size]
        for name, p in model.named_parameters():
            if not name.startswith("bert.") or name.startswith("bert.pooler."):
                p.copy_((0.5 if name.endswith("bias") else 0.2) * torch.randn(p.shape, generator=gen))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(out)
    return out
