#!/usr/bin/env python3
"""Builds the tiny random-weight NLLB-200 fixture and its reference outputs from transformers.

NLLB-200 is the M2M100 architecture with another tokenizer: `tokenizer.json` (a BPE model converted
from SentencePiece, language codes such as `eng_Latn` as special tokens) instead of vocab.json and
`__xx__` tokens. Writes tests/fixtures/tiny-nllb/: tokenizer.json, tokenizer_config.json,
config.json, generation_config.json (NLLB's own defaults: greedy, max_length), model.safetensors and
reference.json with token ids, decoded strings and greedy/beam-search outputs.

The SentencePiece model and the weights' shapes come from tools/make_tiny_m2m100.py's builders.
Needs: tools/requirements.txt. Run: python tools/make_tiny_nllb.py (deterministic for the same
library versions).
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import GenerationConfig, NllbTokenizer
from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_m2m100 as m2m  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tiny-nllb"

SENTENCES = [
    ("eng_Latn", "Life is like a box of chocolates."),
    ("fra_Latn", "La vie est comme une boîte de chocolats."),
    ("jpn_Jpan", "人生はチョコレートの箱のようなものだ。"),
    ("zho_Hans", "生活就像一盒巧克力。"),
    ("rus_Cyrl", "Жизнь похожа на коробку шоколадных конфет."),
    ("eng_Latn", "I love pizza 🍕 and coffee ☕ — naïve café!"),
    ("eng_Latn", "  leading   spaces\tand\ttabs\u00a0nbsp \u3000ideographic  trailing  "),
    ("eng_Latn", ""),
    ("deu_Latn", "ﬁne Ｆｕｌｌｗｉｄｔｈ text ① and Ⅻ"),
    ("eng_Latn", "Hello </s> world fra_Latn ok <unk> and <pad> end"),
]

GENERATION_CASES = [
    {"name": "defaults", "tgt": "fra_Latn", "options": {}},
    {"name": "beam4", "tgt": "jpn_Jpan", "options": {"num_beams": 4}},
    {
        "name": "beam3_heuristic_lp06",
        "tgt": "deu_Latn",
        "options": {"num_beams": 3, "length_penalty": 0.6, "early_stopping": False, "max_new_tokens": 20},
    },
    {"name": "greedy_min8_max12", "tgt": "rus_Cyrl", "options": {"num_beams": 1, "min_new_tokens": 8, "max_new_tokens": 12}},
]


def generate(model, tok, texts, src, tgt, options):
    return m2m.generate(model, tok, texts, src, tgt, options, batched=False,
                        lang_id=tok.convert_tokens_to_ids)


def main():
    transformers.logging.set_verbosity_error()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        spm_dir = Path(tmp) / "spm"
        spm_dir.mkdir()
        shutil.copy(m2m.train_spm(Path(tmp)), spm_dir / "sentencepiece.bpe.model")
        tok = NllbTokenizer.from_pretrained(str(spm_dir), extra_special_tokens=FAIRSEQ_LANGUAGE_CODES)
    # As the hub's NLLB tokenizer_config.json says.
    tok.clean_up_tokenization_spaces = True
    assert tok.convert_tokens_to_ids("zul_Latn") != tok.unk_token_id
    tok.save_pretrained(str(OUT))

    texts = [t for _, t in SENTENCES]
    # The </s> scale under which beam-search outputs have the most different lengths, so
    # generation must end sentences at different steps (greedy output of this tiny model has one
    # length at any scale; its case below sets min/max lengths instead).
    def lengths(scale):
        model = m2m.build_model(len(tok) - 108, scale)
        return {len(x) for x in generate(model, tok, texts, "eng_Latn", "jpn_Jpan", {"num_beams": 4})}

    eos_scale = max((round(0.5 * i, 1) for i in range(1, 11)), key=lambda s: len(lengths(s)))
    model = m2m.build_model(len(tok) - 108, eos_scale)
    lens = lengths(eos_scale)
    print(f"eos_scale={eos_scale}, beam lengths={sorted(lens)}", file=sys.stderr)
    # NLLB's generation defaults: no num_beams (greedy), a max_length.
    model.generation_config = GenerationConfig(
        bos_token_id=0, decoder_start_token_id=2, eos_token_id=2, pad_token_id=1, max_length=40
    )
    model.save_pretrained(str(OUT), safe_serialization=True)
    cfg = json.loads((OUT / "config.json").read_text())
    cfg.pop("_name_or_path", None)
    (OUT / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    ref = {
        "generated_by": "tools/make_tiny_nllb.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenize": [],
        "decode": [],
        "generation": [],
    }
    for lang, text in SENTENCES:
        tok.src_lang = lang
        ref["tokenize"].append({"lang": lang, "text": text, "ids": tok(text)["input_ids"]})
    lang = tok.convert_tokens_to_ids
    for ids in (
        [2, lang("fra_Latn"), 100, 101, 102, 2],
        [2, lang("jpn_Jpan"), 0, 150, 1, 160, 3, 170, lang("deu_Latn"), 180, 2],
        [2, 2],
        list(range(4, 60)),
    ):
        ref["decode"].append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=True)})
    for case in GENERATION_CASES:
        ids = generate(model, tok, texts, "eng_Latn", case["tgt"], case["options"])
        ref["generation"].append(
            {
                "name": case["name"],
                "src": "eng_Latn",
                "tgt": case["tgt"],
                "options": case["options"],
                "ids": ids,
                "texts": [tok.decode(x, skip_special_tokens=True) for x in ids],
            }
        )
        print(f"{case['name']}: lengths={[len(x) for x in ids]}", file=sys.stderr)
    (OUT / "reference.json").write_text(json.dumps(ref, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
