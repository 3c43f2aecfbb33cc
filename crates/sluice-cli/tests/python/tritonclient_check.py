"""Runs Triton's own HTTP client (tritonclient[http]) against a running `sluice serve`.

Usage: tritonclient_check.py HOST:PORT REQUEST.json
REQUEST.json: {"texts": [...], "source_lang": "en", "target_lang": "ja",
               "audio_file": "/abs/file.wav", "audio_path": "file.wav"}
Prints one JSON object with what the client got; the Rust test compares it with the references.
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def main() -> None:
    url, request_file = sys.argv[1], sys.argv[2]
    with open(request_file, encoding="utf-8") as f:
        req = json.load(f)
    client = httpclient.InferenceServerClient(url=url)
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server": client.get_server_metadata(),
        "translation_metadata": client.get_model_metadata("m2m100"),
        "classifier_metadata": client.get_model_metadata("tone", model_version="1"),
        "classifier_ready": client.is_model_ready("tone"),
    }
    params = {"source_lang": req["source_lang"], "target_lang": req["target_lang"]}

    texts = np.array([t.encode("utf-8") for t in req["texts"]], dtype=np.object_)
    # The client's default: binary tensors both ways.
    text = httpclient.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(texts)
    result = client.infer("m2m100", [text], parameters=params, request_id="t-1")
    out["translation_binary"] = [b.decode("utf-8") for b in result.as_numpy("translation")]
    out["translation_id"] = result.get_response().get("id")
    # JSON tensors both ways.
    text = httpclient.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(texts, binary_data=False)
    wanted = [httpclient.InferRequestedOutput("translation", binary_data=False)]
    result = client.infer("m2m100", [text], outputs=wanted, parameters=params)
    out["translation_json"] = [
        b.decode("utf-8") if isinstance(b, bytes) else str(b)
        for b in result.as_numpy("translation")
    ]

    with open(req["audio_file"], "rb") as f:
        audio_bytes = f.read()
    audio = httpclient.InferInput("audio", [1], "BYTES")
    audio.set_data_from_numpy(np.array([audio_bytes], dtype=np.object_))
    result = client.infer("tone", [audio])
    out["audio"] = {
        name: result.as_numpy(name).tolist()
        for name in ["scores", "start", "end", "input_index", "duration"]
    }
    out["audio_scores_dtype"] = str(result.as_numpy("scores").dtype)
    path = httpclient.InferInput("path", [1], "BYTES")
    path.set_data_from_numpy(np.array([req["audio_path"].encode()], dtype=np.object_))
    result = client.infer("tone", [path], outputs=[httpclient.InferRequestedOutput("scores")])
    out["path_scores"] = result.as_numpy("scores").tolist()

    try:
        client.infer("no-such-model", [path])
        out["unknown_model"] = None
    except InferenceServerException as e:
        out["unknown_model"] = {"status": e.status(), "message": e.message()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
