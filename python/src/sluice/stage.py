"""Sluice `exec` stages from Python functions.

The engine writes a batch of records, one JSON object per line, to the program's stdin and reads
one line per record back, in order. A reply `{"sluice_error": ...}` fails that record alone
(`"transient": true` asks for a retry). This module runs that loop around a function.

A setup that raises, or a `FatalError` raised for a record, stops the whole run at once rather
than having the engine restart the program to fail the same way: the program answers
`{"sluice_fatal": "why"}` and exits with status 78 (EX_CONFIG).
"""

import json
import os
import select
import sys
import traceback


class RecordError(Exception):
    """Fails the record it was raised for; the run goes on with the others."""


class TransientError(RecordError):
    """Fails the record for now: the engine retries it (up to the stage's retry limit)."""


class FatalError(Exception):
    """Stops the run: every worker would fail the same way (a missing model, a bad setting)."""


EX_CONFIG = 78


def _fatal(out, why):
    out.write(json.dumps({"sluice_fatal": why}, ensure_ascii=False) + "\n")
    out.flush()
    sys.exit(EX_CONFIG)


def _error_reply(exc):
    message = str(exc) or type(exc).__name__
    if isinstance(exc, TransientError):
        return {"sluice_error": {"message": message, "transient": True}}
    if isinstance(exc, RecordError):
        return {"sluice_error": message}
    # A bug in the stage is a failed record too, with where it happened.
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return {"sluice_error": f"{type(exc).__name__}: {message} ({frame.filename}:{frame.lineno})"}


class _Lines:
    """Complete lines from a file descriptor: one blocking read, then whatever is ready now,
    which is how a batch the engine wrote at once is told from the next one."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = b""
        self.eof = False

    def _fill(self, block):
        if self.eof:
            return
        if not block and not select.select([self.fd], [], [], 0)[0]:
            return
        chunk = os.read(self.fd, 1 << 16)
        if chunk:
            self.buf += chunk
        else:
            self.eof = True

    def batch(self, limit):
        """At least one line (None at the end of input), and up to `limit` that are ready."""
        while b"\n" not in self.buf and not self.eof:
            self._fill(block=True)
        lines = []
        while len(lines) < limit:
            if b"\n" not in self.buf:
                self._fill(block=False)
                if b"\n" not in self.buf:
                    break
            line, self.buf = self.buf.split(b"\n", 1)
            lines.append(line)
        if not lines and self.buf and self.eof:
            lines, self.buf = [self.buf], b""
        return lines or None


class Stage:
    """A function run as an exec stage; `run()` serves stdin/stdout until stdin closes."""

    def __init__(self, fn, batch=False, setup=None, max_batch=1024):
        self.fn = fn
        self.batch = batch
        self.setup = setup
        self.max_batch = max_batch
        self.__name__ = getattr(fn, "__name__", "stage")
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def _replies(self, records, context):
        args = (context,) if self.setup is not None else ()
        if not self.batch:
            out = []
            for record in records:
                if isinstance(record, Exception):
                    out.append(_error_reply(record))
                    continue
                try:
                    out.append(self.fn(record, *args))
                except FatalError:
                    raise
                except Exception as exc:  # noqa: BLE001 - every failure is this record's
                    out.append(_error_reply(exc))
            return out
        good = [r for r in records if not isinstance(r, Exception)]
        try:
            results = list(self.fn(good, *args)) if good else []
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - the batch failed: each record says why
            results = [exc] * len(good)
        if len(results) != len(good):
            why = RecordError(f"the stage returned {len(results)} results for {len(good)} records")
            results = [why] * len(good)
        results = iter(results)
        out = []
        for record in records:
            r = record if isinstance(record, Exception) else next(results)
            out.append(_error_reply(r) if isinstance(r, Exception) else r)
        return out

    def run(self, stdin=None, stdout=None):
        """Reads records from `stdin` (fd 0) and writes one reply line per record to `stdout`."""
        out = stdout or sys.stdout
        try:
            context = self.setup() if self.setup is not None else None
        except Exception as exc:  # noqa: BLE001 - any setup failure is reported, then fatal
            traceback.print_exc()
            _fatal(out, f"setup failed: {type(exc).__name__}: {exc}")
        lines = _Lines(stdin.fileno() if stdin is not None else sys.stdin.fileno())
        while True:
            batch = lines.batch(self.max_batch if self.batch else 1)
            if batch is None:
                return
            records = []
            for line in batch:
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    records.append(RecordError(f"not a JSON record: {exc}"))
            try:
                replies = self._replies(records, context)
            except FatalError as exc:
                _fatal(out, str(exc) or "FatalError")
            for reply in replies:
                out.write(json.dumps(reply, ensure_ascii=False) + "\n")
            out.flush()


def stage(fn=None, *, batch=False, setup=None, max_batch=1024):
    """Makes `fn(record) -> record` (or, with `batch=True`, `fn(records) -> results`) an exec
    stage: decorate it, then call `.run()` when the file is run as a program. With `setup`, its
    return value (a loaded model, a client) is made once per worker process and passed to `fn`
    as its second argument."""

    def wrap(f):
        return Stage(f, batch=batch, setup=setup, max_batch=max_batch)

    return wrap(fn) if fn is not None else wrap
