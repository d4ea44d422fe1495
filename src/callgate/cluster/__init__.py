"""Several callgate nodes as one: the Redis call registry and forwarding to a call's owner."""

from __future__ import annotations

from urllib.parse import urlsplit

from callgate.cluster.registry import CallRegistry
from callgate.config import Settings


def registry_from_settings(settings: Settings, http_port: int) -> CallRegistry | None:
    """The registry this node joins, or None for a single node (no ``redis_url``)."""
    if not settings.redis_url:
        return None
    host = settings.http_host if settings.http_host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = settings.node_url or f"http{'s' if settings.tls_cert else ''}://{host}:{http_port}"
    split = urlsplit(url)
    return CallRegistry(settings.redis_url, settings.node_id or f"{split.hostname}:{split.port}",
                        url, ttl=settings.node_ttl)
