"""RouterOS names the setup script, ``wanctl-check`` and the actuator must agree on."""

from __future__ import annotations

MANGLE = "/ip/firewall/mangle"
ADDRESS_LIST = "/ip/firewall/address-list"


def lease_list(wan: str) -> str:
    """The address list a WAN's steering rule requires (``src-address-list=``): the actuator's lease."""
    return f"wanctl-lease-{wan}"


def routeros_time(seconds: float) -> str:
    """A RouterOS time value: ``60s``, ``2s500ms``."""
    ms = max(1, round(seconds * 1000))
    whole, rest = divmod(ms, 1000)
    return (f"{whole}s" if whole else "") + (f"{rest}ms" if rest else "")
