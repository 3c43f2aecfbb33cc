#!/usr/bin/env python3
"""The service our users ran before Sluice, for comparison: FastAPI + uvicorn + transformers, one
model copy per worker process, `model.generate` once per request over that request's records, no
batching across requests. Same JSON contract as `POST /translation`.

Run: MODEL_DIR=<dir> TORCH_THREADS=1 uvicorn fastapi_baseline:app --app-dir bench --workers 2 --port 9528
"""

import os

import torch
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import M2M100ForConditionalGeneration, M2M100Tokenizer
from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
MODEL_DIR = os.environ["MODEL_DIR"]
model = M2M100ForConditionalGeneration.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
tokenizer = M2M100Tokenizer(
    os.path.join(MODEL_DIR, "vocab.json"),
    os.path.join(MODEL_DIR, "sentencepiece.bpe.model"),
    additional_special_tokens=[f"__{c}__" for c in FAIRSEQ_LANGUAGE_CODES["m2m100"]],
)
app = FastAPI()


class Record(BaseModel):
    id: str
    text: str


class Payload(BaseModel):
    fromLang: str
    toLang: str
    records: list[Record]
    beams: int | None = None
    maxNewTokens: int | None = None


class Request(BaseModel):
    payload: Payload


@app.get("/healthz")
def healthz():
    return {"status": "alive"}


@app.post("/translation")
def translation(req: Request):
    p = req.payload
    tokenizer.src_lang = p.fromLang
    enc = tokenizer([r.text for r in p.records], return_tensors="pt", padding=True)
    kwargs = {"forced_bos_token_id": tokenizer.get_lang_id(p.toLang)}
    if p.beams:
        kwargs["num_beams"] = p.beams
    if p.maxNewTokens:
        kwargs["max_new_tokens"] = p.maxNewTokens
    with torch.no_grad():
        out = model.generate(**enc, **kwargs)
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    return {"result": [{"id": r.id, "text": t} for r, t in zip(p.records, texts)]}
