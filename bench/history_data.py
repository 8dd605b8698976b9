"""The synthetic history bench/history.py measures /history on: ~1,000,000 messages in ~20,000
conversations, built once with the project's own schema (db.init_db) and cached under .cache/bench/.

Build: sqlite3 executemany in large transactions, then one FTS5 'rebuild' of the full-text index and an
emptied index queue (fts_pending). The content is a realistic mix: 2/3 GigaChat and 1/3 Qwen conversations
of very uneven length (a few hundred messages for the longest), Russian and English prose with a Zipf word
distribution, code blocks in Qwen answers, short questions and long answers. Two rare marker words (one
Latin, one Cyrillic) are planted in exactly 25 messages each; "the" and "что" are the common words."""
import json
import math
import os
import random
import sqlite3
import sys
import time

import db
from bench._common import CACHE_DIR

RARE_EN, RARE_RU, RARE_COUNT = "zyzzogeton", "квазиэкситон", 25
DB_FORMAT = 6  # bump when the generator changes, so cached files are rebuilt

EN_COMMON = ("the of and to a in is it you that he was for on are with as I his they be at one have this from "
             "or had by not word but what some we can out other were all there when up use your how said an "
             "each she which do their time if will way about many then them write would like so these her long "
             "make thing see him two has look more day could go come did number sound no most people my over "
             "know water than call first who may down side been now find any new work part take get place made "
             "live where after back little only round man year came show every good me give our under name very "
             "through just form sentence great think say help low line differ turn cause much mean before move "
             "right boy old too same tell does set three want air well also play small end put home read hand "
             "port large spell add even land here must big high such follow act why ask men change went light "
             "server model token stream request error cache memory python function return value list string "
             "file test data query index table thread process latency answer question context window").split()
RU_COMMON = ("и в не на я быть он с что а по это она этот к но они мы как из у который то за свой весь год от "
             "так о для ты же все тот мочь вы человек такой его сказать только или ещё бы себя один как уже до "
             "время если сам когда другой вот говорить наш мой знать стать при чтобы дело жизнь кто первый очень "
             "два день её новый рука даже во со раз где там под можно ну какой после их работа без самый потом "
             "надо хотеть ли слово идти большой должен место иметь ничто то сейчас тоже стоять друг дом теперь "
             "модель сервер запрос ответ ошибка память поток токен функция значение список строка файл тест "
             "данные индекс таблица задержка вопрос контекст окно код программа пример пользователь система").split()
CODE_LINES = ("def {a}({b}):", "    return {b} + {n}", "for {a} in range({n}):", "    {b}.append({a})",
              "if {a} is None:", "    raise ValueError('{a}')", "import {a}", "from {a} import {b}",
              "class {A}:", "    def __init__(self, {a}):", "        self.{a} = {a}", "{a} = {b}({n})",
              "print(f'{a}={{{b}}}')", "with open('{a}.txt') as f:", "    data = json.load(f)",
              "async def {a}({b}):", "    await {b}.{a}()", "# {a} {b}", "{a}: int = {n}", "try:",
              "except KeyError as e:", "    log.warning('{a}: %s', e)", "yield {a}", "assert {a} == {b}")


def _pseudo_words(rng, n, alphabet_syllables):
    out, seen = [], set()
    while len(out) < n:
        w = "".join(rng.choice(alphabet_syllables) for _ in range(rng.randint(2, 4)))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


class Generator:
    def __init__(self, seed=42):
        self.rng = rng = random.Random(seed)
        en_syl = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"] + ["th", "ch", "sh", "er", "an", "on"]
        ru_syl = [c + v for c in "бвгдзклмнпрстфхцчшщ" for v in "аеиоуыяю"] + ["ст", "пр", "ов", "ен", "ть"]
        self.vocab = {}
        for lang, common, syl in (("en", EN_COMMON, en_syl), ("ru", RU_COMMON, ru_syl)):
            words = list(dict.fromkeys(common)) + [w for w in _pseudo_words(rng, 40000, syl)
                                                   if w not in (RARE_EN, RARE_RU)]
            # Zipf (s = 1.07): the top words appear in nearly every message, the tail in a handful.
            cum, total = [], 0.0
            for r in range(len(words)):
                total += 1.0 / (r + 1) ** 1.07
                cum.append(total)
            self.vocab[lang] = (words, cum)
        self.idents = _pseudo_words(rng, 3000, en_syl)

    def prose(self, lang, n_words):
        words, cum = self.vocab[lang]
        ws = self.rng.choices(words, cum_weights=cum, k=n_words)
        out, i = [], 0
        while i < len(ws):
            k = self.rng.randint(5, 18)
            s = " ".join(ws[i:i + k])
            out.append(s[:1].upper() + s[1:] + self.rng.choice(".....?!"))
            i += k
        return " ".join(out)

    def code(self, n_lines):
        r, idents = self.rng, self.idents
        lines = []
        for _ in range(n_lines):
            a, b = r.choice(idents), r.choice(idents)
            lines.append(r.choice(CODE_LINES).format(a=a, b=b, A=a.capitalize(), n=r.randint(0, 999)))
        return "```python\n" + "\n".join(lines) + "\n```"

    def words(self, median, sigma, lo, hi):
        return max(lo, min(hi, int(self.rng.lognormvariate(math.log(median), sigma))))

    def question(self, lang):
        return self.prose(lang, self.words(14, 0.8, 1, 400))

    def answer(self, lang, provider):
        r = self.rng
        text = self.prose(lang, self.words(70, 0.9, 3, 1500))
        if provider == "qwen" and r.random() < 0.6 or r.random() < 0.1:
            text += "\n\n" + self.code(self.words(12, 0.7, 2, 120)) + "\n\n" + self.prose(lang, self.words(20, 0.6, 3, 200))
        return text


