"""A Sluice `exec` stage: collapses whitespace in `text` and refuses empty texts, which sends that
one record to the run's failures file while the rest go on. `sluice.stage` (in python/, standard
library only) runs the JSON-lines loop; any Python environment works, as the stage is a separate
process per worker.
"""

import sluice


@sluice.stage
def clean(record):
    text = " ".join(record.get("text", "").split())
    if not text:
        raise sluice.RecordError("empty text")
    return {**record, "text": text}


if __name__ == "__main__":
    clean.run()
