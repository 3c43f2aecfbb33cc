#!/usr/bin/env python3
"""Builds the ONNX audio-classifier test fixtures in tests/fixtures/onnx/.

Rerun (from the repository root):

    python3 -m venv tools/.venv-onnx
    tools/.venv-onnx/bin/pip install -r tools/requirements-onnx.txt
    tools/.venv-onnx/bin/python tools/make_onnx_fixtures.py

The script deletes tests/fixtures/onnx/ and writes it anew. Weights come from
numpy.random.default_rng with fixed seeds and the signals from fixed formulas or seeded rngs,
so the same package versions give byte-identical files (check with sha256sum). It exits
non-zero if a check fails and ends by printing a summary.

Files (paths relative to tests/fixtures/onnx/)
  tone-detector/model.onnx          16 kHz, window 1.0 s, hop 0.5 s, labels noise/tone/sweep;
                                    the graph outputs logits, sluice applies a sigmoid per label
  tone-detector/sluice-model.toml
  tone-detector/reference.json      expected scores for the 16 kHz audio files
  call-classifier/model.onnx        8 kHz, window 0.5 s, hop 0.25 s, labels background/call;
                                    the graph outputs logits, sluice applies a softmax
  call-classifier/sluice-model.toml
  call-classifier/reference.json    expected scores for call-8k-mono.wav
  broken/sluice-model.toml          a valid manifest ...
  broken/model.onnx                 ... next to a file that is not ONNX (b"not an onnx model\\n")
  audio/tone-16k-mono.wav           16 kHz mono 3.3 s: 1.2 s 440 Hz tone (amplitude 0.5),
                                    1.2 s linear sweep 200 -> 4000 Hz (amplitude 0.5),
                                    0.9 s low gaussian noise (std 0.02)
  audio/tone-48k-mono.wav           the same signal generated at 48 kHz (resampling tests; it
                                    has no reference of its own: compare with tone-16k-mono's)
  audio/noise-16k-mono.wav          16 kHz mono 0.7 s of noise (shorter than one window)
  audio/tone-16k-stereo.wav         16 kHz stereo 2.0 s: left 440 Hz tone, right 200 -> 4000 Hz
                                    sweep (both amplitude 0.5)
  audio/call-8k-mono.wav            8 kHz mono 2.1 s: two Hann-shaped chirps in low noise

WAV files are 16-bit PCM written with the standard `wave` module: a sample x in [-1, 1) is
stored as clip(round(x * 32768), -32768, 32767) and decodes exactly to int16 / 32768.0.

Model graph contract
  input  "waveform" float32 [batch, S]   (batch is the symbolic dim_param "batch",
                                          S = window samples)
  output "scores"   float32 [batch, L]   (L = number of labels; raw logits here)
  Opset 13, ir_version 7, only Unsqueeze, Conv, Relu, MaxPool/AveragePool,
  GlobalAveragePool, Flatten and Gemm.

Reference computation (what the Rust side must reproduce)
  1. Decode the WAV to float32: int16 / 32768. Stereo is downmixed to mono by averaging the
     channels in float32, (left + right) * 0.5 (exact for 16-bit input).
  2. Cut windows. With n samples at the model's rate, w = round(window_seconds * rate) and
     h = round(hop_seconds * rate) samples:
       * windows start at 0, h, 2h, ... for every start with start + w <= n;
       * if n < w there is a single window, at 0;
       * if n > w and (n - w) % h != 0, one more window starts at the next hop position after
         the last full window (the first k * h with k * h + w > n);
       * a window that extends past n is zero-padded at the end;
       * start_seconds = start / rate, end_seconds = min(start + w, n) / rate.
     (n = 0 does not occur in these fixtures.)
  3. Run all windows of a file as one batch [windows, w] through onnxruntime
     (CPUExecutionProvider). The script checks that running the windows one at a time gives
     the same logits.
  4. Activation: the float32 logits are converted to float64, the sigmoid (per label) or the
     softmax (over the labels, max-subtracted) is computed in float64 and the result cast to
     float32. reference.json holds these float32 values ("scores") and the raw graph outputs
     ("logits"), written as the shortest Python repr of the float64 value of each float32, so
     parsing as f64 and casting to f32 gives the exact float32.
  Tolerance: another runtime (tract) reorders the float32 sums in Conv/Gemm, so compare with a
  small absolute tolerance (about 1e-4 on scores), not bit for bit.

Weights: conv kernels and Gemm weights are drawn from default_rng(seed) (He-style scale). The
classifier's last Gemm is then calibrated on the test windows: each label's logits (sigmoid
model) or each label's logit minus the first label's (softmax model) are mapped linearly onto
about [-2.5, 2.5], with the scale and shift rounded to 3 significant digits, so the scores are
spread out (about 0.08 .. 0.92) rather than saturated.
"""

