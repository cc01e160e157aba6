"""Write a tiny Hugging Face text model for the built-in benchmark, offline.

A BERT configuration with **random weights** and a word-level tokenizer whose vocabulary
is every word of the synthetic benchmark's training texts, saved as ``transformers``
saves any model (``config.json``, ``model.safetensors``, ``tokenizer.json``, ...), so that
``valfusion train --text-encoder hf:DIR`` can train the transformer text stack end to end
without a download. What a pretrained BERT would give is not measured by this model.

Usage::

    python benchmarks/make_hf_text_model.py OUT_DIR [--seeds 0 1 2] [--num-train 3000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def benchmark_words(seeds: list[int], num_train: int, num_test: int) -> list[str]:
    """The sorted words of the synthetic benchmark's training texts over ``seeds``
    (lower-cased, split on whitespace and punctuation as BERT's pre-tokenizer does)."""
    from tokenizers.pre_tokenizers import BertPreTokenizer

    from valfusion.data.synthetic import SyntheticBenchmark

    split = BertPreTokenizer()
    words: set[str] = set()
    for seed in seeds:
        data = SyntheticBenchmark(num_train, num_test, seed=seed).data(("train",))
        assert data.train is not None
        for triplet in data.train.triplets:
            words.update(word for word, _ in split.pre_tokenize_str(triplet.text.lower()))
    return sorted(words)


def write_model(
    out: Path, words: list[str], *, hidden: int = 128, layers: int = 2, heads: int = 2
) -> None:
    """Save a BERT of ``layers`` blocks of width ``hidden`` (random weights, seed 0) and a
    word-level tokenizer over ``words`` into ``out``, with the package's atomic writer."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    from valfusion.encoders._text_head import save_atomically

    vocab = {token: i for i, token in enumerate([*SPECIAL, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]",
    )
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    save_atomically(out, model.save_pretrained)
    save_atomically(out, fast.save_pretrained)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="benchmark seeds whose training texts make the vocabulary")
    parser.add_argument("--num-train", type=int, default=3000, help="training triplets per seed (the demo's 3000)")
    parser.add_argument("--num-test", type=int, default=500, help="test queries per seed (the demo's 500)")
    parser.add_argument("--hidden", type=int, default=128, help="BERT hidden size")
    parser.add_argument("--layers", type=int, default=2, help="BERT blocks")
    args = parser.parse_args(argv)
    words = benchmark_words(args.seeds, args.num_train, args.num_test)
    write_model(args.out, words, hidden=args.hidden, layers=args.layers)
    print(f"{args.out}: BERT {args.layers} x {args.hidden} (random weights), {len(words) + len(SPECIAL)} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