PARAMS_BY_PROVIDER = {
    "gigachat": json.dumps({"temperature": 0.7, "top_p": 0.9, "max_tokens": 1024}),
    "qwen": json.dumps({"temperature": 0.4, "top_p": 0.9, "top_k": 60, "repetition_penalty": 1.1, "max_tokens": None}),
}
MESSAGE_INSERT = ("INSERT INTO messages (conversation_id, role, content, provider, model, system_prompt, params, "
                  "prompt_tokens, completion_tokens, precached_prompt_tokens, latency_ms, finish_reason, status, "
                  "error, created_at, question_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _remove(path, suffixes=("", "-wal", "-shm")):
    for suffix in suffixes:
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)


def _conversations(rng, n_exchanges, n_convs):
    """(conversations, their questions' (time, conversation index) in time order) over the last year."""
    # Conversation sizes: lognormal, heavy-tailed (median ~30 messages, the longest ~1,500).
    weights = [rng.lognormvariate(0.0, 1.0) for _ in range(n_convs)]
    scale = (n_exchanges - n_convs) / sum(weights)
    sizes = [1 + int(w * scale) for w in weights]
    for c in rng.sample(range(n_convs), n_exchanges - sum(sizes)):  # the rounding remainder, spread
        sizes[c] += 1
    year = 365 * 86400.0
    t_end = time.time() - 86400
    t_begin = t_end - year
    convs, events = [], []
    for c, size in enumerate(sizes):
        provider = "gigachat" if rng.random() < 0.66 else "qwen"
        lang = "ru" if rng.random() < 0.6 else "en"
        start = t_begin + rng.random() * (year - 3600)
        span = min(t_end - start, rng.choice((600.0, 3600.0, 86400.0, 7 * 86400.0)))
        times = sorted(start + rng.random() * span for _ in range(size))
        sid = "%032x" % rng.getrandbits(128)
        model = (rng.choice(("GigaChat:2.0.28.2", "GigaChat-Pro:2.0.28.2", "GigaChat-2-Max:2.0.28.2"))
                 if provider == "gigachat" else "Qwen2.5-Coder-7B-Instruct")
        system = rng.choice(("", "", "You are a helpful assistant.", "Отвечай кратко и по делу."))
        convs.append([sid, provider, model, system, None, times[0], times[-1], lang])
        events += [(t, c) for t in times]
    events.sort()
    return convs, events


def _exchange(g, conv, t, k, q_extra, a_extra, history_tokens):
    """The question and answer rows of one exchange; the question is row k + 1 of a new table."""
    sid, provider, model, system, _, _, _, lang = conv
    params = PARAMS_BY_PROVIDER[provider]
    q, a = g.question(lang) + q_extra, g.answer(lang, provider) + a_extra
    pt = history_tokens + len(q) // 4 + 20
    ct = len(a) // 4
    latency = round(g.rng.uniform(300, 9000), 2)
    status, finish, err = "ok", "stop", None
    u = g.rng.random()
    if u < 0.01:
        status, finish, err, a = "error", None, "GigaChat failed (status 500): try again.", ""
    elif u < 0.02:
        status, finish, err = "cancelled", None, "client disconnected"
    return ((sid, "user", q, provider, None, system, params, None, None, None, None, None, "ok", None, t, None),
            (sid, "assistant", a, provider, model, system, params, pt, ct, pt // 2 if provider == "gigachat" else None,
             latency, finish, status, err, t + latency / 1000, k + 1))


