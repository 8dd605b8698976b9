-- Version 3: an answer names the question it answers (messages.question_id), so that two exchanges
-- in flight on one session (a double-clicked Send, two tabs, an agent's parallel calls) keep their
-- pairs however their rows interleave; conversation context is built from these pairs, in the order
-- of the questions' ids. history.sqlite.init_db runs this in one transaction and sets user_version.
ALTER TABLE messages ADD COLUMN question_id INTEGER REFERENCES messages (id) ON DELETE CASCADE;
-- Backfill: an older answer is paired with the row just before it in its conversation when that row
-- is a question (the pairing the context used before version 3); an answer with no question right
-- before it (rows of two interleaved exchanges) stays unpaired and is left out of the context.
UPDATE messages SET question_id = (
    SELECT p.id FROM messages p
    WHERE p.id = (SELECT max(x.id) FROM messages x
                  WHERE x.conversation_id = messages.conversation_id AND x.id < messages.id)
      AND p.role = 'user')
WHERE role = 'assistant';
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_question ON messages (question_id);
