"""The browser view of ``vlmedge run --web [ADDR]``: the live overlaid stream, the targets, the commands.

``server.py`` holds the server (aiohttp, the ``vlmedge[web]`` extra, imported only when a view is opened);
``page.html`` the page it serves. This module stays light: ``RunConfig`` checks the address with it.
"""

from __future__ import annotations

import logging
import re

from vlmedge.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_WEB_ADDRESS = "127.0.0.1:8080"
_HOST_PORT = re.compile(r"^(?P<host>\[[^\]]+\]|[^:\[\]/]*):(?P<port>\d+)$")


def parse_web_address(value: str, *, warn: bool = True) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or a bare ``PORT`` (on 127.0.0.1) -> (host, port); port 0 picks a free one.

    A host that is not loopback logs the same warning as the ZeroMQ sockets: the view is reachable from the
    network, and anyone who reaches it can change the commands (it has no login).
    """
    from vlmedge.runtime.messaging.sockets import is_loopback_host

    text = str(value).strip()
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    m = _HOST_PORT.match(text)
    if not m or not m["host"]:
        raise ConfigError(f"--web {value!r}: expected HOST:PORT like {DEFAULT_WEB_ADDRESS} (or 0.0.0.0:8080 to be "
                          "reachable from the network), [::1]:8080, or a port number")
    port = int(m["port"])
    if not 0 <= port <= 65535:
        raise ConfigError(f"--web {value!r}: port {port} is outside 0..65535")
    host = m["host"].strip("[]")
    if warn and not is_loopback_host(host):
        log.warning("the browser view binds %s: it is reachable from the network, and anyone who reaches it sees "
                    "the camera and can change the commands (it has no login); bind it to 127.0.0.1 and use an SSH "
                    "tunnel (ssh -L 8080:127.0.0.1:8080 robot) or a firewall if the network is not trusted", text)
    return host, port


def format_web_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["DEFAULT_WEB_ADDRESS", "format_web_address", "parse_web_address"]
