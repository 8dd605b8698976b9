"""`python chat.py users add|list|remove|rotate`: the gateway's users, on the history database the gateway uses
(CHAT_DB, from the environment or .env; SQLite or PostgreSQL). A change holds at once for every running
gateway on that database: keys are looked up on each request. A new key is printed once, alone on the last
line (`KEY=$(python chat.py users add alice | tail -n 1)`); only its hash is stored."""
import argparse
import datetime
import sys

import db
from history import users
from history.connections import backend


def parser():
    p = argparse.ArgumentParser(prog="chat.py users", description="The gateway's users: each has their own key, "
                                "sees only their own conversations, and may have limits. CHAT_API_KEY stays "
                                "the built-in admin's key.")
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a user and print their key (alone on the last line)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="sees every user's conversations")
    add.add_argument("--requests-per-minute", type=int, metavar="N", help="questions a minute (default: no limit)")
    add.add_argument("--tokens-per-day", type=int, metavar="N",
                     help="prompt + answer tokens a UTC day (default: no limit)")
    sub.add_parser("list", help="names, limits and last use (never keys)")
    sub.add_parser("remove", help="delete a user: their key is refused at once").add_argument("name")
    sub.add_parser("rotate", help="a new key; the old one is refused at once").add_argument("name")
    return p


def _when(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if ts else "never"


def print_list(conn):
    rows = users.all_users(conn)
    if not rows:
        print("No users yet (`python chat.py users add NAME`). CHAT_API_KEY, if set, is the admin's key.")
        return
    table = [("NAME", "ADMIN", "REQUESTS/MIN", "TOKENS/DAY", "LAST USED")]
    table += [(r["name"], "yes" if r["is_admin"] else "no", str(r["requests_per_minute"] or "-"),
               str(r["tokens_per_day"] or "-"), _when(r["last_used_at"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def run(args, conn):
    if args.command == "add":
        key = users.add(conn, args.name, args.admin, args.requests_per_minute, args.tokens_per_day)
        print(f"User {args.name!r} added. Their key (shown only now; send it as 'Authorization: Bearer KEY'):")
        print(key)
    elif args.command == "rotate":
        key = users.rotate(conn, args.name)
        print(f"New key for {args.name!r}; the old one is refused from now on:")
        print(key)
    elif args.command == "remove":
        users.remove(conn, args.name)
        print(f"User {args.name!r} removed: their key is refused from now on; their conversations stay (admins "
              f"see them).")
    else:
        print_list(conn)


def main(argv, target) -> int:
    args = parser().parse_args(argv)
    backend(target).init_db(target)  # (creates or migrates the history, as the gateway does at start)
    conn = db.open_connection(target)
    try:
        run(args, conn)
    except users.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        conn.close()
    return 0