import hashlib
import json
import shutil
import sys
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "onnx"
GENERATOR = "tools/make_onnx_fixtures.py"
OPSET = 13
IR_VERSION = 7  # the IR version that goes with opset 13; tract-onnx and onnxruntime read it
SIZE_LIMIT = 100_000
LOGIT_TARGET = 2.5  # calibrated logits span about [-LOGIT_TARGET, LOGIT_TARGET]


# ---------------------------------------------------------------------------------- signals
def times(rate: int, seconds: float) -> np.ndarray:
    return np.arange(round(seconds * rate), dtype=np.float64) / rate


def tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2.0 * np.pi * freq * times(rate, seconds))


def linear_sweep(rate: int, seconds: float, f0: float, f1: float, amp: float = 0.5) -> np.ndarray:
    """Linear chirp: the instantaneous frequency goes from f0 to f1 over `seconds`."""
    t = times(rate, seconds)
    phase = 2.0 * np.pi * (f0 * t + (f1 - f0) * t * t / (2.0 * seconds))
    return amp * np.sin(phase)


def gaussian_noise(rate: int, seconds: float, std: float, seed: int) -> np.ndarray:
    return std * np.random.default_rng(seed).standard_normal(round(seconds * rate))


def tone_sweep_noise(rate: int) -> np.ndarray:
    """1.2 s tone, 1.2 s sweep 200 -> 4000 Hz, 0.9 s low noise (3.3 s in all)."""
    return np.concatenate(
        [
            tone(rate, 1.2),
            linear_sweep(rate, 1.2, 200.0, 4000.0),
            gaussian_noise(rate, 0.9, 0.02, seed=rate + 1),
        ]
    )


def chirps_in_noise(rate: int) -> np.ndarray:
    """2.1 s of low noise with two 0.3 s Hann-shaped chirps, at 0.3 s and at 1.2 s."""
    x = gaussian_noise(rate, 2.1, 0.02, seed=rate + 2)
    for start, f0, f1 in [(0.3, 800.0, 2400.0), (1.2, 2000.0, 1000.0)]:
        c = linear_sweep(rate, 0.3, f0, f1, amp=0.6) * np.hanning(round(0.3 * rate))
        i = round(start * rate)
        x[i : i + len(c)] += c
    return x


# ---------------------------------------------------------------------------------- wav i/o
def write_wav(rel: str, rate: int, channels: list[np.ndarray]) -> np.ndarray:
    """Writes 16-bit PCM; returns the decoded samples, float32 (frames, channels)."""
    x = np.stack(channels, axis=1)
    q = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")
    path = OUT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(q.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(q).tobytes())
    return decode_wav(rel)


def decode_wav(rel: str) -> np.ndarray:
    with wave.open(str(OUT / rel), "rb") as w:
        assert w.getsampwidth() == 2
        raw = w.readframes(w.getnframes())
        q = np.frombuffer(raw, dtype="<i2").reshape(-1, w.getnchannels())
    return (q.astype(np.float32) / np.float32(32768.0)).astype(np.float32)


def to_mono(samples: np.ndarray) -> np.ndarray:
    if samples.shape[1] == 1:
        return samples[:, 0].copy()
    assert samples.shape[1] == 2
    return ((samples[:, 0] + samples[:, 1]) * np.float32(0.5)).astype(np.float32)


