"""What both servers share: the wire format (OpenAI shapes), JSON errors and HTTP hooks, OpenAPI,
the client watcher and the embedded WSGI server."""
