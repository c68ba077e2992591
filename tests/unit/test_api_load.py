"""tests/k8s.ApiLoad counts what a client-go client would see: which errors it retries, and after how long."""

from __future__ import annotations

import http.client
import ssl
import threading

import pytest

from tests.k8s import ApiLoad


class Scripted(ApiLoad):
    """ApiLoad whose connections answer from a script: an exception to raise or an HTTP status, in turn."""

    RESET_RETRY_SECONDS = 0.0

    def __init__(self, script):
        self.script = list(script)
        self.lock = threading.Lock()
        self.counts = {"ok": 0, "failed": 0, "retry_after": 0, "reconnects": 0, "retried": 0}
        self.errors, self.resets, self.failed_at = [], [], []
        self.failed_on = {"fresh": 0, "kept": 0}

    def _conn(self):
        return object()

    def _once(self, conn):
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step, {"retry-after": None, "body": b""}


@pytest.mark.parametrize("error", [ConnectionResetError(104, "reset"), http.client.RemoteDisconnected("closed"),
                                   ssl.SSLEOFError(8, "EOF in violation of protocol"), BrokenPipeError(32, "pipe"),
                                   http.client.IncompleteRead(b"")])
def test_a_get_that_meets_a_reset_or_an_eof_is_retried_as_client_go_does(error):
    load = Scripted([error, 200])
    load._request(None, reused=False)
    assert load.counts == {"ok": 1, "failed": 0, "retry_after": 0, "reconnects": 0, "retried": 1}
    assert [why for _, why in load.resets] == [f"{type(error).__name__}: {error}"]


@pytest.mark.parametrize("error", [ConnectionRefusedError(111, "refused"), TimeoutError("timed out"),
                                   ssl.SSLCertVerificationError(1, "certificate verify failed")])
def test_a_refused_connection_a_timeout_or_a_bad_certificate_fails_at_once(error):
    load = Scripted([error, 200])
    load._request(None, reused=False)
    assert load.counts["failed"] == 1 and load.counts["ok"] == 0 and load.counts["retried"] == 0, load.counts


def test_a_reused_connection_closed_by_the_server_is_reopened_at_once_then_retried_after_a_reset():
    load = Scripted([http.client.RemoteDisconnected("idle closed"), ConnectionResetError(104, "reset"), 200])
    load._request(object(), reused=True, kind="kept")
    assert load.counts == {"ok": 1, "failed": 0, "retry_after": 0, "reconnects": 1, "retried": 1}


def test_resets_are_retried_a_bounded_number_of_times_then_fail():
    load = Scripted([ConnectionResetError(104, "reset")] * (ApiLoad.RETRIED_AFTER_RESET + 1))
    load._request(None, reused=False)
    assert load.counts["retried"] == ApiLoad.RETRIED_AFTER_RESET and load.counts["failed"] == 1, load.counts
    assert load.failed_on == {"fresh": 1, "kept": 0}


def test_a_wrong_answer_is_a_failure():
    load = Scripted([500])
    load._request(None, reused=False)
    assert load.counts["failed"] == 1 and load.errors == ["HTTP 500: b''"]