# ---------------------------------------------------------------------------------- windows
def window_starts(n: int, w: int, h: int) -> list[int]:
    """The windowing rule of the module docstring."""
    if n < w:
        return [0]
    starts = list(range(0, n - w + 1, h))
    if (n - w) % h != 0:
        starts.append(starts[-1] + h)
    return starts


def cut_windows(x: np.ndarray, w: int, h: int) -> tuple[np.ndarray, list[int]]:
    starts = window_starts(len(x), w, h)
    batch = np.zeros((len(starts), w), dtype=np.float32)
    for i, s in enumerate(starts):
        part = x[s : s + w]
        batch[i, : len(part)] = part
    return batch, starts


# ---------------------------------------------------------------------------------- models
@dataclass
class Spec:
    name: str
    comment: str
    rate: int
    window_seconds: float
    hop_seconds: float
    labels: list[str]
    output: str  # "sigmoid" or "softmax"
    seed: int
    # conv layers: (out_channels, kernel, stride), each followed by Relu and the pool below
    convs: list[tuple[int, int, int]]
    pools: list[tuple[str, int, int] | None]  # (op, kernel, stride) after a conv, or None

    @property
    def window(self) -> int:
        return round(self.window_seconds * self.rate)

    @property
    def hop(self) -> int:
        return round(self.hop_seconds * self.rate)


def random_weights(spec: Spec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec.seed)
    weights = {}
    in_ch = 1
    for i, (out_ch, k, _) in enumerate(spec.convs):
        fan_in = in_ch * k
        weights[f"conv{i}.weight"] = rng.normal(0.0, np.sqrt(2.0 / fan_in), (out_ch, in_ch, k))
        weights[f"conv{i}.bias"] = rng.normal(0.0, 0.01, out_ch)
        in_ch = out_ch
    weights["fc.weight"] = rng.normal(0.0, np.sqrt(1.0 / in_ch), (len(spec.labels), in_ch))
    weights["fc.bias"] = np.zeros(len(spec.labels))
    return {k: v.astype(np.float32) for k, v in weights.items()}


