"""Webhook alerts for the gateway's tunnels: one JSON POST per event, rate
limited per conn and state.

The URL is a secret (it often embeds a token): it is read from
``vpn_gateway:monitoring:webhook_url`` and goes only into the HTTP request,
never into a return value, a log line or an exception message.

Payload: ``{"hostname", "conn", "state", "step", "attempt", "detail", "time"}``.
Pure helpers (``_payload``, ``_rate_allows``) are tested directly.
"""
import json
import logging
import socket
import time
import urllib.error
import urllib.request

log = logging.getLogger(__name__)

__virtualname__ = "vpn_alert"

URL_KEY = "vpn_gateway:monitoring:webhook_url"


def __virtual__():
    return __virtualname__


# -- pure helpers ------------------------------------------------------------------------
def _payload(hostname, conn, state, step, attempt, detail, now):
    return {"hostname": hostname, "conn": conn, "state": state, "step": step,
            "attempt": int(attempt), "detail": detail,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}


def _rate_allows(sent, key, now, window):
    """True when no alert for ``key`` was sent within the last ``window`` s."""
    last = sent.get(key)
    return last is None or now - last >= window


def _safe_error(exc):
    """Describe a failed POST without the URL (urllib puts it in some messages)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return f"unreachable ({type(reason).__name__}: {getattr(reason, 'strerror', '')})"
    return type(exc).__name__


# -- Salt side ------------------------------------------------------------------------------
def _settings():
    alerts = __salt__["libreswan.monitoring_settings"]()["alerts"]
    return alerts["rate_window"], alerts["timeout"]


def _post(url, body, timeout):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return answer.status


def send(conn, state, step, attempt=0, detail=None, force=False):
    """
    POST an alert about ``conn`` to the webhook, unless one for the same conn
    and state went out within ``alerts:rate_window`` seconds (``force=True``
    sends anyway). Returns ``{"sent", "reason"}``, never the URL.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' vpn_alert.send remote-db down gave_up attempt=3
    """
    url = __salt__["config.get"](URL_KEY, None)
    if not url:
        return {"sent": False, "reason": f"no webhook configured ({URL_KEY})"}
    window, timeout = _settings()
    sent = __salt__["libreswan.monitoring_memory"]("alerts")
    key = f"{conn}/{state}"
    now = time.time()
    if not force and not _rate_allows(sent, key, now, window):
        return {"sent": False, "reason": f"rate limited: one {key} alert per {window:g}s"}
    body = _payload(socket.gethostname(), conn, state, step, attempt, detail, now)
    try:
        code = _post(str(url), body, timeout)
    except Exception as exc:  # never let the URL out through the exception text
        reason = _safe_error(exc)
        log.warning("vpn_alert: webhook POST for %s failed: %s", key, reason)
        return {"sent": False, "reason": reason}
    sent[key] = now
    __salt__["libreswan.remember"]("alerts", sent)
    return {"sent": True, "reason": f"HTTP {code}"}


def test_webhook():
    """
    Send a test alert (not rate limited) to check the webhook.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' vpn_alert.test_webhook
    """
    return send("test", "test", "test_webhook", force=True)
