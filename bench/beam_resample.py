"""Apache Beam side of the Sluice audio-resample benchmark (bench/audio_bench.py).

The job: every audio file under ``--source`` whose name ends in one of the
``--suffix`` values is decoded, resampled to ``--target_sr`` (default 16 kHz)
keeping its channels, and written as 16-bit PCM WAV to the same relative path
under ``--target`` with the suffix replaced by ``.wav``.

It is written the way klay-beam (github.com/klay-music/klay-beam) builds its
audio jobs, with librosa + soundfile in place of torchaudio:

    MatchFiles(<source>/**<suffix>)   one per suffix, flattened
    -> Reshuffle                      break fusion so the work is spread out
    -> ReadMatches                    FileMetadata -> ReadableFile
    -> LoadWithLibrosa                librosa.load(file_like, sr=None, mono=False)
    -> ResampleWithLibrosa            librosa.resample(..., res_type="soxr_hq")
    -> MirrorPath                     <source>/a/b.mp3 -> <target>/a/b.wav
    -> EncodeWav                      soundfile.write(BytesIO, PCM_16)
    -> WriteFile                      FileSystems.create(path).write(bytes)

Why librosa + soundfile rather than torchaudio: the CPU torch + torchaudio
wheels are several hundred MB more to install for no gain here; soundfile's
bundled libsndfile (>= 1.1) decodes MP3 itself, and librosa's "soxr_hq" is the
same libsoxr high-quality resampler that sox uses by default.

The Reshuffle matters on the DirectRunner too: MatchFiles starts from a
one-element Create, and the FnApiRunner only splits a stage's *input* across
``--direct_num_workers``; without the Reshuffle the whole fused
load/resample/write stage would run in a single worker process.

Run (everything after the known flags goes to Beam's PipelineOptions)::

    bench/.work/beam-venv/bin/python bench/beam_resample.py \\
        --source SRC --target DST [--suffix .wav --suffix .mp3] \\
        [--target_sr 16000] \\
        --runner DirectRunner --direct_num_workers 2 \\
        --direct_running_mode multi_processing

Needs: bench/requirements-beam.txt installed in the Python that runs it.
Only errors and a one-line summary go to stderr; nothing is printed to stdout.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time

import apache_beam as beam
import apache_beam.io.fileio as beam_io
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions


class LoadWithLibrosa(beam.DoFn):
    """ReadableFile -> (path, float32 array shaped (channels, frames), sr)."""

    def setup(self):
        # Import in the worker: keeps the pickled DoFn small and makes the
        # import cost show up once per worker process, as it would on a real
        # runner.
        import librosa  # noqa: F401

    def process(self, readable_file):
        import librosa

        path = readable_file.metadata.path
        with readable_file.open(mime_type="application/octet-stream") as fh:
            audio, sr = librosa.load(fh, sr=None, mono=False)
        if audio.ndim == 1:  # mono source: keep it mono, but 2-D
            audio = audio[None, :]
        yield path, audio, int(sr)


class ResampleWithLibrosa(beam.DoFn):
    """(path, audio, sr) -> (path, audio resampled to target_sr, target_sr)."""

    def __init__(self, target_sr: int, res_type: str = "soxr_hq"):
        self._target_sr = int(target_sr)
        self._res_type = res_type

    def process(self, element):
        import librosa

        path, audio, sr = element
        if sr != self._target_sr:
            audio = librosa.resample(
                audio,
                orig_sr=sr,
                target_sr=self._target_sr,
                res_type=self._res_type,
                axis=-1,
            )
        yield path, audio, self._target_sr


def mirror_path(source_root: str, target_root: str, path: str) -> str:
    rel = os.path.relpath(path, source_root)
    stem, _ext = os.path.splitext(rel)
    return os.path.join(target_root, stem + ".wav")


def encode_wav(element):
    """(out_path, audio (C, T) float, sr) -> (out_path, wav bytes, PCM_16)."""
    import numpy as np
    import soundfile as sf

    out_path, audio, sr = element
    buf = io.BytesIO()
    sf.write(buf, np.ascontiguousarray(audio.T), sr, format="WAV", subtype="PCM_16")
    return out_path, buf.getvalue()


def write_file(element):
    out_path, data = element
    # LocalFileSystem.create makes the parent directories (exist_ok=True).
    with FileSystems.create(out_path, mime_type="audio/wav") as fh:
        fh.write(data)
    return out_path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="source directory")
    p.add_argument("--target", required=True, help="target directory")
    p.add_argument(
        "--suffix",
        action="append",
        default=None,
        help="file suffix to pick up (repeatable; default .wav and .mp3)",
    )
    p.add_argument("--target_sr", type=int, default=16000)
    p.add_argument("--res_type", default="soxr_hq")
    known, pipeline_args = p.parse_known_args(argv)
    known.suffix = known.suffix or [".wav", ".mp3"]
    return known, pipeline_args


def run(argv=None) -> int:
    known, pipeline_args = parse_args(argv)
    source = os.path.abspath(known.source)
    target = os.path.abspath(known.target)
    if not any(a.startswith("--default_sdk_harness_log_level") for a in pipeline_args):
        # The multi_processing workers log every gRPC channel at INFO.
        pipeline_args = pipeline_args + ["--default_sdk_harness_log_level=WARNING"]
    options = PipelineOptions(pipeline_args)

    t0 = time.perf_counter()
    with beam.Pipeline(options=options) as p:
        matched = [
            p | f"Match {sfx}" >> beam_io.MatchFiles(os.path.join(source, f"**{sfx}"))
            for sfx in known.suffix
        ]
        written = (
            matched
            | "Flatten" >> beam.Flatten()
            | "Reshuffle" >> beam.Reshuffle()
            | "ReadMatches" >> beam_io.ReadMatches()
            | "Load" >> beam.ParDo(LoadWithLibrosa())
            | f"Resample {known.target_sr}Hz"
            >> beam.ParDo(ResampleWithLibrosa(known.target_sr, known.res_type))
            | "MirrorPath"
            >> beam.Map(lambda e: (mirror_path(source, target, e[0]), e[1], e[2]))
            | "EncodeWav" >> beam.Map(encode_wav)
            | "Write" >> beam.Map(write_file)
        )
        _ = (
            written
            | "Count" >> beam.combiners.Count.Globally()
            | "Report"
            >> beam.Map(
                lambda n: print(f"beam_resample: wrote {n} files", file=sys.stderr)
            )
        )
    print(
        f"beam_resample: pipeline finished in {time.perf_counter() - t0:.2f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(run())
