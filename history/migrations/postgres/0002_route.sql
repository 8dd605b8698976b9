-- Version 2 (SQLite's 0005_route.sql): how model "auto" chose the provider of each message (code,
-- general, private, or "fallback: <why>"); NULL for messages whose provider the client named.
ALTER TABLE messages ADD COLUMN route TEXT;
