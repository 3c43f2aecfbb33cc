"""The clients against a real `sluice serve` (tiny translation model, tone detector), and their
retry rule against a server that refuses with 503 + Retry-After."""

import asyncio
import http.server
import json
import threading
import time

import pytest

import sluice
from conftest import reference_en_ja


def test_translate_matches_transformers_reference(server):
    pairs = reference_en_ja()[:4]
    with sluice.Client(server) as client:
        assert client.ready()
        got = client.translate([s for s, _ in pairs], "en", "ja")
    assert got == [t for _, t in pairs]


def test_async_translate_matches_and_runs_concurrently(server):
    pairs = reference_en_ja()[:4]

    async def main():
        async with sluice.AsyncClient(server) as client:
            assert await client.ready()
            return await asyncio.gather(*(client.translate([s], "en", "ja") for s, _ in pairs))

    assert [r[0] for r in asyncio.run(main())] == [t for _, t in pairs]


def test_v1_and_v2_infer_and_models(server):
    with sluice.Client(server) as client:
        names = {m["name"]: m["kind"] for m in client.models()}
        assert names == {"m2m100": "translation", "tone": "audio-classifier"}
        scored = client.infer("tone", [{"id": "a", "path": "tone.wav"}])
        assert scored["labels"] == ["noise", "tone", "sweep"]
        windows = scored["outputs"][0]["windows"]
        assert len(windows) > 1
        v2 = client.v2_infer("tone", {"path": ["tone.wav"]}, outputs=["scores"])
        assert v2["scores"] == pytest.approx([s for w in windows for s in w["scores"]], abs=1e-6)
        text = reference_en_ja()[0]
        out = client.v2_infer(
            "m2m100", {"text": [text[0]]}, parameters={"source_lang": "en", "target_lang": "ja"}
        )
        assert out["translation"] == [text[1]]


def test_errors_carry_status_code_and_message(server):
    with sluice.Client(server, retries=0) as client:
        with pytest.raises(sluice.SluiceError) as e:
            client.translate(["hi"], "en", "xx")
        assert e.value.status == 422 and "xx" in e.value.message
        with pytest.raises(sluice.SluiceError) as e:
            client.v2_infer("nope", {"text": ["hi"]})
        assert e.value.status == 404 and "m2m100" in e.value.message


class _Busy(http.server.BaseHTTPRequestHandler):
    """503 with Retry-After for the first `refusals` requests, then a translation."""

    refusals = 2
    seen = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        _Busy.seen.append(time.monotonic())
        if len(_Busy.seen) <= _Busy.refusals:
            payload = b'{"error": {"code": "overloaded", "message": "queue full"}}'
            self.send_response(503)
            self.send_header("Retry-After", "0.3")
        else:
            records = body["payload"]["records"]
            payload = json.dumps({"result": [{"id": r["id"], "text": "ok"} for r in records]}).encode()
            self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def busy():
    _Busy.seen = []
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def test_retry_after_is_honoured_sync_and_async(busy):
    with sluice.Client(busy) as client:
        assert client.translate(["a", "b"], "en", "fr") == ["ok", "ok"]
    gaps = [b - a for a, b in zip(_Busy.seen, _Busy.seen[1:])]
    assert len(_Busy.seen) == 3 and all(g >= 0.29 for g in gaps), gaps

    _Busy.seen = []

    async def main():
        async with sluice.AsyncClient(busy) as client:
            return await client.translate(["a"], "en", "fr")

    assert asyncio.run(main()) == ["ok"]
    assert len(_Busy.seen) == 3

    _Busy.seen = []
    with sluice.Client(busy, retries=1) as client:
        with pytest.raises(sluice.SluiceError) as e:
            client.translate(["a"], "en", "fr")
    assert e.value.status == 503 and e.value.retry_after == pytest.approx(0.3)


def test_api_keys_are_sent_as_bearer_tokens(keyed_server):
    with sluice.Client(keyed_server, retries=0) as client:
        with pytest.raises(sluice.SluiceError) as err:
            client.translate(["Hello"], "en", "ja")
    assert (err.value.status, err.value.code) == (401, "unauthorized")
    with sluice.Client(keyed_server, api_key="secret-key") as client:
        assert len(client.translate(["Hello"], "en", "ja")) == 1

    async def run():
        async with sluice.AsyncClient(keyed_server, api_key="secret-key") as client:
            return await client.translate(["Hello", "World"], "en", "ja")

    assert len(asyncio.run(run())) == 2
