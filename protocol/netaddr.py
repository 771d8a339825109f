"""Addresses on the network a run spans: free ports and the local address that reaches a peer."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (another process may take it before it is bound again)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def local_address(towards: str) -> str:
    """This machine's address on the route to `towards` (loopback for loopback): what a peer there
    can reach us at. A UDP connect sends nothing; it only asks the kernel for the route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((socket.gethostbyname(towards), 9))
        return s.getsockname()[0]
