"""Sluice from Python: `Client` and `AsyncClient` for `sluice serve`, and `stage`, which turns a
function into a Sluice `exec` pipeline stage.

`stage` needs only the standard library, so a stage program runs in any Python environment; the
clients (which need httpx) are imported when first used.
"""

from .stage import FatalError, RecordError, Stage, TransientError, stage

__all__ = [
    "AsyncClient",
    "Client",
    "RecordError",
    "SluiceError",
    "Stage",
    "TransientError",
    "FatalError",
    "stage",
]


def __getattr__(name):
    if name in ("Client", "AsyncClient", "SluiceError"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'sluice' has no attribute {name!r}")
