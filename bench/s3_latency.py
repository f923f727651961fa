"""An S3 API with a real GET's latency for the benchmarks: moto in server mode behind a proxy that delays every
request by a fixed time (an S3 first-byte latency), both in a process of their own, so their Python does not share
the GIL of the code being measured (they do share this machine's cores). Used by bench/input_at_scale.py and
bench/pipeline_cost.py.

    with s3_with_latency(0.030) as (moto_url, proxy_url): ...   # seed through moto_url, measure through proxy_url
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
import queue
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: what a proxy does not pass on from the upstream answer (its own connection's business)
HOP_HEADERS = ("transfer-encoding", "connection", "server", "date")


def forward(handler: BaseHTTPRequestHandler, host: str, port: int | str, body: bytes, timeout: float = 60) -> bytes:
    """Send `handler`'s request (with `body`) to host:port and answer its status and headers through `handler`;
    -> the answer's body, for the caller to write (whole, or not: tests/test_data_s3.py's FaultProxy cuts some)."""
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request(handler.command, handler.path, body=body or None,
                 headers={k: v for k, v in handler.headers.items() if k.lower() != "host"})
    resp = conn.getresponse()
    data = resp.read()
    handler.send_response(resp.status)
    for k, v in resp.getheaders():
        if k.lower() not in HOP_HEADERS:
            handler.send_header(k, v)
    handler.end_headers()
    return data


class ProxyHandler(BaseHTTPRequestHandler):
    """A quiet HTTP/1.1 handler that reads each request's body and hands it to `relay(body)`, for every method S3
    uses; the proxies here and in tests/test_data_s3.py define `relay`."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def relay(self, body: bytes) -> None:
        raise NotImplementedError

    def _any(self):
        self.relay(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any


class LatencyProxy:
    """Forwards every request to moto after a fixed delay (one S3 GET's first-byte latency); `forward` is also
    tests/test_data_s3.py's FaultProxy's, which adds faults."""

    def __init__(self, upstream: str, delay_s: float):
        host, port = upstream.split("//")[1].split(":")

        class H(ProxyHandler):
            def relay(self, body: bytes) -> None:
                time.sleep(delay_s)
                self.wfile.write(forward(self, host, port, body))

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a loader worker closed its connection: fine
                pass

        self.server = Quiet(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()


def serve_s3(latency_s: float, q) -> None:
    """moto + the latency proxy (the target of a spawned process): puts (moto URL, proxy URL) on `q`, then serves
    until the process is ended."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    proxy = LatencyProxy(f"http://127.0.0.1:{port}", latency_s)
    q.put((f"http://127.0.0.1:{port}", proxy.url))
    threading.Event().wait()


@contextmanager
def s3_with_latency(latency_s: float):
    """-> (moto URL, proxy URL) of a fresh server process, ended on exit."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=serve_s3, args=(latency_s, q), daemon=True)
    proc.start()
    try:
        for _ in range(240):
            try:
                urls = q.get(timeout=0.5)
                break
            except queue.Empty:
                if not proc.is_alive():
                    raise RuntimeError(f"the moto server process exited ({proc.exitcode}) before it served") from None
        else:
            raise RuntimeError("the moto server process did not start in 120 s")
        yield urls
    finally:
        proc.terminate()
        proc.join(10)
