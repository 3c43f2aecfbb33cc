#!/usr/bin/env python3
"""Builds the tiny random-weight M2M100 fixture and its reference outputs from transformers.

Writes tests/fixtures/tiny-m2m100/: a SentencePiece BPE model trained on a small multilingual
text written here, vocab.json, config.json, generation_config.json, tokenizer_config.json,
model.safetensors, pytorch_model.bin (the same weights, for the pickle loader) and reference.json
with token ids, decoded strings, encoder outputs and greedy/beam-search outputs.

Needs: torch, transformers, sentencepiece, safetensors (see tools/requirements.txt).
Run: python tools/make_tiny_m2m100.py  (deterministic: same output for the same library versions)
"""

import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch
import transformers
from transformers import (
    GenerationConfig,
    M2M100Config,
    M2M100ForConditionalGeneration,
    M2M100Tokenizer,
)
from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tiny-m2m100"

# Text the SentencePiece model is trained on: several scripts so every test sentence segments.
CORPUS = [
    "Life is like a box of chocolates.",
    "You never know what you're gonna get.",
    "The quick brown fox jumps over the lazy dog.",
    "I love pizza and coffee in the morning!",
    "Machine translation turns one language into another.",
    "La vie est comme une boîte de chocolats.",
    "On ne sait jamais sur quoi on va tomber.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "Das Leben ist wie eine Schachtel Pralinen.",
    "Man weiß nie, was man bekommt.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "La vida es como una caja de bombones.",
    "人生はチョコレートの箱のようなものだ。",
    "何が出てくるかわからない。",
    "素早い茶色の狐がのろまな犬を飛び越える。",
    "生活就像一盒巧克力。",
    "你永远不知道你会得到什么。",
    "敏捷的棕色狐狸跳过了懒狗。",
    "Жизнь похожа на коробку шоколадных конфет.",
    "Никогда не знаешь, что тебе попадётся.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Numbers 0123456789, symbols #$%&*()[]{}<>/\\|_-+=~^@ and quotes \"'`.",
]

# Sentences whose ids, encoder outputs and translations are recorded (issue #2's list).
SENTENCES = [
    ("en", "Life is like a box of chocolates."),
    ("fr", "La vie est comme une boîte de chocolats."),
    ("ja", "人生はチョコレートの箱のようなものだ。"),
    ("zh", "生活就像一盒巧克力。"),
    ("ru", "Жизнь похожа на коробку шоколадных конфет."),
    ("en", "I love pizza 🍕 and coffee ☕ — naïve café!"),
    ("en", "  leading   spaces\tand\ttabs\u00a0nbsp \u3000ideographic  trailing  "),
    ("en", ""),
    ("de", "ﬁne Ｆｕｌｌｗｉｄｔｈ text ① and Ⅻ"),
    ("en", "Hello </s> world __fr__ ok <unk> and <pad> end"),
    (
        "en",
        " ".join(
            [
                "The quick brown fox jumps over the lazy dog, and then it runs into the forest,",
                "where it meets a box of chocolates that nobody knew was there; life is like that,",
                "you never know what you're gonna get, said the man on the bench while waiting.",
            ]
        ),
    ),
]

# Id sequences decoded as the reference decodes them (specials anywhere, made-up words, unknown ids).
def decode_cases(tok, vocab_len):
    lang = tok.lang_code_to_id
    return [
        [2, lang["fr"], 100, 101, 102, 2],
        [2, lang["ja"], 0, 150, 1, 160, 3, 170, lang["de"], 180, 2],
        [2, lang["en"], vocab_len + 100, 120, vocab_len + 107, 121],
        [2, 2],
        list(range(4, 60)),
    ]


GENERATION_CASES = [
    {"name": "greedy", "tgt": "fr", "options": {"num_beams": 1}},
    {"name": "beam_defaults", "tgt": "ja", "options": {}},
    {
        "name": "beam3_heuristic_lp06",
        "tgt": "de",
        "options": {"num_beams": 3, "length_penalty": 0.6, "early_stopping": False, "max_new_tokens": 20},
    },
    {
        "name": "beam4_never_lp13_min5",
        "tgt": "zh",
        "options": {
            "num_beams": 4,
            "length_penalty": 1.3,
            "early_stopping": "never",
            "min_new_tokens": 5,
            "max_new_tokens": 16,
        },
    },
    {"name": "greedy_min8_max12", "tgt": "ru", "options": {"num_beams": 1, "min_new_tokens": 8, "max_new_tokens": 12}},
]


def train_spm(workdir: Path) -> Path:
    corpus = workdir / "corpus.txt"
    lines = []
    rng = random.Random(0)
    for _ in range(40):
        for s in CORPUS:
            words = s.split()
            rng.shuffle(words)
            lines.append(s)
            lines.append(" ".join(words))
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prefix = workdir / "sentencepiece.bpe"
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=700,
        model_type="bpe",
        character_coverage=0.9995,
        normalization_rule_name="nmt_nfkc",
        hard_vocab_limit=False,
        num_threads=1,
        seed_sentencepiece_size=100000,
        minloglevel=2,
    )
    return prefix.with_suffix(".bpe.model")


