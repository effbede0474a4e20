"""Whether weights may and can be fetched: the offline switches, and one quick connection probe.

An unreachable server otherwise costs a minute or more: the Hugging Face client retries each file with
back-off, and ``urlopen`` waits for the system's connect timeout. One TCP connection with a short timeout
answers the same question at once, so the caller can go straight to its cache or to its message.
"""
from __future__ import annotations

import os
import socket
import time
import urllib.request
from urllib.parse import urlparse

OFFLINE_VARIABLES = ("ZOO_OFFLINE", "HF_HUB_OFFLINE")
PROBE_TIMEOUT_S = 3.0
# a probe's answer is reused this long: one model's files ask several times, and a network that
# comes back is seen again within a minute
PROBE_TTL_S = 30.0

_probes: dict[tuple[str, int], tuple[float, bool]] = {}  # (host, port) -> (monotonic time, reachable)


def _switched_on() -> list[str]:
    return [v for v in OFFLINE_VARIABLES if os.environ.get(v, "0").lower() in ("1", "true", "yes")]


def offline() -> bool:
    """Whether ZOO_OFFLINE or HF_HUB_OFFLINE (1, true, yes) forbids every download."""
    return bool(_switched_on())


def offline_reason() -> str:
    """Which variable makes this machine offline, for messages ('' when none does)."""
    on = _switched_on()
    return f"this machine is offline: {on[0]}={os.environ[on[0]]}" if on else ""


def _endpoint(url: str) -> tuple[str, int] | None:
    """The host and port a client connects to for ``url``: the proxy the environment names for it, if
    any, since a machine behind a proxy reaches nothing directly; None for a URL with no host."""
    parts = urlparse(url)
    if not parts.hostname:
        return None
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        parts = urlparse(proxy if "://" in proxy else "http://" + proxy)
    default_port = 443 if parts.scheme == "https" else 80
    return (parts.hostname, parts.port or default_port) if parts.hostname else None


def reachable(url: str) -> bool:
    """Whether a TCP connection to ``url``'s server (or its proxy) opens within ``PROBE_TIMEOUT_S``.

    Only the connection is tried, so a server that answers with an error still counts as reachable and
    the client reports that error itself. Answers are kept ``PROBE_TTL_S`` seconds per host and port.
    """
    endpoint = _endpoint(url)
    if endpoint is None:
        return True  # file:// and the like: nothing to probe
    now = time.monotonic()
    seen = _probes.get(endpoint)
    if seen is not None and now - seen[0] < PROBE_TTL_S:
        return seen[1]
    try:
        socket.create_connection(endpoint, timeout=PROBE_TIMEOUT_S).close()
        ok = True
    except OSError:  # no route, refused, timed out, or the name does not resolve
        ok = False
    _probes[endpoint] = (now, ok)
    return ok
