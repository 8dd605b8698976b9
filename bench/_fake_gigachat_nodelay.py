#!/usr/bin/env python
"""tests/fake_gigachat.py with TCP_NODELAY on its sockets, for benchmarks.

The fake writes a response's headers and its body in two send() calls; with Nagle's algorithm
on, the body waits for the client's (delayed, up to 40 ms on Linux) ACK of the headers. Real
GigaChat sits behind a proxy that sends both at once, so a benchmark that kept the fake's
stall would charge 40 ms of test-double artefact to the gateway. Same arguments as the fake."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import fake_gigachat  # noqa: E402

fake_gigachat.Handler.disable_nagle_algorithm = True  # socketserver sets TCP_NODELAY per connection

if __name__ == "__main__":
    sys.exit(fake_gigachat.main())
