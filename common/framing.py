"""HTTP framing both servers refuse with a 400 (not a 500, and before any work): an HTTP/1.1 request
without a Host header, a body sent with both Content-Length and Transfer-Encoding, a Transfer-Encoding
other than chunked (request smuggling's raw material; gunicorn refuses some of these itself, Werkzeug's
development server, `python chat.py`, does not), and a chunked body whose framing breaks while it is read
(a bad chunk size: gunicorn and Werkzeug raise from wsgi.input, which became a 500).

A WSGI middleware, so that it works under either server and stays apart from the server's own code."""
import json

from common.api_common import ApiError


def strict_framing(wsgi_app):
    """`wsgi_app` behind the checks above; a request with a broken body gets a 400 and its connection closed
    (what is left of its body cannot be told from the next request)."""
    def app(environ, start_response):
        problem = _head_problem(environ)
        if problem:
            _close_after(start_response)
            err = ApiError(400, problem, code="bad_framing")
            body = json.dumps(err.body()).encode()
            start_response("400 Bad Request", [("Content-Type", "application/json"),
                                               ("Content-Length", str(len(body))), ("Connection", "close")])
            return [body]
        if "wsgi.input" in environ:
            environ["wsgi.input"] = _CheckedInput(environ["wsgi.input"], lambda: _close_after(start_response))
        return wsgi_app(environ, start_response)
    return app


def _head_problem(environ):
    """What is wrong with the request's head, or None."""
    if environ.get("SERVER_PROTOCOL") == "HTTP/1.1" and not environ.get("HTTP_HOST", "").strip():
        return "An HTTP/1.1 request needs a Host header (RFC 9112 3.2): send 'Host: <server>:<port>'."
    te = environ.get("HTTP_TRANSFER_ENCODING")
    if te is not None:
        if environ.get("CONTENT_LENGTH"):
            return "Send the body with Content-Length or with Transfer-Encoding: chunked, not both."
        if te.strip().lower() != "chunked":
            return f"Transfer-Encoding {te[:40]!r} is not accepted: send 'chunked', or a Content-Length."
    return None


def _close_after(start_response):
    """Asks gunicorn to close the connection after this response (its start_response is a bound method of
    its Response); Werkzeug's development server closes every connection anyway."""
    force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
    if callable(force_close):
        force_close()


class _CheckedInput:
    """wsgi.input whose read errors (a bad chunk size, a body cut short) are the client's 400."""

    def __init__(self, stream, on_error):
        self._stream, self._on_error = stream, on_error

    def _guarded(self, method, *args):
        try:
            return getattr(self._stream, method)(*args)
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - gunicorn's ParseException subclasses, Werkzeug's OSError
            self._on_error()
            raise ApiError(400, f"The request body is not framed correctly ({type(e).__name__}: {str(e)[:80]}): "
                                f"send a valid chunked body, or the body with a Content-Length.",
                           code="bad_framing") from None

    def read(self, *args):
        return self._guarded("read", *args)

    def readline(self, *args):
        return self._guarded("readline", *args)

    def readlines(self, *args):
        return self._guarded("readlines", *args)

    def readinto(self, buf):
        return self._guarded("readinto", buf)

    def __iter__(self):
        return iter(self.readline, b"")

    def __getattr__(self, name):
        return getattr(self._stream, name)
