"""Broken HTTP framing is the client's 400 on both servers and under both of the gateway's servers (Werkzeug's
development server, `python chat.py`, and gunicorn), never a 500: a chunked body with a bad chunk size, an
HTTP/1.1 request without Host, a body with both Content-Length and Transfer-Encoding, a Transfer-Encoding
that is not chunked. The connection is closed after such a 400, and the server answers the next client."""
import re
import socket

import pytest
import requests

from conftest import start_gateway
from helpers import stop_process

BODY = b'{"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}'


def host_of(base_url):
    return base_url.rsplit("/", 1)[1]


def exchange(base_url, head, body=b""):
    """Sends raw bytes; (status, the whole answer, whether the server closed the connection) once it closes
    or 5 s pass."""
    host, port = host_of(base_url).rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(head.replace(b"{host}", host_of(base_url).encode()) + body)
        data, closed = b"", False
        try:
            while not closed:
                chunk = s.recv(65536)
                closed = not chunk
                data += chunk
        except socket.timeout:
            pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else None
    return status, data, closed


def post_head(*headers):
    return b"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n" + \
        b"".join(h + b"\r\n" for h in headers) + b"\r\n"


CASES = {
    "bad-chunk-size": (post_head(b"Transfer-Encoding: chunked"), b"zz\r\n" + BODY + b"\r\n0\r\n\r\n"),
    "negative-chunk-size": (post_head(b"Transfer-Encoding: chunked"), b"-5\r\n" + BODY + b"\r\n0\r\n\r\n"),
    "chunk-longer-than-said": (post_head(b"Transfer-Encoding: chunked"),
                               b"%x\r\n" % (len(BODY) - 10) + BODY + b"\r\n0\r\n\r\n"),
    "no-host": (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(BODY)).encode() + b"\r\n\r\n", BODY),
    "no-host-get": (b"GET /health HTTP/1.1\r\n\r\n", b""),
    "length-and-chunked": (post_head(b"Content-Length: %d" % len(BODY), b"Transfer-Encoding: chunked"),
                           b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n"),
    "not-chunked": (post_head(b"Content-Length: %d" % len(BODY), b"Transfer-Encoding: gzip"), BODY),
}


@pytest.fixture(scope="module", params=["qwen_server", "gateway-dev", "gateway-gunicorn"])
def server(request, fake_gigachat, tmp_path_factory):
    if request.param == "qwen_server":
        yield request.getfixturevalue("qwen_tiny")
        return
    qwen = request.getfixturevalue("qwen_tiny")
    proc = start_gateway(qwen.base_url, fake_gigachat, tmp_path_factory.mktemp("framing"),
                         1 if request.param == "gateway-gunicorn" else None)
    yield proc
    stop_process(proc)


@pytest.mark.parametrize("case", CASES)
def test_broken_framing_is_a_400_and_the_next_request_is_served(server, case):
    head, body = CASES[case]
    status, data, closed = exchange(server.base_url, head, body)
    assert status == 400, data[:400]
    assert b"Internal error" not in data
    assert closed and len(re.findall(rb"HTTP/1\.[01] \d{3} ", data)) == 1  # one answer, then the connection closed
    assert requests.get(server.base_url + "/health", timeout=5).status_code == 200


def test_sound_framing_still_works(server):
    chunked = b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n"
    for head, body in ((post_head(b"Transfer-Encoding: chunked", b"Connection: close"), chunked),
                       (post_head(b"Content-Length: %d" % len(BODY), b"Connection: close"), BODY),
                       (b"GET /health HTTP/1.0\r\n\r\n", b"")):
        status, data, _ = exchange(server.base_url, head, body)
        assert status == 200, data[:400]
