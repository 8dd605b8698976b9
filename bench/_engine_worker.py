#!/usr/bin/env python
"""The bare engine in a process of its own, for bench/stream_overhead.py: loads the model once,
then for each JSON line on stdin ({"messages", "params"}) runs engine.generate() and answers one
JSON line with the times (ms from the generate() call) of every text chunk and the usage.

    PYTHONPATH=CHECKOUT python bench/_engine_worker.py ENGINE MODEL_DIR CACHE MAX_SEQ_LEN

It imports `engines` from CHECKOUT (this one, or another to compare engine changes: --engine-repo).
"""
import json
import sys
import threading
import time

from engines import GenParams, create_engine


def main():
    kind, model, cache, max_seq_len = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    engine = create_engine(kind, model, cache, max_seq_len)
    engine.load()
    out = sys.stdout
    out.write(json.dumps({"ready": True, "status": {k: v for k, v in engine.status().items() if k != "memory"}}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        params = GenParams(**req["params"])
        t0 = time.perf_counter()
        times, texts, last = [], [], None
        for chunk in engine.generate(req["messages"], params, threading.Event()):
            now = (time.perf_counter() - t0) * 1000
            if chunk.text:
                times.append(now)
                texts.append(chunk.text)
            last = chunk
        end = (time.perf_counter() - t0) * 1000
        out.write(json.dumps({"times": times, "text": "".join(texts), "end": end, "usage": last.usage,
                              "finish_reason": last.finish_reason}, ensure_ascii=False) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
