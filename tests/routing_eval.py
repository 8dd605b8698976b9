"""The labelled questions of tests/routing_eval.jsonl (code, general or private; Russian and English; a dev
half the routing rules were written against, and a held-out half they were not) and their accuracy."""
import json
import os
from collections import defaultdict

from gateway import routing

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "routing_eval.jsonl")


def load() -> list:
    with open(PATH, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def route_of(question) -> str:
    """What model "auto" decides for the question alone (a new conversation)."""
    return routing.decide(question, [{"role": "user", "content": question}]).route


def accuracy(items) -> dict:
    """{"all" | "dev" | "heldout" | "en" | "ru" | label: (right, total)}, and the wrong ones under "wrong"."""
    counts, wrong = defaultdict(lambda: [0, 0]), []
    for item in items:
        ok = route_of(item["q"]) == item["label"]
        for key in ("all", item["split"], item["lang"], item["label"]):
            counts[key][0] += ok
            counts[key][1] += 1
        if not ok:
            wrong.append(item)
    return dict({k: tuple(v) for k, v in counts.items()}, wrong=wrong)
