"""Secrets in a question: passwords, API keys and tokens, private keys, connection strings with credentials,
.env-style lines. detect-secrets' own detectors (AWS, GitHub, Slack, Stripe, JWT, private keys, URLs with a
password, `password = "..."` assignments, ...) run first, called directly on the text: never its
verification, which would send the secret to the service it belongs to. Rules of our own add what it misses
on tests/routing_eval.jsonl (bench/routing.py counts those misses): passwords written in prose, in Russian
or English ("my password is ...", "пароль от банка: ..."), bearer tokens, test-mode Stripe keys,
fine-grained GitHub tokens, connection strings whose password holds '!' or '%', login / password pairs,
`curl -u user:password`."""
import re
from dataclasses import dataclass

from detect_secrets.plugins import (
    aws,
    basic_auth,
    discord,
    github_token,
    gitlab_token,
    jwt,
    keyword,
    mailchimp,
    npm,
    openai,
    private_key,
    pypi_token,
    sendgrid,
    slack,
    stripe,
    telegram_token,
    twilio,
)
from detect_secrets.util.filetype import FileType

REDACTED = "[REDACTED]"
_PLUGINS = [m() for m in (aws.AWSKeyDetector, basic_auth.BasicAuthDetector, discord.DiscordBotTokenDetector,
                          github_token.GitHubTokenDetector, gitlab_token.GitLabTokenDetector, jwt.JwtTokenDetector,
                          mailchimp.MailchimpDetector, npm.NpmDetector, openai.OpenAIDetector,
                          private_key.PrivateKeyDetector, pypi_token.PypiTokenDetector, sendgrid.SendGridDetector,
                          slack.SlackDetector, stripe.StripeDetector, telegram_token.TelegramBotTokenDetector,
                          twilio.TwilioKeyDetector)]
_KEYWORD = keyword.KeywordDetector()
_KEYWORD_STYLES = [keyword.REGEX_BY_FILETYPE[t] for t in (FileType.YAML, FileType.PYTHON)]

# A line is scanned by a detector only when it holds one of the detector's hints (lower case), or with LONG,
# a word of 16 characters or more (every token format is that long): a 100k-character paste of code would
# otherwise take a second (detect-secrets' keyword detector alone costs ~70 us a line).
LONG = "<a long word>"
_PLUGIN_HINTS = (LONG, "://", "private key")
_KEYWORD_HINTS = ("pass", "pwd", "secret", "_key", "apikey", "authkey", "privatekey", "contrase")
_WORDS = ("password", "passwd", "pwd", "passphrase", "парол", "secret", "key", "token", "ключ", "токен")
_KEY_BLOCK = [("private key", re.compile(r"(?P<secret>-----BEGIN [A-Z ]*PRIVATE KEY( BLOCK)?-----[\s\S]*?"
                                         r"(-----END [A-Z ]*PRIVATE KEY( BLOCK)?-----|\Z))"), False, ())]
# (kind, pattern with a `secret` group, whether the value must look generated: a letter and a digit or symbol,
# hints); each rule matches within one line
_RULES = [(kind, re.compile(p, flags), strict, hints) for kind, p, flags, strict, hints in (
    ("connection string", r"\b[a-z][a-z0-9+.-]*://[^\s/:@]*:(?P<secret>[^\s/@]+)@[^\s/@]", re.I, False, ("://",)),
    ("bearer token", r"\b(Bearer|Basic)\s+(?P<secret>[A-Za-z0-9._~+/=-]{16,})", re.I, False, ("bearer", "basic")),
    ("user:password", r"(?:\s-u|--user)[\s=]+[\"']?[^\s:\"']+:(?P<secret>[^\s\"']{4,})", 0, False, ("-u",)),
    ("GitHub token", r"\b(?P<secret>gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{22,})", 0, False, (LONG,)),
    ("Stripe key", r"\b(?P<secret>[sr]k_(live|test)_[0-9A-Za-z]{16,})", 0, False, (LONG,)),
    ("Slack token", r"\b(?P<secret>xox[abposr]-[0-9A-Za-z-]{10,})|hooks\.slack\.com/services/(?P<hook>\S+)", 0,
     False, (LONG,)),
    ("AWS secret key", r"aws_secret_access_key\W{1,4}(?P<secret>[A-Za-z0-9/+=]{40})", re.I, False, (LONG,)),
    (".env secret", r"^\s*(export\s+)?[A-Z0-9_]*(SECRET|TOKEN|PASSWORD|PASSWD|PASS|PWD|API_?KEY|ACCESS_KEY|"
                    r"PRIVATE_KEY|CREDENTIALS?|AUTH)[A-Z0-9_]*\s*=\s*[\"']?(?P<secret>[^\s\"'#]{6,})", re.M, False,
     ("secret", "token", "pass", "pwd", "key", "cred", "auth")),
    ("password", r"(?<![\w.])(password|passwd|pwd|passphrase|парол[ьяеюи]\w*|secret|secret_key|api[_-]?key|"
                 r"access[_-]?key|token|ключ|токен)\b[\"']?(\s+(is|was|это|от\s+\w+))?\s*[:=—–-]?\s*[\"'«]?"
                 r"(?P<secret>[^\s\"'»,;]{6,})", re.I, True, _WORDS),
    ("login and password", r"\b(login|логин|username|user)\b[^\n/]{0,20}?\s[^\s/]+\s*/\s*"
                           r"(?P<secret>[^\s\"'»,;]{6,})", re.I, True, ("/",)),
)]
_PLACEHOLDER = re.compile(r"(?i)^([<{\[($%]|\*{3}|x{3}|\.{3}|(os|process|env|self|settings|config)\b|"
                          r"(your|my)[_-]|changeme$|example|placeholder|password$|secret$|none$|null$|true$|"
                          r"false$|string$|\w+\()")
