"""What the history's queries share: the column lists (one place; the tables themselves are in
migrations/) and the builder of their optional WHERE conditions."""

CONVERSATION_COLUMNS = "id, provider, model, system_prompt, title, created_at, updated_at"
MESSAGE_COLUMNS = ("id, conversation_id, role, content, provider, model, system_prompt, params, prompt_tokens, "
                   "completion_tokens, precached_prompt_tokens, latency_ms, finish_reason, status, error, created_at, "
                   "question_id, route")
MESSAGE_COLUMNS_AS_M = ", ".join("m." + c.strip() for c in MESSAGE_COLUMNS.split(","))  # (m: messages' alias)


def where(*conditions):
    """(sql, value) pairs -> (" AND "-joined SQL, values), skipping the pairs whose value is None."""
    used = [(sql, value) for sql, value in conditions if value is not None]
    return " AND ".join(sql for sql, _ in used), [value for _, value in used]


def fts_query(text):
    """User text -> an FTS5 query of quoted terms (all must match), so no FTS syntax leaks through."""
    terms = [t for t in text.replace("\x00", " ").split() if t]  # FTS5 reads NUL as the end of the query
    return " ".join('"' + t.replace('"', '""') + '"' for t in terms)
