"""Model "auto"'s decision (gateway/routing.decide: the secrets scan, then the code/general rules) on the
labelled set tests/routing_eval.jsonl: accuracy (held-out half, dev half, all, per language), the time one
decision takes (median and p95 over every question, each decided REPEATS times, in this process), and what
detect-secrets alone misses of the private questions, which our own rules catch.

    .venv/bin/python bench/routing.py"""
import time

from _common import fmt, header, md_table, median, pct  # (puts tests/ on sys.path)

import routing_eval
from gateway import routing, secret_scan

REPEATS = 20


def timings(items):
    per_question = []
    for item in items:
        messages = [{"role": "user", "content": item["q"]}]
        t0 = time.perf_counter()
        for _ in range(REPEATS):
            routing.decide(item["q"], messages)
        per_question.append((time.perf_counter() - t0) / REPEATS * 1000)
    return per_question


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
    print(md_table(["decision time (ms)", "median", "p95", "max"],
                   [["secrets scan + rules", fmt(median(ms), 3), fmt(pct(ms, 95), 3), fmt(max(ms), 3)]]))
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
