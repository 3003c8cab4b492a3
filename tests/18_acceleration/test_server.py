"""InferenceServer on 127.0.0.1 with an ephemeral port: concurrent clients get their own answers, bad
requests get 400 with a message, a failing model 500, and close() releases the port and its threads."""

import http.client
import json
import socket
import threading

import numpy as np
import pytest

from tinytorch.acceleration import DynamicBatcher
from tinytorch.utils.serving import BadRequest, HTTPClient, InferenceServer, parse_request

TIMEOUT = 60


def model(batch):
    """Row-wise: the answer for a row does not depend on its batch."""
    return np.concatenate([batch.sum(axis=1, keepdims=True), batch[:, ::-1]], axis=1)


def raw(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


@pytest.fixture
def server():
    with DynamicBatcher(model, max_batch_size=8, max_wait_ms=1) as batcher, \
            InferenceServer(batcher, input_shape=(3,)) as srv:
        yield srv


def test_binds_loopback_on_an_ephemeral_port(server):
    assert server.host == "127.0.0.1" and server.port > 0
    assert server.httpd.server_address == ("127.0.0.1", server.port)
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert raw(server.port, "GET", "/health") == (200, {"status": "ok"})


def test_two_servers_get_different_ports():
    with InferenceServer(lambda x: x, (1,)) as a, InferenceServer(lambda x: x, (1,)) as b:
        assert a.port != b.port


def test_concurrent_clients_each_get_their_own_answer(server):
    client = HTTPClient(server.url, timeout=TIMEOUT)
    xs = np.random.default_rng(0).standard_normal((120, 3)).astype(np.float32)
    got, errors = {}, []

    def worker(k):
        try:
            for i in range(k, len(xs), 12):
                got[i] = client(xs[i])
        except Exception as e:      # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors
    for i, x in enumerate(xs):
        np.testing.assert_allclose(got[i], model(x[None])[0], rtol=1e-6)
    assert sum(server.predict.batch_sizes) == len(xs)   # every request ran exactly once


@pytest.mark.parametrize("body, words", [
    (b"{not json", "malformed JSON"),
    (b"\xff\xfe\x00", "malformed JSON"),
    (b"[1, 2, 3]", "JSON object"),
    (b'{"inputs": [1, 2, 3]}', "input"),
    (b'{"input": [1, 2]}', "shape (2,), expected (3,)"),
    (b'{"input": [[1, 2, 3]]}', "shape (1, 3), expected (3,)"),
    (b'{"input": [1, "2", 3]}', "numbers"),
    (b'{"input": [1, null, 3]}', "numbers"),
    (b'{"input": [true, false, true]}', "numbers"),
    (b'{"input": [[1, 2], [3]]}', "rectangular"),
    (b'{"input": [1, Infinity, 3]}', "non-finite"),
])
def test_bad_requests_get_400_with_a_message(server, body, words):
    status, payload = raw(server.port, "POST", "/predict", body)
    assert status == 400 and words in payload["error"]


def test_bad_request_does_not_break_the_connection(server):
    client = HTTPClient(server.url, timeout=TIMEOUT)
    assert client.request("POST", "/predict", b"{oops")[0] == 400
    np.testing.assert_allclose(client(np.array([1.0, 2.0, 3.0])), [6, 3, 2, 1])  # same keep-alive connection
    with pytest.raises(RuntimeError, match="HTTP 400: input has shape"):
        client(np.zeros(4))


def test_missing_length_unknown_path_and_oversized_body(server):
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    conn.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = conn.recv(4096).decode()
    conn.close()
    assert reply.startswith("HTTP/1.1 400") and "Content-Length" in reply
    assert raw(server.port, "POST", "/other", b"{}")[0] == 404
    assert raw(server.port, "GET", "/predict")[0] == 404
    small = InferenceServer(lambda x: x, (3,), max_body_bytes=10).start()
    try:
        status, payload = raw(small.port, "POST", "/predict", b'{"input": [1, 2, 3]}')
        assert status == 413 and "limit of 10" in payload["error"]
    finally:
        small.close()


def test_a_failing_model_is_500_with_its_error():
    def broken(x):
        raise ArithmeticError("the model blew up")
    with InferenceServer(broken, (2,)) as srv:
        status, payload = raw(srv.port, "POST", "/predict", b'{"input": [1, 2]}')
    assert status == 500 and payload["error"] == "ArithmeticError: the model blew up"


def test_clean_shutdown_releases_port_and_threads():
    before = {t.ident for t in threading.enumerate()}
    srv = InferenceServer(lambda x: x * 2, (2,)).start()
    client = HTTPClient(srv.url, timeout=TIMEOUT)
    np.testing.assert_allclose(client(np.array([1.0, 2.0])), [2.0, 4.0])   # leaves an idle keep-alive connection
    port = srv.port
    srv.close()
    srv.close()     # idempotent
    assert srv.httpd is None
    leftover = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not leftover, leftover
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    # the port can be bound again at once
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.close()


def test_in_flight_request_is_answered_during_shutdown():
    started, release = threading.Event(), threading.Event()

    def slow(x):
        started.set()
        release.wait(TIMEOUT)
        return x + 1

    srv = InferenceServer(slow, (1,)).start()
    answer = {}
    t = threading.Thread(target=lambda: answer.update(r=raw(srv.port, "POST", "/predict", b'{"input": [1]}')))
    t.start()
    assert started.wait(TIMEOUT)
    closer = threading.Thread(target=srv.close)
    closer.start()
    release.set()
    closer.join(TIMEOUT)
    t.join(TIMEOUT)
    assert answer["r"] == (200, {"output": [2.0]})


def test_parse_request_and_constructor_errors():
    np.testing.assert_array_equal(parse_request(b'{"input": [[1, 2]]}', (1, 2)), [[1, 2]])
    assert parse_request(b'{"input": 3}', ()).shape == ()
    with pytest.raises(BadRequest):
        parse_request(b"", (1,))
    with pytest.raises(TypeError):
        InferenceServer("nope", (1,))
    with pytest.raises(ValueError):
        HTTPClient("127.0.0.1:80")
    srv = InferenceServer(lambda x: x, (1,)).start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            srv.start()
    finally:
        srv.close()


def test_a_404_closes_the_connection_so_its_unread_body_is_not_the_next_request(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request("POST", "/wrong", body=json.dumps({"input": [1, 2, 3]}))
        r = conn.getresponse()
        assert r.status == 404 and "no such path" in json.loads(r.read())["error"]
        # http.client reconnects for the next request on a closed connection; on a kept-alive one
        # the unread body would be parsed as a request line and this would fail
        conn.request("POST", "/predict", body=json.dumps({"input": [1, 2, 3]}))
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["output"] == [6, 3, 2, 1]
    finally:
        conn.close()


def test_a_batch_that_does_not_answer_in_time_is_504():
    release = threading.Event()

    def stuck(batch):
        release.wait(TIMEOUT)
        return batch

    with DynamicBatcher(stuck, max_batch_size=2, max_wait_ms=0) as batcher, \
            InferenceServer(batcher, input_shape=(3,), timeout=0.2) as srv:
        try:
            status, body = raw(srv.port, "POST", "/predict", json.dumps({"input": [1, 2, 3]}))
            assert status == 504 and "0.2 s" in body["error"]
        finally:
            release.set()
