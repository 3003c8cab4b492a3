"""The plumbing of serving a model: the queue and worker thread a dynamic batcher runs on
(BatchQueue; module 18's DynamicBatcher fills in how requests are grouped and run), a JSON
inference server on 127.0.0.1 in front of any predict(x) (a batcher, or a plain function), a
keep-alive client, a closed-loop load generator that reports throughput and latency percentiles,
and the records (and argument check) of a run of generation requests.

Standard library only (threading, http.server, http.client): what module 18 teaches is the
batching, so the threads and sockets around it are library code, tested here, that the notebook uses.

    >>> with InferenceServer(lambda x: x * 2, input_shape=(2,)) as server:
    ...     HTTPClient(server.url)(np.array([1.0, 2.0]))
    array([2., 4.], dtype=float32)
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import numpy as np

from tinytorch.core.attention import GPT
from tinytorch.core.checks import check_int, check_number
from tinytorch.core.tensor import Tensor
from tinytorch.profiling import LatencyStats, latency_stats

__all__ = ["BadRequest", "BatchQueue", "GenerationRun", "HTTPClient", "InferenceServer", "LoadReport", "Request",
           "RequestResult", "as_array", "check_generation_requests", "parse_request", "run_load"]


def as_array(x) -> np.ndarray:
    """A Tensor's data array, or np.asarray(x) for anything else (no copy when x already is one).

    >>> as_array(Tensor([1.0, 2.0])).tolist(), as_array([3]).tolist()
    ([1.0, 2.0], [3])
    """
    return x.data if isinstance(x, Tensor) else np.asarray(x)


@dataclass
class Request:
    """One queued input of a batcher: its array, the Future its caller waits on, its arrival time."""
    x: np.ndarray
    future: Future
    arrival: float      # time.monotonic() when it was queued


class BatchQueue:
    """The threads and bookkeeping of a dynamic batcher, without its policy. A subclass writes
    submit(x), _collect(), _run_batch(requests) and close(drain, timeout); this class gives it:

    - the checked settings self.fn, self.max_batch_size, self.max_wait_ms, self.input_shape
      (None until given or fixed by the first request) and self.batch_sizes (one entry per batch);
    - self._queue, a deque of Request, and self._closed, both guarded by self._cond, one
      threading.Condition;
    - the worker thread: it calls self._collect() (a list of requests, or None to stop) and then
      self._run_batch(requests) (with self._running = (start time, requests) meanwhile) until
      _collect returns None; however it ends, the batcher is closed and queued requests fail;
    - _check_input(x) (a numeric array of the shape, if fixed), _fail_queued(why) (call with
      self._cond held) and _fail_running(why), health(stuck_after_s), __call__ (submit and wait)
      and the context manager (close on exit).
    """

    def __init__(self, fn, max_batch_size: int = 32, max_wait_ms: float = 2.0, input_shape=None):
        name = type(self).__name__
        if not callable(fn):
            raise TypeError(f"{name} expects a callable fn(batch), got {type(fn).__name__}")
        self.fn = fn
        self.max_batch_size = check_int(max_batch_size, "max_batch_size", 1)
        self.max_wait_ms = check_number(max_wait_ms, "max_wait_ms", allow_zero=True)
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        self.batch_sizes: list = []      # size of every batch run so far, in order
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._running = None             # (start time, requests) of the batch fn is running
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    # what a batcher decides: how to queue, group, run and stop
    def submit(self, x) -> Future:
        raise NotImplementedError

    def _collect(self):
        raise NotImplementedError

    def _run_batch(self, requests: list) -> None:
        raise NotImplementedError

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_input(self, x) -> np.ndarray:
        a = as_array(x)
        name = type(self).__name__
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name}.submit expects a numeric array, got dtype {a.dtype}")
        if self.input_shape is not None and a.shape != self.input_shape:
            raise ValueError(f"{name}.submit got an input of shape {a.shape}, expected {self.input_shape}")
        return a

    def __call__(self, x, timeout: float | None = None):
        """submit(x).result(timeout): a blocking single-request call."""
        return self.submit(x).result(timeout)

    def _loop(self) -> None:
        try:
            while True:
                requests = self._collect()
                if requests is None:
                    return
                self._running = (time.monotonic(), requests)
                try:
                    self._run_batch(requests)
                except Exception:
                    # close(drain=False) failed this batch while fn ran: its results have nowhere to go
                    if not (self._closed and all(r.future.done() for r in requests)):
                        raise
                finally:
                    self._running = None
        finally:
            # however the worker ends, no queued request may wait forever and later submits fail
            with self._cond:
                self._closed = True
                self._fail_queued(f"the {type(self).__name__} worker stopped before this request ran")

    def _fail_queued(self, why: str) -> None:
        """Fail every queued request (call with self._cond held)."""
        while self._queue:
            r = self._queue.popleft()
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(RuntimeError(why))

    def _fail_running(self, why: str) -> None:
        """Fail the requests of the batch fn is running now (a call that may never return)."""
        running = self._running
        for r in running[1] if running else ():
            try:
                r.future.set_exception(RuntimeError(why))
            except InvalidStateError:  # it got its answer meanwhile
                pass

    def health(self, stuck_after_s: float) -> str | None:
        """None when the batcher can serve; else why not (closed, worker stopped, or fn running
        one batch for more than stuck_after_s seconds: the model call may hang)."""
        name = type(self).__name__
        if self._closed:
            return f"the {name} is closed"
        if not self._worker.is_alive():
            return f"the {name} worker thread has stopped"
        running = self._running
        if running is not None and time.monotonic() - running[0] > stuck_after_s:
            return (f"the model has been running one batch for {time.monotonic() - running[0]:.1f} s, "
                    f"more than {stuck_after_s:g} s: it may hang")
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(max_batch_size={self.max_batch_size}, max_wait_ms={self.max_wait_ms}, "
                f"batches={len(self.batch_sizes)}, closed={self._closed})")


class BadRequest(ValueError):
    """A client error: the server answers 400 with this message."""


def _has_bool(value) -> bool:
    """Whether a rectangular nest of JSON lists holds a true or false (NumPy would read it as 1 or 0)."""
    if isinstance(value, bool):
        return True
    if not isinstance(value, list):
        return False
    flat = np.asarray(value, dtype=object).ravel()
    return any(type(v) is bool for v in flat)


def parse_request(body: bytes, input_shape: tuple) -> np.ndarray:
    """The float32 input array of a JSON body {"input": [...]}; BadRequest naming the problem otherwise.

    Refused: a body that is not JSON (or nests too deeply to parse), JSON that is not an object
    with an "input" key, an input that is not a rectangular array of numbers (a JSON true is not
    the number 1, though np.asarray([1, True]) is an int array), the wrong shape, non-finite values.

    >>> parse_request(b'{"input": [1, 2.5]}', (2,))
    array([1. , 2.5], dtype=float32)
    """
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"malformed JSON: {error}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply to parse") from None
    if not isinstance(payload, dict) or "input" not in payload:
        raise BadRequest('expected a JSON object {"input": [...]}, got ' + type(payload).__name__
                         + ("" if not isinstance(payload, dict) else f" with keys {sorted(payload)}"))
    try:
        a = np.asarray(payload["input"])
    except ValueError as error:
        raise BadRequest(f"input is not a rectangular array of numbers: {error}") from None
    if a.dtype.kind not in "iuf" or _has_bool(payload["input"]):
        kind = "true/false" if a.dtype.kind in "iuf" else f"JSON values of NumPy dtype {a.dtype}"
        raise BadRequest(f"input must be numbers, got {kind}")
    a = a.astype(np.float32)
    if a.shape != tuple(input_shape):
        raise BadRequest(f"input has shape {a.shape}, expected {tuple(input_shape)}")
    if not np.isfinite(a).all():
        raise BadRequest("input contains non-finite values (NaN or infinity)")
    return a


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive: one connection per client, many requests
    timeout = 30                      # seconds an idle connection may stay open
    # TCP_NODELAY: a reply is two writes (headers, then body); with Nagle's algorithm on, the body
    # waits for the client to acknowledge the headers, which it delays by up to 40 ms, so every
    # keep-alive request would cost ~40 ms of TCP timers instead of the model's time
    disable_nagle_algorithm = True

    def setup(self):
        super().setup()
        self.server.app._track(self.connection, add=True)

    def finish(self):
        self.server.app._track(self.connection, add=False)
        super().finish()

    def log_message(self, format, *args):   # quiet: the load test would print thousands of lines
        pass

    def _reply(self, status: int, payload: dict) -> None:
        self._replied = True
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:  # tell the client, so it opens a new connection for its next request
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            problem = self.server.app.health()
            if problem:
                self._reply(503, {"status": "unavailable", "error": problem})
            else:
                self._reply(200, {"status": "ok"})
        else:
            self._reply(404, {"error": f"no such path {self.path!r}; POST /predict or GET /health"})

    def _header_problem(self):
        """(status, message) for headers HTTP says to refuse, else None. The body is not read."""
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) > 1:
            return 400, f"{len(lengths)} Content-Length headers; exactly one is allowed"
        if lengths and not (lengths[0].isascii() and lengths[0].isdigit()):
            return 400, f"Content-Length must be a decimal number of bytes, got {lengths[0]!r}"
        if self.headers.get("Transfer-Encoding") is not None:
            return 400, "Transfer-Encoding is not supported; send the body with a Content-Length"
        ctype = self.headers.get_content_type() if self.headers.get("Content-Type") else "application/json"
        if ctype != "application/json":
            return 415, f"Content-Type must be application/json, got {self.headers.get('Content-Type')!r}"
        return None

    def do_POST(self):
        app, key = self.server.app, object()
        self._replied = False
        problem = self._header_problem()
        if problem:
            self.close_connection = True   # its body is not read: it must not be taken for the next request
            self._reply(problem[0], {"error": problem[1]})
            return
        with app._lock:
            app._in_flight[key] = time.monotonic()
        try:
            app._handle_post(self)
        except Exception as error:    # a bug must still answer, not drop the connection silently
            if not self._replied:
                self.close_connection = True
                self._reply(500, {"error": f"internal server error ({type(error).__name__})"})
        finally:
            with app._lock:
                del app._in_flight[key]


class InferenceServer:
    """A JSON inference server on host:port (port 0: one the OS picks) in front of predict.

    POST /predict {"input": [...]} answers 200 {"output": [...]}: predict(x) on the input array
    of input_shape. `predict` is a function of one input, or a batcher with submit(x) -> Future
    and health(stuck_after_s) (module 18's DynamicBatcher): a batched request waits at most
    `timeout` seconds for its answer (504 after that; a plain function cannot be interrupted).
    Errors answer {"error": "..."}: 400 for a bad request (parse_request's message, a missing,
    duplicate or malformed Content-Length, a Transfer-Encoding), 404 for another path, 413 for a
    body over max_body_bytes, 415 for a Content-Type other than JSON, 500 when predict raises
    ("<Type>: <message>") or the handler fails. GET /health is 200 {"status": "ok"}, or 503 with
    the reason from health(). One thread per connection (keep-alive); close() stops serving,
    ends the connection threads (a request in flight still gets its answer) and frees the port.

    >>> with InferenceServer(lambda x: x * 2, input_shape=(2,)) as server:
    ...     HTTPClient(server.url)(np.array([1.0, 2.0]))
    array([2., 4.], dtype=float32)
    """

    def __init__(self, predict, input_shape, host: str = "127.0.0.1", port: int = 0,
                 max_body_bytes: int = 1 << 20, timeout: float = 60.0):
        if not callable(predict):
            raise TypeError(f"InferenceServer expects a callable predict(x), got {type(predict).__name__}")
        self.predict = predict
        self.input_shape = tuple(int(s) for s in input_shape)
        self.host, self.port = host, check_int(port, "port", 0)
        self.max_body_bytes = check_int(max_body_bytes, "max_body_bytes", 1)
        self.timeout = check_number(timeout, "timeout")
        self.httpd = None
        self._thread = None
        self._connections: set = set()
        self._in_flight: dict = {}       # start time of every POST being answered
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def health(self) -> str | None:
        """None when the server can answer; else why not (GET /health is then 503 with it)."""
        with self._lock:
            oldest = min(self._in_flight.values(), default=None)
        if oldest is not None and time.monotonic() - oldest > self.timeout:
            return (f"a /predict request has been running for {time.monotonic() - oldest:.1f} s, "
                    f"more than the timeout of {self.timeout:g} s: the model may hang")
        health = getattr(self.predict, "health", None)   # a batcher says why it cannot serve
        return health(self.timeout) if callable(health) else None

    def _track(self, sock, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(sock)

    def start(self) -> "InferenceServer":
        if self.httpd is not None:
            raise RuntimeError("InferenceServer is already started")
        self.httpd = ThreadingHTTPServer((self.host, self.port), _Handler)
        self.httpd.daemon_threads = False     # server_close() joins the connection threads
        self.httpd.app = self
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="InferenceServer", daemon=True)
        self._thread.start()
        return self

    def _handle_post(self, h: BaseHTTPRequestHandler) -> None:
        if h.path != "/predict":
            h.close_connection = True  # its body is not read: it must not be taken for the next request
            h._reply(404, {"error": f"no such path {h.path!r}; POST /predict"})
            return
        try:
            length = int(h.headers.get("Content-Length", ""))
            if length < 0:
                raise ValueError
        except ValueError:
            h.close_connection = True
            h._reply(400, {"error": "a request body with a valid Content-Length header is required"})
            return
        if length > self.max_body_bytes:
            h.close_connection = True
            h._reply(413, {"error": f"body of {length} bytes exceeds the limit of {self.max_body_bytes}"})
            return
        try:
            x = parse_request(h.rfile.read(length), self.input_shape)
        except BadRequest as error:
            h._reply(400, {"error": str(error)})
            return
        try:
            submit = getattr(self.predict, "submit", None)
            if callable(submit):   # a batcher: wait for this request's row, at most `timeout`
                y = as_array(submit(x).result(self.timeout))
            else:
                y = as_array(self.predict(x))
        except FutureTimeout:
            h._reply(504, {"error": f"no answer within {self.timeout} s"})
            return
        except Exception as error:
            h._reply(500, {"error": f"{type(error).__name__}: {error}"})
            return
        h._reply(200, {"output": y.tolist()})

    def close(self) -> None:
        """Stop serving, end the connection threads, release the port. Idempotent."""
        if self.httpd is None:
            return
        self.httpd.shutdown()
        with self._lock:
            for sock in list(self._connections):
                try:
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
        self.httpd.server_close()
        self._thread.join()
        self.httpd = None

    def __enter__(self):
        return self.start() if self.httpd is None else self

    def __exit__(self, *exc) -> None:
        self.close()


class HTTPClient:
    """Call a running InferenceServer: client(x) -> output array. One keep-alive connection per thread.

    A non-200 answer raises RuntimeError("HTTP <status>: <the server's error message>").
    """

    def __init__(self, url: str, timeout: float = 30.0):
        parsed = urlparse(url)
        if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
            raise ValueError(f"HTTPClient expects a URL like http://127.0.0.1:8000, got {url!r}")
        self.host, self.port = parsed.hostname, parsed.port
        self.timeout = check_number(timeout, "timeout")
        self._local = threading.local()

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple:
        """(status, decoded JSON) of one request on this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = json.loads(response.read())
        except (OSError, http.client.HTTPException):
            conn.close()
            self._local.conn = None
            raise
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
            self._local.conn = None
        return response.status, payload

    def __call__(self, x) -> np.ndarray:
        status, payload = self.request("POST", "/predict", json.dumps({"input": as_array(x).tolist()}).encode())
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {payload.get('error')}")
        return np.asarray(payload["output"], dtype=np.float32)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None



@dataclass
class LoadReport:
    requests: int           # answered without error
    errors: int
    seconds: float          # wall time from the start until the last client stopped (>= duration_s)
    latency: LatencyStats | None   # per answered request (None if there was none)
    error_messages: list = field(default_factory=list)   # up to 5 examples

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        if self.latency is None:
            return f"{self.requests} requests, {self.errors} errors in {self.seconds:.2f} s"
        return (f"{self.requests} requests, {self.errors} errors in {self.seconds:.2f} s: {self.throughput:.0f}/s, "
                f"p50 {self.latency.median * 1e3:.2f} ms, p99 {self.latency.p99 * 1e3:.2f} ms")


def run_load(call, inputs, concurrency: int = 8, duration_s: float = 2.0, check=None) -> LoadReport:
    """Closed-loop load: `concurrency` threads call call(inputs[i]) back to back for duration_s.

    check(i, output) may raise to count an answer as an error (e.g. compare with the expected one).

    Requests cycle through the inputs (a shared counter picks inputs[i % len(inputs)]); a request
    started before the deadline is waited for, so the run lasts at most duration_s plus one
    request, and `seconds` ends when the last client stopped.

    >>> run_load(lambda x: x + 1, [np.zeros(2)], concurrency=2, duration_s=0.05).errors
    0
    """
    if not callable(call):
        raise TypeError(f"run_load expects a callable call(x), got {type(call).__name__}")
    inputs = list(inputs)
    if not inputs:
        raise ValueError("run_load needs at least one input")
    check_int(concurrency, "concurrency", 1)
    check_number(duration_s, "duration_s")
    lock = threading.Lock()
    latencies, messages = [], []
    state = {"next": 0, "errors": 0, "last": 0.0}
    start = time.perf_counter()
    deadline = start + duration_s

    def client():
        while time.perf_counter() < deadline:
            with lock:
                i = state["next"] % len(inputs)
                state["next"] += 1
            t0 = time.perf_counter()
            try:
                y = call(inputs[i])
                if check is not None:
                    check(i, y)
                ok, message = True, None
            except Exception as error:
                ok, message = False, f"{type(error).__name__}: {error}"
            t1 = time.perf_counter()
            with lock:
                if ok:
                    latencies.append(t1 - t0)
                else:
                    state["errors"] += 1
                    if len(messages) < 5:
                        messages.append(message)
        with lock:   # this client stopped: its last answer came after the deadline
            state["last"] = max(state["last"], time.perf_counter())

    threads = [threading.Thread(target=client, name=f"load-{k}") for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = max(state["last"] - start, 1e-9)
    return LoadReport(len(latencies), state["errors"], seconds,
                      latency_stats(latencies) if latencies else None, messages)


@dataclass
class RequestResult:
    """One generation request's answer: its tokens and when they came."""
    tokens: np.ndarray     # the new tokens, int64
    ttft_s: float          # time to first token, from the start of the run
    latency_s: float       # time to the last token, from the start of the run


@dataclass
class GenerationRun:
    """A run of generation requests (module 18's generate_static / _continuous / _parallel)."""
    results: list          # RequestResult per request, in request order
    seconds: float         # wall time of the whole run
    decode_steps: int      # batched decode steps (one token for each active row)

    @property
    def tokens(self) -> int:
        return int(sum(len(r.tokens) for r in self.results))

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_ttft_s(self) -> float:
        return float(np.mean([r.ttft_s for r in self.results])) if self.results else 0.0


def check_generation_requests(model, prompts, max_new_tokens) -> tuple:
    """(prompts as arrays, one count per prompt) for a batch of greedy generation requests on a GPT;
    TypeError/ValueError naming the request otherwise (an int max_new_tokens applies to every prompt;
    a prompt of P tokens that wants n needs P + n - 1 cache positions within the context length)."""
    if not isinstance(model, GPT):
        raise TypeError(f"expected a GPT model, got {type(model).__name__}")
    prompts = [np.asarray(p) for p in prompts]
    if not prompts:
        raise ValueError("no requests: prompts is empty")
    if isinstance(max_new_tokens, (int, np.integer)) and not isinstance(max_new_tokens, bool):
        max_new_tokens = [max_new_tokens] * len(prompts)
    counts = [check_int(n, "max_new_tokens", 0) for n in max_new_tokens]
    if len(counts) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(counts)} max_new_tokens values")
    ctx, vocab = model.config.context_length, model.config.vocab_size
    for i, (p, n) in enumerate(zip(prompts, counts)):
        if p.ndim != 1 or p.size == 0 or p.dtype.kind not in "iu":
            raise ValueError(f"prompt {i} must be a non-empty 1-D integer array, got shape {p.shape} dtype {p.dtype}")
        if p.min() < 0 or p.max() >= vocab:
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab})")
        if len(p) + n - 1 > ctx:
            raise ValueError(f"request {i}: prompt of {len(p)} tokens + {n} new tokens needs {len(p) + n - 1} "
                             f"cache positions, more than the context length {ctx}")
    return prompts, counts
