"""A real `sluice serve` for the client tests, and the paths the tests share.

`SLUICE_BIN` names the binary (the Rust test that runs these sets it); by default the debug build.
"""

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


def sluice_bin():
    return os.environ.get("SLUICE_BIN", str(ROOT / "target" / "debug" / "sluice"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_en_ja():
    """Source texts and transformers' en->ja translations of the tiny model (beam defaults)."""
    r = json.loads((FIXTURES / "tiny-m2m100" / "reference.json").read_text())
    case = next(c for c in r["generation"] if c["name"] == "beam_defaults")
    pairs = zip((e["text"] for e in r["encoder"]), case["texts"])
    return [(s, t) for s, t in pairs if s]


def _serve(data, extra=()):
    """Starts `sluice serve` on the fixtures (with `extra` flags); its URL and process."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sluice_bin(), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--model", f"m2m100={FIXTURES / 'tiny-m2m100'}",
            "--model", f"tone={FIXTURES / 'onnx' / 'tone-detector'}",
            "--data-root", str(data), "--compute-type", "float32", "--max-input-tokens", "128",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(url + "/readyz", timeout=1).status == 200:
                break
        except OSError:
            pass
        assert proc.poll() is None, "sluice serve exited"
        assert time.time() < deadline, "sluice serve did not get ready"
        time.sleep(0.05)
    return url, proc


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    wav = FIXTURES / "onnx" / "audio" / "tone-16k-mono.wav"
    (data / "tone.wav").write_bytes(wav.read_bytes())
    url, proc = _serve(data)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory):
    """A server that takes only the API key `secret-key`."""
    url, proc = _serve(tmp_path_factory.mktemp("keyed"), ["--api-key", "secret-key"])
    yield url
    proc.terminate()
    proc.wait(timeout=30)
