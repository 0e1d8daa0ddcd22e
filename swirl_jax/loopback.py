"""Whether a host name or address is this machine (servers bind only there; keys may go there in
plain http)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
  """'localhost', 127.0.0.0/8 or ::1 (brackets of an IPv6 literal allowed)."""
  host = host.strip("[]")
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False
