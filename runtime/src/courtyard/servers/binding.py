"""The address a server binds, as servers print it."""

from __future__ import annotations


def bind_address(host: str, port: int) -> str:
    """`host:port` as servers print and Hypercorn binds it; IPv6 addresses go in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
