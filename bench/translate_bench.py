#!/usr/bin/env python3
"""Translation throughput and peak memory: `sluice translate` (int8 and float32) vs Python
transformers (float32) vs CTranslate2 (float32 and int8).

All run the same random-weight model with the full facebook/m2m100_418M architecture, or with
`--family nllb` facebook/nllb-200-distilled-600M's (the same layers with a 256,206-token
vocabulary, and the tiny NLLB fixture's tokenizer.json, whose ids are a subset of it) (no weights
can be downloaded here; speed does not depend on the weight values) on the CPU, at batch 1 and 16,
greedy and 5 beams, with every sentence forced to exactly 32 new tokens (min_new_tokens =
max_new_tokens = 32). Each measurement runs in its own process so its peak RSS (ru_maxrss of that
process) is its own; model loading is timed apart from generation, and cpu/wall is the process's
CPU time over the generation's wall time (2.0 = both cores busy at 2 threads).

Then the fidelity of int8: greedy tokens of the 16 sentences at batch 16 from each engine's int8
against the same engine's float32, as the share of positions where the tokens agree and the share
of tokens before the first disagreement.

Usage (from the repository root, after `cargo build --release -p sluice-cli`):
    python bench/translate_bench.py [--threads 2] [--family m2m100|nllb] [--isa avx2] [--work bench/.work] [--out bench/results.json]
Needs: pip install -r tools/requirements.txt ctranslate2
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "tiny-m2m100"
NLLB_FIXTURE = ROOT / "tests" / "fixtures" / "tiny-nllb"
# The model family measured (`--family`); workers get it on their command line.
FAMILY = "m2m100"
# The target language token of each family.
TARGET = {"m2m100": "__ja__", "nllb": "jpn_Jpan"}
NEW_TOKENS = 32
SENTENCES = [
    "Life is like a box of chocolates, you never know what you're gonna get.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Machine translation turns text in one language into text in another.",
    "I love pizza and coffee in the morning before going to work.",
    "Das Leben ist wie eine Schachtel Pralinen, man weiß nie, was man bekommt.",
    "La vie est comme une boîte de chocolats, on ne sait jamais sur quoi on va tomber.",
    "Numbers like 0123456789 and symbols such as #, $ and % appear in text too.",
    "The man on the bench said that life is like a box of chocolates.",
    "Please send the quarterly report to the finance team by Friday afternoon.",
    "The weather forecast predicts heavy rain and strong winds along the coast tonight.",
    "Our new library opens at nine and closes at six on weekdays.",
    "She plays the violin in a small orchestra that tours every summer.",
    "Researchers measured the speed of sound in water at several temperatures.",
    "Turn left at the second traffic light and the station is on your right.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Whales sing long songs that travel hundreds of kilometres under the sea.",
]


# What forces each engine to one instruction set. CTranslate2's own kernels read
# CT2_FORCE_CPU_ISA; its int8 and float32 GEMMs run in Intel MKL and oneDNN, which read their own
# variables, so all three are set or the peer keeps its AVX-512 GEMM; torch reads
# ATEN_CPU_CAPABILITY. Sluice's float32 products (candle's `gemm` crate on stable Rust) have no
# AVX-512 kernel, so they are AVX2 + FMA either way.
ISA_ENV = {
    "avx2": {"SLUICE_CPU_ISA": "avx2", "CT2_FORCE_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "ATEN_CPU_CAPABILITY": "avx2"},
    "avx512vnni": {"SLUICE_CPU_ISA": "avx512vnni", "CT2_FORCE_CPU_ISA": "AVX512",
                   "MKL_ENABLE_INSTRUCTIONS": "AVX512_E1", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI",
                   "ATEN_CPU_CAPABILITY": "avx512"},
}


def build_model(work: Path) -> Path:
    """Writes a random-weight M2M100 with the 418M configuration, or NLLB-200 with the
    distilled-600M one (once)."""
    nllb = FAMILY == "nllb"
    model_dir = work / ("nllb-600m-random" if nllb else "m2m100-418m-random")
    if (model_dir / "model.safetensors").exists():
        write_tokenizer(model_dir)
        return model_dir
    import torch
    from transformers import GenerationConfig, M2M100Config, M2M100ForConditionalGeneration

    config = M2M100Config(
        vocab_size=256206 if nllb else 128112,
        d_model=1024,
        encoder_layers=12,
        decoder_layers=12,
        encoder_attention_heads=16,
        decoder_attention_heads=16,
        encoder_ffn_dim=4096,
        decoder_ffn_dim=4096,
        max_position_embeddings=1024,
        scale_embedding=True,
        activation_function="relu",
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    torch.manual_seed(0)
    model = M2M100ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=0, decoder_start_token_id=2, eos_token_id=2, pad_token_id=1,
        max_length=200, num_beams=5, early_stopping=True,
    )
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(model_dir), safe_serialization=True)
    write_tokenizer(model_dir)
    return model_dir


def write_tokenizer(model_dir: Path):
    """NLLB: the tiny NLLB fixture's tokenizer files. M2M100: the tiny fixture's tokenizer, its vocab.json padded to the real model's 128004 entries so the
    language tokens get the real ids (128004..128103) and the vocabulary fills the 128112 rows."""
    if FAMILY == "nllb":
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(NLLB_FIXTURE / f, model_dir / f)
        return
    vocab = json.loads((FIXTURE / "vocab.json").read_text(encoding="utf-8"))
    for i in range(len(vocab), 128004):
        vocab[f"<filler{i}>"] = i
    (model_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    for f in ("sentencepiece.bpe.model", "tokenizer_config.json"):
        shutil.copy(FIXTURE / f, model_dir / f)


def convert_ct2(model_dir: Path, work: Path) -> Path:
    out = work / (model_dir.name + "-ct2")
    if FAMILY == "nllb" and not (out / "model.bin").exists():
        import ctranslate2
        from ctranslate2.converters import transformers as ct2_transformers

        def nllb_vocabulary(_self, _model, tokenizer):
            # The fixture tokenizer's tokens, then fillers up to the model's 256,206 rows.
            tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
            return tokens + [f"<filler{i}>" for i in range(len(tokens), 256206)]

        ct2_transformers.M2M100Loader.get_vocabulary = nllb_vocabulary
        ctranslate2.converters.TransformersConverter(str(model_dir)).convert(str(out), force=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(model_dir / f, out / f)
    if not (out / "model.bin").exists():
        import ctranslate2
        from ctranslate2.converters import transformers as ct2_transformers
        from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

        def vocabulary(_self, _model, _tokenizer):
            # CTranslate2 4.8 finds the language tokens under a key transformers 5 no longer fills;
            # give it the vocabulary exactly as the checkpoint lays it out.
            enc = json.loads((model_dir / "vocab.json").read_text(encoding="utf-8"))
            tokens = [t for t, _ in sorted(enc.items(), key=lambda kv: kv[1])]
            tokens += [f"__{c}__" for c in FAIRSEQ_LANGUAGE_CODES["m2m100"]]
            return tokens + [f"madeupword{i}" for i in range(8)]

        ct2_transformers.M2M100Loader.get_vocabulary = vocabulary
        ctranslate2.converters.TransformersConverter(str(model_dir)).convert(str(out), force=True)
        for f in ("vocab.json", "sentencepiece.bpe.model", "tokenizer_config.json"):
            shutil.copy(model_dir / f, out / f)
    return out


def tokenizer(model_dir):
    if FAMILY == "nllb":
        from transformers import NllbTokenizer

        return NllbTokenizer.from_pretrained(str(model_dir), src_lang="eng_Latn")
    from transformers import M2M100Tokenizer
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    langs = [f"__{c}__" for c in FAIRSEQ_LANGUAGE_CODES["m2m100"]]
    tok = M2M100Tokenizer(
        str(model_dir / "vocab.json"), str(model_dir / "sentencepiece.bpe.model"),
        additional_special_tokens=langs, src_lang="en",
    )
    return tok


def worker_hf(model_dir: Path, batch: int, beams: int, n: int, threads: int) -> dict:
    import torch
    from transformers import M2M100ForConditionalGeneration

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = M2M100ForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tok = tokenizer(model_dir)
    load = time.perf_counter() - t0
    texts = (SENTENCES * 4)[:n]
    kw = dict(num_beams=beams, min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS,
              forced_bos_token_id=tok.convert_tokens_to_ids(TARGET[FAMILY]), early_stopping=True)
    tokens = 0
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for i in range(0, n, batch):
            enc = tok(texts[i:i + batch], return_tensors="pt", padding=True)
            out = model.generate(**enc, **kw)
            tokens += (out.shape[1] - 1) * out.shape[0]
    return {"load_s": load, "gen_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "tokens": tokens}


def worker_ct2(ct2_dir: Path, batch: int, beams: int, n: int, threads: int,
               compute_type: str = "float32", hypotheses: bool = False) -> dict:
    import ctranslate2

    t0 = time.perf_counter()
    translator = ctranslate2.Translator(str(ct2_dir), device="cpu", compute_type=compute_type,
                                        intra_threads=threads, inter_threads=1)
    tok = tokenizer(ct2_dir)
    load = time.perf_counter() - t0
    texts = (SENTENCES * 4)[:n]
    sources = [tok.convert_ids_to_tokens(tok(t)["input_ids"]) for t in texts]
    tokens = 0
    hyps = []
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, n, batch):
        chunk = sources[i:i + batch]
        # The target prefix (language token) counts towards the decoding length, as in transformers.
        res = translator.translate_batch(
            chunk, target_prefix=[[TARGET[FAMILY]]] * len(chunk), beam_size=beams,
            min_decoding_length=NEW_TOKENS, max_decoding_length=NEW_TOKENS, max_batch_size=batch,
        )
        tokens += sum(len(r.hypotheses[0]) for r in res)
        hyps += [r.hypotheses[0] for r in res]
    out = {"load_s": load, "gen_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
           "tokens": tokens}
    if hypotheses:
        out["hypotheses"] = hyps
    return out


def worker_ct2_int8(ct2_dir: Path, batch: int, beams: int, n: int, threads: int, **kw) -> dict:
    return worker_ct2(ct2_dir, batch, beams, n, threads, compute_type="int8", **kw)


def measure(cmd, stdin_text=None, env=None):
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env)
    if stdin_text is not None:
        p.stdin.write(stdin_text.encode())
    p.stdin.close()
    out = p.stdout.read().decode()
    err = p.stderr.read().decode()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {err[-2000:]}")
    return out, err, usage.ru_maxrss / 1024


def run_sluice(binary: Path, model_dir: Path, batch: int, beams: int, n: int, threads: int,
               compute_type: str = "int8", ids: bool = False) -> dict:
    texts = (SENTENCES * 4)[:n]
    env = dict(os.environ, SLUICE_LOG="info", RAYON_NUM_THREADS=str(threads), NO_COLOR="1")
    cmd = [str(binary), "translate", "--model", str(model_dir), "--from", "en", "--to", "ja",
           "--beams", str(beams), "--min-new-tokens", str(NEW_TOKENS), "--max-new-tokens", str(NEW_TOKENS),
           "--batch-size", str(batch), "--compute-type", compute_type] + (["--output-ids"] if ids else [])
    out, err, rss = measure(cmd, "".join(t + "\n" for t in texts), env)
    assert len(out.splitlines()) == n, out
    secs = [float(x) for x in re.findall(r"(?<![a-z_])seconds=([0-9.]+)", err)]
    cpu = [float(x) for x in re.findall(r"cpu_seconds=([0-9.]+)", err)]
    r = {"load_s": secs[0], "gen_s": secs[1] if n else 0.0, "cpu_s": cpu[0] if cpu else 0.0,
         "tokens": NEW_TOKENS * n, "peak_rss_mib": rss}
    if ids:
        r["hypotheses"] = [line.split()[2:] for line in out.splitlines()]  # past start + language
    return r


def agreement(a, b):
    """Share of positions where two engines' greedy tokens agree, and share before the first
    disagreement, over all sentences."""
    same = prefix = total = 0
    for x, y in zip(a, b):
        total += max(len(x), len(y))
        same += sum(1 for p, q in zip(x, y) if p == q)
        k = 0
        while k < min(len(x), len(y)) and x[k] == y[k]:
            k += 1
        prefix += k
    return same / total, prefix / total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / ".work")
    ap.add_argument("--sluice", type=Path, default=ROOT / "target" / "release" / "sluice")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results-translate.json")
    ap.add_argument("--systems", default="sluice-int8,sluice-float32,transformers,ctranslate2,ctranslate2-int8")
    ap.add_argument("--no-agreement", action="store_true", help="skip the int8 fidelity comparison")
    ap.add_argument("--family", choices=sorted(TARGET), default="m2m100",
                    help="the model architecture measured (random weights)")
    ap.add_argument("--isa", choices=sorted(ISA_ENV),
                    help="force every engine to one instruction set (default: each picks its best)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--beams", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()

    global FAMILY
    FAMILY = a.family
    if a.worker:
        fn = {"transformers": worker_hf, "ctranslate2": worker_ct2, "ctranslate2-int8": worker_ct2_int8,
              "ct2-ids-float32": lambda *x: worker_ct2(*x, hypotheses=True),
              "ct2-ids-int8": lambda *x: worker_ct2_int8(*x, hypotheses=True)}[a.worker]
        print(json.dumps(fn(a.dir, a.batch, a.beams, a.n, a.threads)))
        return

    if a.isa:
        # Set before any engine starts: workers and sluice inherit the environment.
        os.environ.update(ISA_ENV[a.isa])
    a.work.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(a.work)
    systems = a.systems.split(",")
    dirs = {"transformers": model_dir}
    if any(s.startswith("ctranslate2") for s in systems):
        dirs["ctranslate2"] = dirs["ctranslate2-int8"] = convert_ct2(model_dir, a.work)
    results = []
    # n = 0: load the model and exit, so peak RSS is that of loading alone.
    for batch, n in ((1, 0), (1, 4), (16, 16)):
        for beams in ((1,) if n == 0 else (1, 5)):
            for system in systems:
                if system.startswith("sluice"):
                    ct = system.split("-", 1)[1] if "-" in system else "int8"
                    r = run_sluice(a.sluice, model_dir, batch, beams, n, a.threads, ct)
                else:
                    cmd = [sys.executable, __file__, "--worker", system, "--dir", str(dirs[system]),
                           "--batch", str(batch), "--beams", str(beams), "--n", str(n), "--threads", str(a.threads),
                           "--family", a.family]
                    out, _, rss = measure(cmd, "")
                    r = json.loads(out.strip().splitlines()[-1])
                    r["peak_rss_mib"] = rss
                r.update(system=system, batch=batch, beams=beams, sentences=n,
                         tokens_per_s=r["tokens"] / r["gen_s"] if r["tokens"] else 0.0,
                         cpu_per_wall=r["cpu_s"] / r["gen_s"] if r["tokens"] else 0.0)
                results.append(r)
                print(f"{system:16s} batch={batch:2d} beams={beams} load={r['load_s']:6.2f}s "
                      f"gen={r['gen_s']:7.2f}s tokens/s={r['tokens_per_s']:8.1f} "
                      f"cpu/wall={r['cpu_per_wall']:4.2f} peak_rss={r['peak_rss_mib']:7.0f} MiB", flush=True)
    fidelity = {}
    if not a.no_agreement:
        # Greedy, batch 16, the 16 sentences: int8 against float32 within each engine.
        s8 = run_sluice(a.sluice, model_dir, 16, 1, 16, a.threads, "int8", ids=True)["hypotheses"]
        s32 = run_sluice(a.sluice, model_dir, 16, 1, 16, a.threads, "float32", ids=True)["hypotheses"]
        fidelity["sluice"] = agreement(s32, s8)
        if "ctranslate2" in dirs:
            hyps = {}
            for ct in ("float32", "int8"):
                cmd = [sys.executable, __file__, "--worker", f"ct2-ids-{ct}", "--dir", str(dirs["ctranslate2"]),
                       "--batch", "16", "--beams", "1", "--n", "16", "--threads", str(a.threads),
                       "--family", a.family]
                out, _, _ = measure(cmd, "")
                hyps[ct] = [h[1:] for h in json.loads(out.strip().splitlines()[-1])["hypotheses"]]
            fidelity["ctranslate2"] = agreement(hyps["float32"], hyps["int8"])
        for k, (same, prefix) in fidelity.items():
            print(f"int8 vs float32 greedy tokens, {k}: {same:.1%} agree by position, "
                  f"{prefix:.1%} before the first disagreement", flush=True)
    a.out.write_text(json.dumps({"threads": a.threads, "new_tokens": NEW_TOKENS, "isa": a.isa or "native", "family": a.family,
                                 "results": results,
                                 "int8_agreement": fidelity}, indent=1))


if __name__ == "__main__":
    main()
