"""Upstream chat providers the gateway talks to."""
