"""Model "auto"'s decision (gateway/routing.decide: the secrets scan, then the code/general rules) on the
labelled set tests/routing_eval.jsonl: accuracy (held-out half, dev half, all, per language), the CPU time
one decision takes (median and p95 over every question, each decided REPEATS times with the scan cache
emptied first, in this process: CPU time, as the machine is shared), the scan of 100k characters, and what
detect-secrets alone misses of the private questions, which our own rules catch.

    .venv/bin/python -m bench.routing"""
import time

import routing_eval
from bench._common import fmt, header, md_table, median, pct
from gateway import routing, secret_scan

REPEATS = 20


def timings(items):
    per_question = []
    for item in items:
        messages = [{"role": "user", "content": item["q"]}]
        spent = 0.0
        for _ in range(REPEATS):
            routing.kinds_in.cache_clear()
            t0 = time.process_time()
            routing.decide(item["q"], messages)
            spent += time.process_time() - t0
        per_question.append(spent / REPEATS * 1000)
    return per_question


def long_scans():
    """CPU ms to scan 100k characters: a conversation's worth of the set's questions, and code."""
    texts = {"100k chars of the set's questions": "\n".join(i["q"] for i in routing_eval.load()) * 3,
             "100k chars of code": "def total(items):\n    return sum(i.price for i in items)\n" * 1800}
    rows = []
    for name, text in texts.items():
        t0 = time.process_time()
        secret_scan.find(text[:100_000])
        rows.append([name, fmt((time.process_time() - t0) * 1000, 1)])
    return rows


def main():
    t0 = time.perf_counter()
    import detect_secrets.plugins  # noqa: F401 - (already imported: the import cost is the first call's)
    items = routing_eval.load()
    acc = routing_eval.accuracy(items)
    rows = [[key, f"{acc[key][0]}/{acc[key][1]}", fmt(100 * acc[key][0] / acc[key][1], 1) + " %"]
            for key in ("heldout", "dev", "all", "en", "ru", "code", "general", "private")]
    private = [i for i in items if i["label"] == "private"]
    missed = [i for i in private if not secret_scan.find(i["q"], library_only=True)]
    flagged = [i for i in items if i["label"] != "private" and secret_scan.find(i["q"], library_only=True)]
    ms = timings(items)
    header("Model auto: routing decisions", [f"{len(items)} labelled questions, {REPEATS} decisions each"])
    print(md_table(["questions", "right", "accuracy"], rows))
    print()
    print(md_table(["decision CPU time (ms)", "median", "p95", "max"],
                   [["secrets scan + rules", fmt(median(ms), 3), fmt(pct(ms, 95), 3), fmt(max(ms), 3)]]))
    print()
    print(md_table(["secrets scan of", "CPU ms"], long_scans()))
    print()
    print(f"detect-secrets alone misses {len(missed)} of {len(private)} private questions (our rules catch them) "
          f"and flags {len(flagged)} non-private ones; with our rules: "
          f"{acc['private'][1] - acc['private'][0]} missed.")
    for i in missed:
        print("  missed:", i["q"][:90].replace("\n", " | "))
    for i in acc["wrong"]:
        print(f"  wrong ({i['split']}, {i['label']}):", i["q"][:90].replace("\n", " | "))
    print(f"(ran in {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