_GENERATED = re.compile(r"(?=.*[A-Za-zА-Яа-я])(?=.*[0-9!@#$%^&*+=~])")


@dataclass(frozen=True)
class Finding:
    kind: str  # what it is, e.g. "AWS Access Key", "password" (never the secret itself)
    start: int  # where the secret is in the text (for redaction)
    end: int


def _lines(text, lower):
    """(offset, line, its lower case, whether it has a word of 16+ characters) for each line of text."""
    offset = 0
    for line, low in zip(text.split("\n"), lower.split("\n")):
        yield offset, line.rstrip("\r"), low, len(line) >= 16 and any(len(w) >= 16 for w in low.split())
        offset += len(line) + 1


def _hinted(low, long, hints):
    return any(h in low if h is not LONG else long for h in hints)


def _plugin_findings(line, offset, found):
    for kind, secret in found:
        at = line.find(secret)
        if at >= 0 and not _PLACEHOLDER.match(secret):
            yield Finding(kind, offset + at, offset + at + len(secret))


def _library(line, low, long, plugins, keyword_hints):
    found = [(p.secret_type, s) for p in plugins for s in p.analyze_string(line)] \
        if _hinted(low, long, _PLUGIN_HINTS) else []
    if keyword_hints and _hinted(low, long, keyword_hints):
        found += [("Secret Keyword", s) for style in _KEYWORD_STYLES
                  for s in _KEYWORD.analyze_string(line, denylist_regex_to_group=style)]
    return found


def _rule_findings(text, offset, rules, low="", long=False):
    for kind, pattern, strict, hints in rules:
        if hints and not _hinted(low, long, hints):
            continue
        for m in pattern.finditer(text):
            group = "secret" if m.group("secret") is not None else "hook"
            value = m.group(group).rstrip(".?)»")
            if _PLACEHOLDER.match(value) or (strict and not _GENERATED.match(value)):
                continue
            yield Finding(kind, offset + m.start(group), offset + m.start(group) + len(value))


def find(text: str, library_only=False) -> list:
    """The secrets in text (Findings, in order, overlapping ones included); library_only: detect-secrets'
    findings alone (bench/routing.py counts what our rules add). Detectors none of whose hints is anywhere
    in the text are left out before the text is read line by line (usually all of them)."""
    text, found = text or "", set()
    lower = text.lower()
    long = any(len(w) >= 16 for w in lower.split())

    def present(hints):
        return tuple(h for h in hints if (long if h is LONG else h in lower))
    plugins = _PLUGINS if present(_PLUGIN_HINTS) else []
    keyword_hints = present(_KEYWORD_HINTS)
    rules = [] if library_only else [(k, p, s, present(h)) for k, p, s, h in _RULES if present(h)]
    if plugins or keyword_hints or rules:
        for offset, line, low, line_long in _lines(text, lower):
            found.update(_plugin_findings(line, offset, _library(line, low, line_long, plugins, keyword_hints)))
            found.update(_rule_findings(line, offset, rules, low, line_long))
    if not library_only and "PRIVATE KEY" in text:
        found.update(_rule_findings(text, 0, _KEY_BLOCK))
    return sorted(found, key=lambda f: (f.start, -f.end))


def redact(text: str) -> str:
    """text with every secret replaced by [REDACTED]."""
    out, pos = [], 0
    for f in find(text):
        if out and f.start <= pos:  # overlapping or touching the one before: one mark for both
            pos = max(pos, f.end)
            continue
        out += [text[pos:f.start], REDACTED]
        pos = f.end
    return "".join(out) + text[pos:]
