"""Serving an artifact over HTTP: dynamic micro-batching, Prometheus metrics, overload
answered 429, graceful shutdown (``presso serve``; ``presso.serve``, ``presso.serve_app``).

FastAPI and uvicorn load only here, on first use: ``import presso`` stays light.
"""
