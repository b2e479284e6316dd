"""Proxy headers: the client address and scheme a trusted proxy reports.

Applied by `Config.load()` only with `proxy_headers` on, so the default
path stays pure C.  Headers count only when the peer is in
`forwarded_allow_ips` (comma-separated addresses or networks, `*` for
any; a unix-socket peer is local and trusted like 127.0.0.1).

- RFC 7239 `Forwarded` (`for=`, `proto=`; quoted values, `[IPv6]:port`)
  wins when present; otherwise
- `X-Forwarded-For` (or Daphne's `--proxy-headers-host` header) gives the
  client host (a hop's own port, `1.2.3.4:80` or `[::1]:80`, is its port),
  `X-Forwarded-Port` (`--proxy-headers-port`) the port when present, and
  `X-Forwarded-Proto` the scheme (ws/wss on WebSocket scopes).

With several hops the client is the right-most address that is not a
trusted proxy (uvicorn's rule), so a client cannot spoof its address by
sending the header itself.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ._types import ASGIApp, Receive, Scope, Send

_SCHEMES = {"http", "https", "ws", "wss"}
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedHosts:
    """`forwarded_allow_ips`: addresses, networks, `*`."""

    def __init__(self, spec: str | list[str]) -> None:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        self.always = False
        self.hosts: set[str] = set()
        self.networks: list[_Network] = []
        for raw in items:
            item = raw.strip()
            if not item:
                continue
            if item == "*":
                self.always = True
            elif "/" in item:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            else:
                self.hosts.add(_normalise(item))

    def __contains__(self, host: str | None) -> bool:
        if self.always:
            return True
        if host is None:
            return True  # A unix-socket peer: local, like 127.0.0.1.
        host = _normalise(host)
        if host in self.hosts:
            return True
        if self.networks:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                return False
            return any(ip in net for net in self.networks)
        return False

    def client_from(self, hosts: list[str]) -> str | None:
        """The right-most hop that is not a trusted proxy."""
        if not hosts:
            return None
        if self.always:
            return hosts[0]
        for host in reversed(hosts):
            if host not in self:
                return host
        return hosts[0]


def _normalise(host: str) -> str:
    host = host.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _split_quoted(text: str, sep: str) -> list[str]:
    """Split on sep outside double quotes."""
    parts, cur, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            cur.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _unquote(value: str) -> str:
    """A token, or a quoted-string's content; "" for a malformed value (an
    unterminated quote, a quote inside a token or after the closing one),
    which the caller ignores as it ignores "unknown"."""
    value = value.strip()
    if not value.startswith('"'):
        return "" if '"' in value else value
    out, escaped = [], False
    for i in range(1, len(value)):
        ch = value[i]
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            return "".join(out) if i == len(value) - 1 else ""
        else:
            out.append(ch)
    return ""


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """RFC 7239 elements, left to right, keys lower-cased; a malformed value
    is "" (a for= node that says nothing, kept in the chain)."""
    elements = []
    for element in _split_quoted(value, ","):
        pairs: dict[str, str] = {}
        for pair in _split_quoted(element, ";"):
            key, eq, val = pair.partition("=")
            if eq and key.strip():
                pairs[key.strip().lower()] = _unquote(val)
        if pairs:
            elements.append(pairs)
    return elements


def split_node(node: str) -> tuple[str, int]:
    """`for=` node → (host, port): `1.2.3.4:80`, `[::1]:80`, `::1`, `unknown`."""
    node = node.strip()
    if node.startswith("["):
        host, _, rest = node[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif node.count(":") == 1:
        host, _, port = node.partition(":")
    else:
        host, port = node, ""
    return host, _port(port)


def _port(text: str) -> int:
    """A port number, or 0 for anything else (str.isdigit() takes '²', which
    int() refuses, and int() refuses more than 4300 digits)."""
    text = text.strip()
    if not 0 < len(text) <= 5 or not text.isascii() or not text.isdigit():
        return 0
    port = int(text)
    return port if port <= 65535 else 0


class ProxyHeadersMiddleware:
    """Rewrites scope client/scheme from a trusted proxy's headers."""

    def __init__(self, app: ASGIApp, trusted: str = "127.0.0.1",
                 host_header: str | None = None, port_header: str | None = None) -> None:
        self.app = app
        self.trusted = TrustedHosts(trusted)
        self.host_header = (host_header or "X-Forwarded-For").lower().encode("latin-1")
        self.port_header = (port_header or "X-Forwarded-Port").lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            if (client[0] if client else None) in self.trusted:
                self.apply(scope)
        await self.app(scope, receive, send)

    def apply(self, scope: Scope) -> None:
        headers: dict[bytes, list[str]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, []).append(value.decode("latin-1"))
        ws = scope["type"] == "websocket"
        proto: str | None = None
        client: tuple[str, int] | None = None

        if b"forwarded" in headers:
            elements = parse_forwarded(",".join(headers[b"forwarded"]))
            nodes = [(e, split_node(e["for"])) for e in elements if "for" in e]
            chosen = self.trusted.client_from([n[1][0] for n in nodes])
            for element, (host, port) in reversed(nodes):
                if host == chosen:
                    # "", malformed (see _unquote), says nothing either.
                    if host and host.lower() != "unknown" and not host.startswith("_"):
                        client = (host, port)
                    proto = element.get("proto")
                    break
            if proto is None:
                protos = [e["proto"] for e in elements if "proto" in e]
                proto = protos[-1] if protos else None
        else:
            if self.host_header in headers:
                # A hop may carry a port ("1.2.3.4:80", "[::1]:80": IIS ARR,
                # Azure), read as in a Forwarded for= node.
                hops = [split_node(h) for v in headers[self.host_header] for h in v.split(",")]
                hops = [(h, p) for h, p in hops if h]
                hop = self.trusted.client_from([h for h, _ in hops])
                if hop:
                    port = next(p for h, p in reversed(hops) if h == hop)
                    if self.port_header in headers:
                        port = _port(headers[self.port_header][-1].split(",")[-1])
                    client = (_normalise(hop), port)
            if b"x-forwarded-proto" in headers:
                proto = headers[b"x-forwarded-proto"][-1].split(",")[-1]

        if proto is not None:
            proto = proto.strip().lower()
            if proto in _SCHEMES:
                if ws:
                    proto = proto.replace("http", "ws")
                elif proto.startswith("ws"):
                    proto = proto.replace("ws", "http")
                scope["scheme"] = proto
        if client is not None:
            scope["client"] = client


def wrap(app: ASGIApp, config: Any) -> ASGIApp:
    return ProxyHeadersMiddleware(app, config.forwarded_allow_ips,
                                  config.proxy_headers_host, config.proxy_headers_port)
