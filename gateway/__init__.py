"""The gateway (chat.py): blueprints and the exchange (one question, one saved answer)."""
