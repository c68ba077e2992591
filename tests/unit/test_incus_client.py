"""providers/incus_client.IncusClient.request: what is sent again when incusd lets a kept-alive connection go."""

from __future__ import annotations

import http.client
from types import SimpleNamespace

import pytest
import requests
import urllib3

from providers.incus_client import Connection, IncusClient, IncusError


class Session:
    def __init__(self, failures: int):
        self.failures, self.calls, self.verify = failures, [], True

    def request(self, method, url, **kw):
        self.calls.append(method)
        if len(self.calls) <= self.failures:
            raise requests.ConnectionError(urllib3.exceptions.ProtocolError(
                "Connection aborted.", http.client.RemoteDisconnected("Remote end closed connection without response")))
        return SimpleNamespace(status_code=200, json=lambda: {"metadata": {}})


def client(failures: int) -> IncusClient:
    c = IncusClient.__new__(IncusClient)
    c.conn = Connection()
    c.api = SimpleNamespace(session=Session(failures), _api_endpoint="http://incus/1.0")
    return c


def test_a_read_on_a_connection_closed_before_its_answer_is_sent_again_once():
    c = client(failures=1)
    assert c.request("GET", "instances/x").status_code == 200
    assert c.api.session.calls == ["GET", "GET"]


def test_a_read_closed_twice_and_a_write_closed_once_fail_with_the_way_out():
    c = client(failures=2)
    with pytest.raises(IncusError, match="cannot reach Incus .* run `up` again"):
        c.request("GET", "instances/x")
    c = client(failures=1)
    with pytest.raises(IncusError, match="cannot reach Incus"):
        c.request("PUT", "instances/x/state", json={"action": "stop"})
    assert c.api.session.calls == ["PUT"]  # a write is never sent twice: it may have been carried out
