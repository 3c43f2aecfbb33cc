"""`sluice.stage` programs run by a real `sluice run`: records through a per-record function, a
batch function with a setup hook, per-record errors in the failures file, transient errors
retried, and the exit status that says records failed."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import ROOT, sluice_bin

SRC = ROOT / "python" / "src"


def run_pipeline(tmp_path, program, records, workers=2):
    (tmp_path / "stage.py").write_text(textwrap.dedent(program))
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "pipeline.toml").write_text(
        textwrap.dedent(
            f"""
            [source]
            kind = "jsonl"
            path = "{tmp_path / 'in.jsonl'}"
            key = "id"

            [[stage]]
            kind = "exec"
            name = "py"
            command = ["{sys.executable}", "{tmp_path / 'stage.py'}"]
            env = {{ PYTHONPATH = "{SRC}" }}
            batch_size = 4
            workers = {workers}

            [sink]
            kind = "jsonl"
            path = "{tmp_path / 'out'}"
            """
        )
    )
    done = subprocess.run(
        [sluice_bin(), "run", str(tmp_path / "pipeline.toml"), "--progress", "off"],
        capture_output=True,
        text=True,
        env={**os.environ, "SLUICE_LOG": "warn"},
    )
    out = {}
    for part in (tmp_path / "out").glob("part-*.jsonl"):
        for line in part.read_text().splitlines():
            r = json.loads(line)
            out[r["id"]] = r
    failures_file = tmp_path / "out" / "_failures.jsonl"
    failures = [json.loads(l) for l in failures_file.read_text().splitlines()] if failures_file.exists() else []
    return done, out, failures


CLEAN = """
    import sluice

    @sluice.stage
    def clean(record):
        text = " ".join(record.get("text", "").split())
        if not text:
            raise sluice.RecordError("empty text")
        if text == "boom":
            raise ValueError("a bug")
        return {**record, "text": text}

    if __name__ == "__main__":
        clean.run()
"""


def test_a_record_function_with_per_record_errors(tmp_path):
    records = [{"id": f"r{i}", "text": f"  hello   {i} "} for i in range(20)]
    records += [{"id": "empty", "text": "   "}, {"id": "bug", "text": "boom"}]
    done, out, failures = run_pipeline(tmp_path, CLEAN, records)
    assert done.returncode == 3, done.stderr
    assert {k: v["text"] for k, v in out.items()} == {f"r{i}": f"hello {i}" for i in range(20)}
    why = {f["key"]: f["error"] for f in failures}
    assert set(why) == {"empty", "bug"}, failures
    assert "empty text" in why["empty"]
    assert "ValueError: a bug" in why["bug"] and "stage.py" in why["bug"]


BATCHED = """
    import os
    import sluice

    def load():
        return {"factor": 3, "pid": os.getpid()}

    @sluice.stage(batch=True, setup=load)
    def triple(records, model):
        return [{**r, "n": r["n"] * model["factor"], "batch": len(records), "pid": model["pid"]}
                for r in records]

    if __name__ == "__main__":
        triple.run()
"""


def test_a_batch_function_with_a_setup_hook(tmp_path):
    records = [{"id": f"r{i}", "n": i} for i in range(40)]
    done, out, failures = run_pipeline(tmp_path, BATCHED, records)
    assert done.returncode == 0, done.stderr
    assert failures == []
    assert {k: v["n"] for k, v in out.items()} == {f"r{i}": 3 * i for i in range(40)}
    # Records the engine sent together were handled together, and setup ran once per worker.
    assert max(v["batch"] for v in out.values()) > 1
    assert len({v["pid"] for v in out.values()}) <= 2


FLAKY = """
    import os
    import sluice

    seen = set()

    @sluice.stage
    def flaky(record):
        if record["id"] == "flaky" and record["id"] not in seen:
            seen.add(record["id"])
            raise sluice.TransientError("try again")
        return record

    if __name__ == "__main__":
        flaky.run()
"""


def test_a_transient_error_is_retried(tmp_path):
    done, out, failures = run_pipeline(
        tmp_path, FLAKY, [{"id": "flaky"}, {"id": "fine"}], workers=1
    )
    assert done.returncode == 0, done.stderr
    assert set(out) == {"flaky", "fine"} and failures == []


SETUP_FAILS = """
    import os
    import sluice

    def load():
        with open(os.environ["SETUPS"], "a") as f:
            f.write("x")
        raise FileNotFoundError("no model at /models/missing")

    @sluice.stage(setup=load)
    def use(record, model):
        return record

    if __name__ == "__main__":
        use.run()
"""


def test_a_setup_that_fails_stops_the_run_at_once(tmp_path, monkeypatch):
    setups = tmp_path / "setups"
    monkeypatch.setenv("SETUPS", str(setups))
    records = [{"id": f"r{i}"} for i in range(20)]
    done, out, _ = run_pipeline(tmp_path, SETUP_FAILS, records, workers=1)
    assert done.returncode == 1, done.stderr
    assert "setup failed: FileNotFoundError: no model at /models/missing" in done.stderr
    assert "not retried" in done.stderr
    # One program started, not one per restart (the stage's default allows 8).
    assert setups.read_text() == "x"
    assert out == {}


FATAL_RECORD = """
    import sluice

    @sluice.stage
    def check(record):
        if record["id"] == "bad-config":
            raise sluice.FatalError("the record names a tokenizer this build lacks")
        return record

    if __name__ == "__main__":
        check.run()
"""


def test_a_fatal_error_from_a_record_stops_the_run(tmp_path):
    records = [{"id": "bad-config"}] + [{"id": f"r{i}"} for i in range(3)]
    done, _, _ = run_pipeline(tmp_path, FATAL_RECORD, records, workers=1)
    assert done.returncode == 1, done.stderr
    assert "the record names a tokenizer this build lacks" in done.stderr
