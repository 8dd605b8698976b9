"""Per-user limits: questions a minute and tokens a (UTC) day, counted in the history database (user_usage), so
that every gunicorn worker and every gateway host on one database shares the counts. A question past a
limit is a 429 with Retry-After, before anything is saved. Windows are fixed: the calendar minute, the UTC
day. Tokens (prompt + completion) are added when an answer is saved, so the answer that crosses the daily
limit is delivered whole and the next question is refused. /metrics shows today's counts for the busiest
users (a bounded top N, the rest summed as "(other)")."""
import logging
import math
import time

from prometheus_client.core import GaugeMetricFamily

import db
from common.api_common import ApiError
from history import usage as counters, users
from history.transaction import write_transaction

MINUTE, DAY = 60, 86400
TOP_USERS = 10  # users named in /metrics; the others are summed in one "(other)" series
OTHER = "(other)"
log = logging.getLogger(__name__)


def _refuse(what, limit, retry_after):
    raise ApiError(429, f"You have used your {limit} {what}; retry in {retry_after} s, or ask an admin to raise "
                        f"the limit (`python chat.py users`).", type="rate_limit_error", code="user_limit_reached",
                   headers={"Retry-After": str(retry_after)})


def admit(conn, caller: users.Caller, now=None):
    """Counts one question of `caller`, or raises the 429 of the limit it is past."""
    now = time.time() if now is None else now
    minute, day = int(now // MINUTE * MINUTE), int(now // DAY * DAY)
    until_tomorrow = max(1, math.ceil(day + DAY - now))
    if caller.tokens_per_day:
        if counters.used(conn, caller.id, "tokens_day", day) >= caller.tokens_per_day:
            _refuse("tokens a day", caller.tokens_per_day, until_tomorrow)
    with write_transaction(conn):
        this_minute = counters.bump(conn, caller.id, "requests_minute", minute, 1)
        if this_minute == 1:  # a new minute: the user's older minutes are of no more use
            counters.forget_before(conn, caller.id, "requests_minute", minute)
        if caller.requests_per_minute and this_minute > caller.requests_per_minute:
            refused = True
        else:
            refused = False
            counters.bump(conn, caller.id, "requests_day", day, 1)
    if refused:
        _refuse("requests a minute", caller.requests_per_minute, max(1, math.ceil(minute + MINUTE - now)))


def count_answer(conn, caller: users.Caller, usage, saved=True):
    """Counts a saved answer's tokens for its user (not the keyless user's; not an answer waiting in the journal
    while the database is away: best effort, a database that fails now costs the count, not the answer)."""
    if caller.keyless or not saved:
        return
    try:
        add_tokens(conn, caller.id, usage)
    except db.UNAVAILABLE as e:
        log.warning("tokens of user %s not counted: %s", caller.name, e)


def add_tokens(conn, user_id, usage, now=None):
    """Counts an answer's tokens (prompt + completion) against its user's day."""
    n = sum((usage or {}).get(k) or 0 for k in ("prompt_tokens", "completion_tokens"))
    if n:
        now = time.time() if now is None else now
        with write_transaction(conn):
            counters.bump(conn, user_id, "tokens_day", int(now // DAY * DAY), n)


class UsageCollector:
    """chat_user_requests_today / chat_user_tokens_today {user}: read from the database at scrape time (so the
    sum over workers and hosts), for the TOP_USERS busiest users; the rest as user="(other)"."""

    def describe(self):
        return []  # (nothing is read when the collector is registered)

    def collect(self):
        day = int(time.time() // DAY * DAY)
        with db.briefly() as conn:  # given back before the in-use gauge is read
            counts = counters.day_counts(conn, day)
            named = users.names(conn)
        ranked = sorted(counts, key=lambda u: (-counts[u]["requests_day"], -counts[u]["tokens_day"]))
        requests = GaugeMetricFamily("chat_user_requests_today", "Questions this UTC day, by user (top N)",
                                     labels=["user"])
        tokens = GaugeMetricFamily("chat_user_tokens_today", "Tokens this UTC day, by user (top N)", labels=["user"])
        rest = {"requests_day": 0, "tokens_day": 0}
        for rank, user_id in enumerate(ranked):
            if rank < TOP_USERS and user_id in named:
                requests.add_metric([named[user_id]], counts[user_id]["requests_day"])
                tokens.add_metric([named[user_id]], counts[user_id]["tokens_day"])
            else:
                rest = {k: rest[k] + counts[user_id][k] for k in rest}
        if len(ranked) > TOP_USERS or any(rest.values()):
            requests.add_metric([OTHER], rest["requests_day"])
            tokens.add_metric([OTHER], rest["tokens_day"])
        yield requests
        yield tokens