def write_vocab(spm_path: Path, out: Path) -> dict:
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_control(i) and not sp.is_unknown(i)]
    # Leave a few real pieces out of vocab.json so "piece not in vocab -> <unk>" is exercised.
    dropped = {p for p in pieces if p in ("▁Жизнь", "▁chocolates", "ト")}
    for p in pieces:
        if p not in dropped and p not in vocab:
            vocab[p] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    return vocab


def build_model(vocab_len: int, eos_scale: float) -> M2M100ForConditionalGeneration:
    config = M2M100Config(
        vocab_size=vocab_len + 100 + 8,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=48,
        scale_embedding=True,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        init_std=0.2,
    )
    torch.manual_seed(0)
    model = M2M100ForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Random layer norms too, so a norm applied to the wrong tensor cannot go unnoticed.
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
        # A more likely </s> makes sentences end at different lengths, which beam search must handle.
        model.model.shared.weight[2] *= eos_scale
    model.generation_config = GenerationConfig(
        bos_token_id=0,
        decoder_start_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
        max_length=40,
        num_beams=5,
        early_stopping=True,
    )
    return model


def trim(ids):
    """Drops the padding transformers appends after </s> when batching outputs."""
    ids = list(ids)
    for i in range(1, len(ids)):
        if ids[i] == 2:
            return ids[: i + 1]
    return ids


def generate(model, tok, texts, src, tgt, options, batched, lang_id=None):
    """Generates from `texts` in `src` into `tgt`; `lang_id` gives a language's token id
    (M2M100's `get_lang_id` unless another family's tokenizer names its own)."""
    tok.src_lang = src
    kwargs = dict(options)
    kwargs["forced_bos_token_id"] = (lang_id or tok.get_lang_id)(tgt)
    if batched:
        enc = tok(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, **kwargs)
        return [trim(row.tolist()) for row in out]
    results = []
    for t in texts:
        enc = tok(t, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, **kwargs)
        results.append(trim(out[0].tolist()))
    return results


def main():
    transformers.logging.set_verbosity_error()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        spm_path = train_spm(Path(tmp))
        shutil.copy(spm_path, OUT / "sentencepiece.bpe.model")
    vocab = write_vocab(OUT / "sentencepiece.bpe.model", OUT)
    # transformers 5 no longer registers the language tokens as special unless told to, so it would
    # keep "__fr__" in decoded text and split it in input text. Sluice follows the documented
    # behaviour (transformers 4 and the hub's special_tokens_map.json): language tokens are special.
    lang_tokens = [f"__{c}__" for c in FAIRSEQ_LANGUAGE_CODES["m2m100"]]
    tok = M2M100Tokenizer(
        str(OUT / "vocab.json"), str(OUT / "sentencepiece.bpe.model"), additional_special_tokens=lang_tokens
    )
    assert len(tok.all_special_tokens) == 104, tok.all_special_tokens
    tok.save_pretrained(str(OUT))
    for extra in ("special_tokens_map.json", "added_tokens.json"):
        (OUT / extra).unlink(missing_ok=True)

    texts = [t for _, t in SENTENCES]
    # Pick the smallest </s> boost under which greedy outputs have several different lengths.
    for eos_scale in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0):
        model = build_model(len(vocab), eos_scale)
        lens = {len(x) for x in generate(model, tok, texts, "en", "fr", {"num_beams": 1}, batched=False)}
        if len(lens) >= 4:
            break
    print(f"eos_scale={eos_scale}, greedy lengths={sorted(lens)}", file=sys.stderr)

    model.save_pretrained(str(OUT), safe_serialization=True)
    torch.save(model.state_dict(), OUT / "pytorch_model.bin")
    # Keep the config as a user would download it: no absolute paths or machine details.
    cfg = json.loads((OUT / "config.json").read_text())
    cfg.pop("_name_or_path", None)
    (OUT / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    ref = {
        "generated_by": "tools/make_tiny_m2m100.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "sentencepiece": spm.__version__,
        "tokenize": [],
        "decode": [],
        "encoder": [],
        "generation": [],
    }
    for lang, text in SENTENCES:
        tok.src_lang = lang
        ref["tokenize"].append({"lang": lang, "text": text, "ids": tok(text)["input_ids"]})
    for ids in decode_cases(tok, len(vocab)):
        ref["decode"].append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=True)})

    tok.src_lang = "en"
    with torch.no_grad():
        for text in texts:
            enc = tok(text, return_tensors="pt")
            hidden = model.model.encoder(**enc).last_hidden_state[0]
            ref["encoder"].append({"text": text, "ids": enc["input_ids"][0].tolist(), "hidden": hidden.tolist()})

    for case in GENERATION_CASES:
        single = generate(model, tok, texts, "en", case["tgt"], case["options"], batched=False)
        batched = generate(model, tok, texts, "en", case["tgt"], case["options"], batched=True)
        ref["generation"].append(
            {
                "name": case["name"],
                "src": "en",
                "tgt": case["tgt"],
                "options": case["options"],
                "ids": single,
                "texts": [tok.decode(x, skip_special_tokens=True) for x in single],
                "batched_ids_match": single == batched,
            }
        )
        print(f"{case['name']}: lengths={[len(x) for x in single]} batched_match={single == batched}", file=sys.stderr)

    (OUT / "reference.json").write_text(json.dumps(ref, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
