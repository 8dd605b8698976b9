"""client_watch on real sockets: a peer that closes is noticed, one that stays or sends more is not."""
import socket
import threading
import time

import client_watch


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
    assert all(t.name != "client-watch" for t in threading.enumerate())  # joined when the block ended
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


def test_the_watcher_stops_with_the_block():
    server, client = socket.socketpair()
    before = threading.active_count()
    t0 = time.monotonic()
    with client_watch.watching({"gunicorn.socket": server}):
        pass
    assert time.monotonic() - t0 < 0.05 and threading.active_count() == before
    client.close()
    assert client_watch.peer_closed(server)
    server.close()
