"""The gateway's heartbeat for readiness decided from outside it (docs/k8s.md).

Each gateway's schedule runs ``mine.send vpn_gateway_heartbeat
mine_function=vpn_heartbeat.beat`` every few seconds: the master keeps the
latest beat in its mine. The minion that writes the EndpointSlices
(``k8s.sync_readiness``) reads every gateway's beat from the mine; a gateway
whose beat stops changing for ``vpn_gateway:kubernetes:readiness:deadline``
seconds (host down, minion down, network cut) is set not serving by that
minion, not by itself. The beat is a number that changes every time (the
gateway's clock); the observer only compares it with the last one it saw and
times the silence with its own clock, so the hosts' clocks need not agree.
"""
import time

__virtualname__ = "vpn_heartbeat"


def __virtual__():
    return __virtualname__


def _serving_of(health):
    """Whether a gateway can carry connections: every declared tunnel carried (up or
    on the backup). No tunnel, or any tunnel partial or down: not serving."""
    return bool(health) and all(t.get("up") for t in health.values())


def beat():
    """
    This gateway's heartbeat: ``{"beat": <changes every call>, "serving": bool,
    "tunnels": {tunnel: state}, "error": ...}``.

    CLI Example:

    .. code-block:: bash

        salt-call vpn_heartbeat.beat
        salt-call mine.send vpn_gateway_heartbeat mine_function=vpn_heartbeat.beat
    """
    result = {"beat": time.time(), "serving": False, "tunnels": {}, "error": None}
    try:
        health = __salt__["libreswan.health"](timeout=3, reasons=False)
    except Exception as exc:  # pluto missing or hung: alive, but not serving
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result
    result["tunnels"] = {name: t.get("state") for name, t in health.items()}
    result["serving"] = _serving_of(health)
    return result
