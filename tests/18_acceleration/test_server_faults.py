"""Faults in the model behind the DynamicBatcher and the InferenceServer, with real threads and a
real loopback server: one request whose row makes the model fail fails only that request (and its
error text reaches only its own client); a model call that hangs shows in /health, and
close(drain=False) fails every waiting request at once and says when the worker cannot stop."""

import http.client
import json
import threading
import time

import numpy as np
import pytest

from tinytorch.acceleration import DynamicBatcher
from tinytorch.utils.serving import HTTPClient, InferenceServer

TIMEOUT = 60


def poisoned(batch):
    """Fails for a whole batch when any row is negative, naming that row, as a model can."""
    bad = batch[batch[:, 0] < 0]
    if len(bad):
        raise ValueError(f"row {int(bad[0, 0])} is poison")
    return batch * 2


def raw(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_one_bad_row_fails_only_its_own_request_under_concurrent_load():
    n, threads = 360, 8
    values = [-(i + 1) if i % 9 == 4 else i + 1 for i in range(n)]     # 40 poisoned, 320 innocent
    futures = [None] * n
    with DynamicBatcher(poisoned, max_batch_size=16, max_wait_ms=2) as b:
        def client(k):
            for i in range(k, n, threads):
                futures[i] = b.submit(np.array([values[i], 0], np.float32))

        ths = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(TIMEOUT)
        for i, f in enumerate(futures):
            if values[i] < 0:
                err = f.exception(timeout=TIMEOUT)
                assert isinstance(err, ValueError) and str(err) == f"row {values[i]} is poison"   # its own
            else:
                assert f.result(timeout=TIMEOUT).tolist() == [2 * values[i], 0]
        assert max(b.batch_sizes) > 1   # the test did batch rows together


def test_over_http_no_client_receives_another_clients_error():
    results = {}
    with DynamicBatcher(poisoned, max_batch_size=8, max_wait_ms=5) as b, \
            InferenceServer(b, input_shape=(2,)) as srv:
        client = HTTPClient(srv.url)

        def hit(k):
            for j in range(15):
                v = -(100 + j) if k == 0 else k * 100 + j
                results[k, j] = client.request("POST", "/predict", json.dumps({"input": [v, 1]}).encode())

        ths = [threading.Thread(target=hit, args=(k,)) for k in range(6)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(TIMEOUT)
    for (k, j), (status, payload) in results.items():
        if k == 0:
            assert status == 500 and payload["error"] == f"ValueError: row {-(100 + j)} is poison"
        else:
            assert status == 200 and payload == {"output": [2 * (k * 100 + j), 2]}, (k, j, status, payload)
    assert len(results) == 90


def test_a_hanging_model_shows_in_health_and_close_fails_every_waiting_request():
    release = threading.Event()
    batches = []

    def hangs(batch):
        batches.append(batch[:, 0].tolist())
        if (batch < 0).any():
            release.wait(TIMEOUT)   # a model call that does not return
        return batch * 2

    b = DynamicBatcher(hangs, max_batch_size=4, max_wait_ms=1)
    srv = InferenceServer(b, input_shape=(1,), timeout=0.3).start()
    try:
        assert raw(srv.port, "GET", "/health") == (200, {"status": "ok"})
        assert raw(srv.port, "POST", "/predict", b'{"input": [-1]}')[0] == 504
        # the batch started a moment after the request (max_wait_ms): poll until it has run > timeout
        deadline = time.monotonic() + 10
        while (answer := raw(srv.port, "GET", "/health"))[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, payload = answer
        assert status == 503 and "may hang" in payload["error"], payload
        queued = b.submit(np.float32([5]))          # waits behind the stuck batch
        stuck = b._running[1][0].future
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="still inside fn"):
            b.close(drain=False, timeout=0.2)
        assert isinstance(queued.exception(timeout=0), RuntimeError)   # failed at once, not waiting
        assert isinstance(stuck.exception(timeout=0), RuntimeError)
        assert time.monotonic() - t0 < TIMEOUT / 2
        status, payload = raw(srv.port, "GET", "/health")
        assert status == 503 and "closed" in payload["error"]
        release.set()
        b._worker.join(TIMEOUT)
        assert not b._worker.is_alive() and batches == [[-1.0]]   # it ran nothing more
    finally:
        release.set()
        srv.close()


def test_a_hanging_plain_function_shows_in_health():
    release = threading.Event()
    srv = InferenceServer(lambda x: (release.wait(TIMEOUT), x)[1], input_shape=(1,), timeout=0.2).start()
    try:
        t = threading.Thread(target=raw, args=(srv.port, "POST", "/predict", b'{"input": [1]}'))
        t.start()
        deadline = time.monotonic() + TIMEOUT
        while raw(srv.port, "GET", "/health")[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, payload = raw(srv.port, "GET", "/health")
        assert status == 503 and "/predict request has been running" in payload["error"]
        release.set()
        t.join(TIMEOUT)
        # the handler forgets its request just after the client has read the reply: poll, bounded
        deadline = time.monotonic() + TIMEOUT
        while raw(srv.port, "GET", "/health")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert raw(srv.port, "GET", "/health") == (200, {"status": "ok"})
    finally:
        release.set()
        srv.close()


@pytest.fixture
def echo_server():
    with InferenceServer(lambda x: x * 2, input_shape=(2,)) as srv:
        yield srv


def send(port, request: bytes) -> str:
    """One raw HTTP exchange on a fresh connection: the status line and the body."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        conn.sendall(request)
        reply = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
            if b"\r\n\r\n" in reply:
                head, _, body = reply.partition(b"\r\n\r\n")
                length = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
                if length and len(body) >= length[0]:
                    break
    return reply.decode()


def post(body: bytes, *headers: str) -> bytes:
    lines = ["POST /predict HTTP/1.1", "Host: x", *headers]
    if not any(h.lower().startswith("content-length") for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize("depth", [5_000, 200_000])
def test_deeply_nested_json_is_a_400(echo_server, depth):
    body = b'{"input": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
    if len(body) > echo_server.max_body_bytes:
        echo_server.max_body_bytes = len(body) + 1
    status, payload = raw(echo_server.port, "POST", "/predict", body)
    assert status == 400 and "nested too deeply" in payload["error"]
    assert raw(echo_server.port, "POST", "/predict", b'{"input": [1, 2]}') == (200, {"output": [2.0, 4.0]})


@pytest.mark.parametrize("value", ["[1, true]", "[1.5, false]", "[true, 2]", "[[1, 2]]"])
def test_booleans_are_not_numbers(value):
    with InferenceServer(lambda x: x, input_shape=(2,) if value != "[[1, 2]]" else (1, 2)) as srv:
        status, payload = raw(srv.port, "POST", "/predict", b'{"input": %s}' % value.encode())
        if "true" in value or "false" in value:
            assert status == 400 and "true/false" in payload["error"], payload
        else:
            assert status == 200


@pytest.mark.parametrize("ctype, status", [("application/json", 200), ("application/json; charset=utf-8", 200),
                                           ("text/plain", 415), ("application/x-www-form-urlencoded", 415)])
def test_content_type_other_than_json_is_a_415(echo_server, ctype, status):
    got, payload = raw(echo_server.port, "POST", "/predict", b'{"input": [1, 2]}', {"Content-Type": ctype})
    assert got == status, payload
    if status == 415:
        assert ctype in payload["error"]


def test_a_duplicate_or_malformed_content_length_is_a_400(echo_server):
    body = b'{"input": [1, 2]}'
    for headers in ([f"Content-Length: {len(body)}", "Content-Length: 3"],
                    ["Content-Length: 3", f"Content-Length: {len(body)}"],
                    [f"Content-Length: {len(body)}", f"Content-Length: {len(body)}"],
                    [f"Content-Length: +{len(body)}"],
                    [f"Content-Length: {len(body)}", "Transfer-Encoding: chunked"]):
        reply = send(echo_server.port, post(body, *headers))
        assert reply.startswith("HTTP/1.1 400") and ("Content-Length" in reply or "Transfer-Encoding" in reply), reply
    assert send(echo_server.port, post(body)).startswith("HTTP/1.1 200")


def test_a_handler_bug_still_gets_an_answer():
    srv = InferenceServer(lambda x: x, input_shape=(2,))
    with srv:
        srv.input_shape = None   # parse_request now fails with a TypeError, not a BadRequest
        status, payload = raw(srv.port, "POST", "/predict", b'{"input": [1, 2]}')
    assert status == 500 and "TypeError" in payload["error"]
