"""Upstream chat providers the gateway talks to, behind one small interface (Provider), built from the
gateway's config by REGISTRY. Another provider (or a second upstream of one kind) is a module with a
Provider subclass and one more line in REGISTRY."""
from providers.base import Provider
from providers.registry import REGISTRY, build
from providers.upstream_request import UpstreamRequest

__all__ = ["Provider", "UpstreamRequest", "REGISTRY", "build"]