def _insert_messages(conn, g, convs, events, rare_at, log, t0):
    """Every exchange, in time order, in transactions of 50,000 rows: (messages, titles, generate s, insert s)."""
    titles, batch, k, t_gen, t_ins = {}, [], 0, 0.0, 0.0
    history_tokens = [0] * len(convs)

    def flush():
        nonlocal t_ins
        tb = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(MESSAGE_INSERT, batch)
        conn.execute("COMMIT")
        t_ins += time.perf_counter() - tb
        batch.clear()

    for t, c in events:
        ta = time.perf_counter()
        q_extra, a_extra = (" " + rare_at[i] if i in rare_at else "" for i in (k, k + 1))
        question, answer = _exchange(g, convs[c], t, k, q_extra, a_extra, history_tokens[c])
        titles.setdefault(c, question[2][:200])
        history_tokens[c] = answer[7] + answer[8]  # this exchange's prompt + completion tokens
        batch += [question, answer]
        k += 2
        t_gen += time.perf_counter() - ta
        if len(batch) >= 50000:
            flush()
            if k % 200000 == 0:
                log(f"  {k:,} messages ({time.perf_counter() - t0:.0f} s)")
    if batch:
        flush()
    return k, titles, t_gen, t_ins


def build(path, n_messages, n_convs, seed=42, log=print):
    """Returns build stats."""
    t0 = time.perf_counter()
    _remove(path)
    tmp = path + ".building"
    _remove(tmp)
    db.init_db(tmp)
    g = Generator(seed)
    n_exchanges = n_messages // 2
    convs, events = _conversations(g.rng, n_exchanges, n_convs)
    # Plant the rare words in known messages (chosen among the message numbers).
    rare_at = {}
    for word in (RARE_EN, RARE_RU):
        for k in g.rng.sample(range(n_exchanges * 2), RARE_COUNT):
            rare_at[k] = word
    conn = sqlite3.connect(tmp, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")  # 256 MiB
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO conversations (id, provider, model, system_prompt, title, created_at, updated_at)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?)", [c[:7] for c in convs])
    conn.execute("COMMIT")
    k, titles, t_gen, t_ins = _insert_messages(conn, g, convs, events, rare_at, log, t0)
    conn.execute("BEGIN")
    conn.executemany("UPDATE conversations SET title = ? WHERE id = ?",
                     [(title, convs[c][0]) for c, title in titles.items()])
    conn.execute("COMMIT")
    tb = time.perf_counter()  # what db.index_pending would do in batches, in one go
    conn.execute("BEGIN")
    conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')")
    conn.execute("DELETE FROM fts_pending")
    conn.execute("COMMIT")
    t_fts = time.perf_counter() - tb
    meta = {"format": DB_FORMAT, "messages": k, "conversations": n_convs, "seed": seed,
            "doc_counts": _checked_counts(conn), "generate_s": round(t_gen, 1), "insert_s": round(t_ins, 1),
            "fts_s": round(t_fts, 1), "total_s": round(time.perf_counter() - t0, 1)}
    conn.execute("CREATE TABLE IF NOT EXISTS bench_meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT OR REPLACE INTO bench_meta VALUES ('meta', ?)", (json.dumps(meta, ensure_ascii=False),))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    os.replace(tmp, path)
    _remove(tmp, ("-wal", "-shm"))
    meta["size_mb"] = round(os.path.getsize(path) / 2**20)
    return meta


def _checked_counts(conn):
    """Messages holding the words the report names; first, that every answer names its question."""
    unpaired = conn.execute("SELECT count(*) FROM messages a LEFT JOIN messages q ON q.id = a.question_id "
                            "WHERE a.role = 'assistant' AND (q.role IS NOT 'user' OR "
                            "q.conversation_id != a.conversation_id)").fetchone()[0]
    assert unpaired == 0, f"{unpaired} answers name no question of their conversation"  # past_turns reads pairs
    return {w: conn.execute("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?", (f'"{w}"',)).fetchone()[0]
            for w in ("the", "что", RARE_EN, RARE_RU)}


def read_meta(path):
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return json.loads(conn.execute("SELECT value FROM bench_meta WHERE key = 'meta'").fetchone()[0])
        finally:
            conn.close()
    except (sqlite3.Error, TypeError):
        return None


def cached_db(a):
    """(path, meta, built now?) of the bench database, built once into CACHE_DIR."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    n_convs = a.conversations or max(1, a.messages // 50)
    path = os.path.join(CACHE_DIR, f"history-{a.messages}-{n_convs}.db")
    meta = None if a.rebuild else read_meta(path)
    if meta is not None and meta.get("format") == DB_FORMAT:
        return path, meta, False
    print(f"building {path} ({a.messages:,} messages, {n_convs:,} conversations; once, then cached) ...",
          file=sys.stderr, flush=True)
    return path, build(path, a.messages, n_convs, log=lambda s: print(s, file=sys.stderr, flush=True)), True
