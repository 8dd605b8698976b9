"""client_watch on real sockets, with the shared epoll watcher and with the polling thread that
stands in where there is no epoll: a peer that closes is noticed, one that stays or sends more is not."""
import contextlib
import socket
import threading
import time

import pytest

from common import client_watch


@pytest.fixture(params=["epoll", "polling"], autouse=True)
def mode(request, monkeypatch):
    monkeypatch.setattr(client_watch, "USE_EPOLL", request.param == "epoll")
    return request.param


def test_a_peer_that_closes_is_noticed_and_the_callback_runs_once():
    server, client = socket.socketpair()
    calls = []
    with client_watch.watching({"gunicorn.socket": server}, on_leave=lambda: calls.append(1)) as left:
        time.sleep(0.15)
        assert not left.is_set()
        t0 = time.monotonic()
        client.close()
        assert left.wait(2) and time.monotonic() - t0 < 0.5
        time.sleep(0.1)
    assert calls == [1]
    server.close()


def test_unread_bytes_are_not_a_hang_up_and_are_left_for_the_server():
    server, client = socket.socketpair()
    client.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request
    with client_watch.watching({"werkzeug.socket": server}) as left:
        time.sleep(0.3)
        assert not left.is_set()
    assert server.recv(100) == b"GET /next HTTP/1.1\r\n"
    client.close()
    server.close()


def test_a_reset_connection_counts_as_gone():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    with client_watch.watching({"gunicorn.socket": conn}) as left:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        client.close()
        assert left.wait(2)
    conn.close()
    server.close()


def test_without_a_socket_the_block_runs_unwatched():
    with client_watch.watching({}) as left:
        pass
    assert not left.is_set()


def test_nothing_fires_once_the_block_has_ended():
    server, client = socket.socketpair()
    calls = []
    t0 = time.monotonic()
    with client_watch.watching({"gunicorn.socket": server}, on_leave=lambda: calls.append(1)) as left:
        pass
    assert time.monotonic() - t0 < 0.05
    client.close()
    time.sleep(0.2)
    assert not left.is_set() and calls == [] and client_watch.peer_closed(server)
    server.close()


def test_many_blocks_at_once_each_see_only_their_own_client(mode):
    pairs = [socket.socketpair() for _ in range(20)]
    before = threading.active_count()
    with contextlib.ExitStack() as stack:
        lefts = [stack.enter_context(client_watch.watching({"gunicorn.socket": s})) for s, _ in pairs]
        if mode == "epoll":  # one thread for the process, however many requests
            assert threading.active_count() <= before + 1
        for _, c in pairs[::2]:
            c.close()
        time.sleep(0.3)
        assert [left.is_set() for left in lefts] == [True, False] * 10
    for s, c in pairs:
        s.close()
        c.close()
