"""PostgreSQL full-text search over the messages' tsvector column (see search)."""
from history.columns import where

WALK_FIRST = 1000  # rows a search tests newest first before it estimates the words' frequency (see search)
WALK_MAX = 40_000  # and at most this many in all (~30 ms), past which the GIN index is surely cheaper
GIN_ROW_COST = 3  # a match fetched through the GIN index costs about this many walked rows (1M: 1-6)


def _walk(conn, q, below, provider, rows, limit):
    """Ids of the newest `limit` matches among the newest `rows` rows below id `below`, and if fewer: the
    lowest id those rows reached (None when they were all there is). Reads only ids and tsvectors, by the
    primary key index, newest first: about a microsecond a row (a few for long answers)."""
    cond, args = where(("id < ?", below), ("provider = ?", provider))
    newest = f"SELECT id, search FROM messages {'WHERE ' + cond if cond else ''} ORDER BY id DESC LIMIT {rows}"
    hits = [r[0] for r in conn.execute(f"SELECT id FROM ({newest}) r WHERE search @@ plainto_tsquery('simple', ?) "
                                       f"ORDER BY id DESC LIMIT ?", args + [q, limit])]
    if len(hits) == limit:
        return hits, None
    floor, seen = conn.execute(f"SELECT min(id), count(*) FROM ({newest}) r", args).fetchone()
    return hits, floor if seen == rows else None


BY_PROVIDER = "AND m.provider || '' = ?"  # as a filter: no index matches it


def _gin(conn, q, below, provider, limit):
    """Ids of the newest `limit` matches below id `below`, through the GIN index alone (a bitmap scan of
    every match, then the top ids): its cost follows the number of matches, not the table's size.
    `id + 0` and `provider || ''` keep those two filters, not bitmaps of half the table."""
    with conn.raw.transaction():
        conn.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_seqscan = off")  # one round trip
        return [r[0] for r in conn.execute(
            f"SELECT m.id FROM messages m WHERE m.search @@ plainto_tsquery('simple', ?) AND m.id + 0 < ? "
            f"{BY_PROVIDER if provider else ''} ORDER BY m.id DESC LIMIT ?",
            [q, below] + ([provider] if provider else []) + [limit])]


def search(conn, cols, q, limit, before=None, provider=None):
    """The newest `limit` messages holding every word of q (below id `before`, of one provider).
    The planner alone guesses a word's frequency from ANALYZE's sample: a word the sample missed, or two
    common words that never meet, it guesses at thousands of rows and walks the newest rows testing each,
    all 1M of them for a rare word (0.9 s). So: walk the newest WALK_FIRST rows; from the matches seen so
    far estimate the frequency f, and go on walking (~twice the rows that f says the rest needs) while
    that costs less than the GIN index over all older rows would (~f x those rows, GIN_ROW_COST walked
    rows each), else finish with the GIN index. Either way gives the same page: only the speed differs."""
    hits, below, walked, step = [], before, 0, WALK_FIRST
    while True:
        found, below = _walk(conn, q, below, provider, step, limit - len(hits))
        hits, walked = hits + found, walked + step
        if below is None:  # the page is full, or no older rows are left
            break
        need, rate = limit - len(hits), len(hits) / walked
        step = int(need / rate * 2) if rate else 0
        if not rate or step > min(WALK_MAX - walked, GIN_ROW_COST * rate * below):
            hits += _gin(conn, q, below, provider, need)
            break
    return conn.execute(f"SELECT {cols} FROM messages m WHERE m.id = ANY(?) ORDER BY m.id DESC",
                        [hits]).fetchall() if hits else []
