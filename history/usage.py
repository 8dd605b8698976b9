"""The counters behind per-user limits (user_usage, schema version 6): one row a user, kind and window,
in the history database, so every worker and host on it shares the counts (gateway/limits.py decides)."""

DAY_KINDS = ("requests_day", "tokens_day")


def bump(conn, user_id, kind, window_start, n) -> int:
    """Adds n to a counter; returns its new value (one atomic statement on either backend)."""
    return conn.execute(
        "INSERT INTO user_usage (user_id, kind, window_start, used) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (user_id, kind, window_start) DO UPDATE SET used = user_usage.used + excluded.used "
        "RETURNING used", (user_id, kind, window_start, n)).fetchone()[0]


def used(conn, user_id, kind, window_start) -> int:
    """A counter's value (0 when nothing was counted in that window)."""
    row = conn.execute("SELECT used FROM user_usage WHERE user_id = ? AND kind = ? AND window_start = ?",
                       (user_id, kind, window_start)).fetchone()
    return row[0] if row else 0


def forget_before(conn, user_id, kind, window_start):
    """Drops a user's counters of one kind from windows before this one (of no more use)."""
    conn.execute("DELETE FROM user_usage WHERE user_id = ? AND kind = ? AND window_start < ?",
                 (user_id, kind, window_start))


def day_counts(conn, day) -> dict:
    """{user id: {"requests_day": n, "tokens_day": n}} of every user counted on this day."""
    counts = {}
    for user_id, kind, n in conn.execute("SELECT user_id, kind, used FROM user_usage WHERE window_start = ? "
                                         "AND kind IN (?, ?)", (day, *DAY_KINDS)).fetchall():
        counts.setdefault(user_id, dict.fromkeys(DAY_KINDS, 0))[kind] = n
    return counts
