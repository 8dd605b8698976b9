-- Version 5: how model "auto" chose the provider of each message (code, general, private, or
-- "fallback: <why>" when the chosen one could not answer); NULL for messages whose provider the client
-- named. A conversation with a 'private' row stays on the local model. history.sqlite.init_db runs this in one
-- transaction and sets user_version.
ALTER TABLE messages ADD COLUMN route TEXT;
