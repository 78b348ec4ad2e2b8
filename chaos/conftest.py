"""Fixtures for faults on the network: a Toxiproxy server and its client.

``toxiproxy_server`` runs one server for the whole session in a child process
(a real ``toxiproxy-server`` if one is on PATH), so a daemon under test and the
test itself reach the same proxies. ``toxiproxy`` is a toxiproxy-python client
pointed at it; module-scoped fixtures may use it to set up proxies that many
tests share. After every test that used it, proxies the test made are
destroyed and the rest are reset (enabled, no toxics): a fault never leaks
into the next test.
"""

from __future__ import annotations

import pytest
from toxiproxy import Toxiproxy

from chaos.proxy import ToxiproxyServer
from chaos.proxy import toxiproxy_server as start_toxiproxy_server


@pytest.fixture(scope="session")
def toxiproxy_server() -> ToxiproxyServer:
    """The running server: ``.host``, ``.port``, ``.url``, ``.real``."""
    with start_toxiproxy_server() as server:
        yield server


@pytest.fixture(scope="session")
def toxiproxy(toxiproxy_server) -> Toxiproxy:
    """A toxiproxy-python client for the session's server."""
    client = Toxiproxy()
    client.update_api_consumer(toxiproxy_server.host, toxiproxy_server.port)
    return client


@pytest.fixture(autouse=True)
def toxiproxy_cleanup(request):
    """Undo a test's faults: destroy the proxies it created, reset the ones that were there."""
    if "toxiproxy" not in request.fixturenames:
        yield
        return
    client = request.getfixturevalue("toxiproxy")
    before = set(client.proxies())
    yield
    for name, proxy in client.proxies().items():
        if name not in before:
            proxy.destroy()
    client.reset()


@pytest.fixture
def proxy(lab):
    """The module's ``lab`` fault proxy (chaos.s3lab), with no fault and nothing seen yet; whatever
    a test set is cleared after it."""
    lab.proxy.reset()
    yield lab.proxy
    lab.proxy.reset()
