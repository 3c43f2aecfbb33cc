"""A Sluice `exec` stage: JSON lines in on stdin, one JSON line out per input on stdout.

Collapses whitespace in `text` and refuses empty texts with a `sluice_error` reply, which sends
that one record to the run's failures file while the rest go on. Any Python environment works:
the stage is a separate process per worker.
"""

import json
import sys

for line in sys.stdin:
    record = json.loads(line)
    text = " ".join(record.get("text", "").split())
    if not text:
        reply = {"sluice_error": "empty text"}
    else:
        reply = {**record, "text": text}
    print(json.dumps(reply, ensure_ascii=False), flush=True)
