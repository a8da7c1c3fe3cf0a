"""The test process itself listens on loopback only (FACTS: pytest-salt-factories
would bind its log server and event listener to 0.0.0.0)."""
import os
import subprocess


def own_listeners():
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if f"pid={os.getpid()}," in line]


def test_the_salt_factories_log_server_listens_on_loopback_only():
    listeners = own_listeners()
    assert listeners, "the salt-factories log server should be running in this session"
    assert all(addr.startswith("127.0.0.1:") for addr in listeners), listeners


def test_the_salt_factories_event_listener_listens_on_loopback_only(event_listener):
    assert f"127.0.0.1:{event_listener.port}" in own_listeners()
    assert all(addr.startswith("127.0.0.1:") for addr in own_listeners())