def build_model(spec: Spec, weights: dict[str, np.ndarray]) -> bytes:
    nodes = [helper.make_node("Unsqueeze", ["waveform", "axes"], ["x0"], name="unsqueeze")]
    inits = [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")]
    x = "x0"
    for i, ((_, k, stride), pool) in enumerate(zip(spec.convs, spec.pools)):
        w, b = f"conv{i}.weight", f"conv{i}.bias"
        inits += [numpy_helper.from_array(weights[w], w), numpy_helper.from_array(weights[b], b)]
        nodes.append(
            helper.make_node(
                "Conv", [x, w, b], [f"conv{i}"], name=f"conv{i}", kernel_shape=[k], strides=[stride]
            )
        )
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        x = f"relu{i}"
        if pool is not None:
            op, pk, ps = pool
            nodes.append(
                helper.make_node(op, [x], [f"pool{i}"], name=f"pool{i}", kernel_shape=[pk], strides=[ps])
            )
            x = f"pool{i}"
    inits += [
        numpy_helper.from_array(weights["fc.weight"], "fc.weight"),
        numpy_helper.from_array(weights["fc.bias"], "fc.bias"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["features"], name="flatten", axis=1),
        helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["scores"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        spec.name,
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", spec.window])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(spec.labels)])],
        initializer=inits,
        doc_string=f"{spec.comment} Outputs logits; apply {spec.output}.",
    )
    model = helper.make_model(
        graph,
        producer_name="sluice " + GENERATOR,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def run_model(model: bytes, batch: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    (out,) = sess.run(["scores"], {"waveform": batch})
    assert out.dtype == np.float32 and out.shape == (batch.shape[0], sess.get_outputs()[0].shape[1])
    return out


def round3(v: float) -> float:
    return float(f"{v:.3g}")


def calibrate(spec: Spec, weights: dict[str, np.ndarray], logits: np.ndarray) -> dict[str, np.ndarray]:
    """Rescales the last Gemm so the calibration logits span about [-2.5, 2.5]."""
    w = weights["fc.weight"].astype(np.float64)
    b = weights["fc.bias"].astype(np.float64)
    lg = logits.astype(np.float64)
    if spec.output == "sigmoid":
        # per label: logit' = a * logit + c, with [min, max] -> [-T, T]
        for j in range(len(spec.labels)):
            lo, hi = lg[:, j].min(), lg[:, j].max()
            a = round3(2.0 * LOGIT_TARGET / (hi - lo))
            c = round3(-LOGIT_TARGET - a * lo)
            w[j] *= a
            b[j] = a * b[j] + c
    else:
        # softmax: one common scale so that (logit_j - logit_0) spans [-T, T], each label's
        # bias shifted so the middle of that span is 0
        d = lg - lg[:, :1]
        spans = [d[:, j].max() - d[:, j].min() for j in range(1, len(spec.labels))]
        a = round3(2.0 * LOGIT_TARGET / max(spans))
        w *= a
        b *= a
        for j in range(1, len(spec.labels)):
            b[j] += round3(-a * (d[:, j].max() + d[:, j].min()) / 2.0)
    out = dict(weights)
    out["fc.weight"] = w.astype(np.float32)
    out["fc.bias"] = b.astype(np.float32)
    return out


def activate(output: str, logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    if output == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
    elif output == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        s = e / e.sum(axis=1, keepdims=True)
    else:
        raise ValueError(output)
    return s.astype(np.float32)


# ---------------------------------------------------------------------------------- writers
def toml_text(spec_comment: str, rate: int, window: float, hop: float, labels: list[str], output: str) -> str:
    labels_toml = ", ".join(json.dumps(label) for label in labels)
    return (
        f"# {spec_comment}\n"
        'kind = "audio-classifier"\n'
        'model = "model.onnx"\n'
        f"sample_rate = {rate}\n"
        f"window_seconds = {window!r}\n"
        f"hop_seconds = {hop!r}\n"
        f"labels = [{labels_toml}]\n"
        f'output = "{output}"   # "scores" (graph output as is), "sigmoid" or "softmax" (applied by Sluice)\n'
    )


def write_text(rel: str, text: str) -> None:
    path = OUT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


def write_bytes(rel: str, data: bytes) -> None:
    path = OUT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def f32_list(a: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(a, dtype=np.float32)]


# ---------------------------------------------------------------------------------- main
TONE = Spec(
    name="tone-detector",
    comment="Tiny random-weight 1-D CNN over 16 kHz audio (noise/tone/sweep), "
    "generated by tools/make_onnx_fixtures.py.",
    rate=16000,
    window_seconds=1.0,
    hop_seconds=0.5,
    labels=["noise", "tone", "sweep"],
    output="sigmoid",
    seed=1601,
    convs=[(8, 64, 16), (16, 8, 4)],
    pools=[("MaxPool", 4, 4), None],
)

CALL = Spec(
    name="call-classifier",
    comment="Tiny random-weight 1-D CNN over 8 kHz audio (background/call), "
    "generated by tools/make_onnx_fixtures.py.",
    rate=8000,
    window_seconds=0.5,
    hop_seconds=0.25,
    labels=["background", "call"],
    output="softmax",
    seed=801,
    convs=[(4, 32, 8)],
    pools=[("AveragePool", 4, 4)],
)


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    failures: list[str] = []

    # audio: rel path -> (rate, decoded float32 (frames, channels))
    audio = {
        "audio/tone-16k-mono.wav": (16000, write_wav("audio/tone-16k-mono.wav", 16000, [tone_sweep_noise(16000)])),
        "audio/tone-48k-mono.wav": (48000, write_wav("audio/tone-48k-mono.wav", 48000, [tone_sweep_noise(48000)])),
        "audio/noise-16k-mono.wav": (
            16000,
            write_wav("audio/noise-16k-mono.wav", 16000, [gaussian_noise(16000, 0.7, 0.2, seed=7)]),
        ),
        "audio/tone-16k-stereo.wav": (
            16000,
            write_wav(
                "audio/tone-16k-stereo.wav",
                16000,
                [tone(16000, 2.0), linear_sweep(16000, 2.0, 200.0, 4000.0)],
            ),
        ),
        "audio/call-8k-mono.wav": (8000, write_wav("audio/call-8k-mono.wav", 8000, [chirps_in_noise(8000)])),
    }
    inputs = {
        "tone-detector": ["audio/tone-16k-mono.wav", "audio/noise-16k-mono.wav", "audio/tone-16k-stereo.wav"],
        "call-classifier": ["audio/call-8k-mono.wav"],
    }

    summary: list[str] = []
    for spec in (TONE, CALL):
        batches = []
        for rel in inputs[spec.name]:
            rate, samples = audio[rel]
            assert rate == spec.rate
            batch, starts = cut_windows(to_mono(samples), spec.window, spec.hop)
            batches.append((rel, batch, starts, len(samples)))

        # random model -> calibrate the last layer on all test windows -> final model
        weights = random_weights(spec)
        raw = run_model(build_model(spec, weights), np.concatenate([b for _, b, _, _ in batches]))
        model = build_model(spec, calibrate(spec, weights, raw))
        if len(model) >= SIZE_LIMIT:
            failures.append(f"{spec.name}/model.onnx is {len(model)} bytes")
        write_bytes(f"{spec.name}/model.onnx", model)
        write_text(
            f"{spec.name}/sluice-model.toml",
            toml_text(spec.comment, spec.rate, spec.window_seconds, spec.hop_seconds, spec.labels, spec.output),
        )

        files = []
        all_scores = []
        for rel, batch, starts, n in batches:
            logits = run_model(model, batch)
            single = np.concatenate([run_model(model, batch[i : i + 1]) for i in range(len(batch))])
            diff = float(np.abs(single - logits).max())
            if diff > 1e-6:
                failures.append(f"{spec.name} {rel}: batch vs single max diff {diff}")
            scores = activate(spec.output, logits)
            all_scores.append(scores)
            windows = [
                {
                    "start": s / spec.rate,
                    "end": min(s + spec.window, n) / spec.rate,
                    "scores": f32_list(scores[i]),
                    "logits": f32_list(logits[i]),
                }
                for i, s in enumerate(starts)
            ]
            files.append({"file": rel, "windows": windows})
            summary.append(
                f"{spec.name:16} {rel:26} frames={n:6} windows={len(starts)} "
                f"starts={starts} batch-vs-single max|diff|={diff:g}"
            )
            for i, s in enumerate(starts):
                summary.append(
                    f"{'':16}   [{s / spec.rate:5.2f}, {min(s + spec.window, n) / spec.rate:5.2f}] "
                    f"scores={np.array2string(scores[i], precision=3)}"
                )
        reference = {
            "generator": GENERATOR,
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "files": files,
        }
        write_text(f"{spec.name}/reference.json", json.dumps(reference, indent=1) + "\n")
        s = np.concatenate(all_scores)
        for j, label in enumerate(spec.labels):
            summary.append(f"{spec.name:16} {spec.output} {label:10} min={s[:, j].min():.3f} max={s[:, j].max():.3f}")
            if spec.output == "sigmoid" and not (s[:, j].min() > 0.02 and s[:, j].max() < 0.98):
                failures.append(f"{spec.name} {label}: scores saturated")
        if spec.output == "softmax" and not (s.min() > 0.02 and s.max() < 0.98):
            failures.append(f"{spec.name}: softmax scores saturated")

    write_bytes("broken/model.onnx", b"not an onnx model\n")
    write_text(
        "broken/sluice-model.toml",
        toml_text(
            "Deliberately broken: model.onnx is not an ONNX file (clear-error test); "
            "written by tools/make_onnx_fixtures.py.",
            16000,
            1.0,
            0.5,
            ["noise", "tone", "sweep"],
            "sigmoid",
        ),
    )

    print("\n".join(summary))
    print()
    for path in sorted(p for p in OUT.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        print(f"{path.stat().st_size:8}  {digest}  {path.relative_to(OUT)}")
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
