"""The control plane of a running mount: its Unix-socket HTTP API (server, routes) and the client.

``services`` and ``server`` are light and built at mount; ``api`` (FastAPI)
is imported on first use; ``client`` is what the CLI talks through.
"""
