"""Model "auto"'s decisions on the labelled set (tests/routing_eval.jsonl): accuracy above a floor on the
whole set, on its held-out half and in each language, and no private question missed (a missed one would
be sent to the cloud)."""
import routing_eval
from gateway import routing, secret_scan

FLOOR = 0.95


def rate(pair):
    return pair[0] / pair[1]


def test_the_set_is_large_varied_and_split():
    items = routing_eval.load()
    assert len(items) >= 200 and len({i["q"] for i in items}) == len(items)
    for key, values in (("lang", {"en", "ru"}), ("label", {"code", "general", "private"}),
                        ("split", {"dev", "heldout"})):
        assert {i[key] for i in items} == values
    assert min(sum(i["lang"] == lang and i["label"] == label for i in items)
               for lang in ("en", "ru") for label in ("code", "general", "private")) >= 14


def test_accuracy_is_above_the_floor():
    acc = routing_eval.accuracy(routing_eval.load())
    wrong = [(i["label"], i["q"][:80]) for i in acc["wrong"]]
    for key in ("all", "heldout", "dev", "en", "ru"):
        assert rate(acc[key]) >= FLOOR, (key, acc[key], wrong)


def test_no_private_question_is_missed_and_few_are_flagged_wrongly():
    acc = routing_eval.accuracy(routing_eval.load())
    assert acc["private"][0] == acc["private"][1], [i["q"][:80] for i in acc["wrong"] if i["label"] == "private"]
    flagged = [i["q"] for i in routing_eval.load() if i["label"] != "private" and secret_scan.find(i["q"])]
    assert len(flagged) <= 2, flagged


def test_redaction_leaves_no_secret_of_the_set():
    for item in routing_eval.load():
        if item["label"] == "private":
            clean = secret_scan.redact(item["q"])
            assert secret_scan.REDACTED in clean and not secret_scan.find(clean), (item["q"], clean)


def test_code_words_in_a_general_sense_and_technical_russian():
    assert routing_eval.route_of("Чем кормить королевского питона в террариуме?") == "general"
    assert routing_eval.route_of("Как вывести на экран содержимое словаря в питоне?") == "code"
    assert routing_eval.route_of("What does a bug bite from a bed bug look like?") == "general"
    assert routing.decide("Привет", [{"role": "system", "content": "token: ghp_" + "a1B2" * 9},
                                     {"role": "user", "content": "Привет"}]).route == "private"
