"""The HTTP service (``beautyrt serve``, extra ``serve``): an ASGI app over one shared ``Beautifier``.

Only ``errors`` and ``config`` are importable without the extra; ``app`` needs FastAPI, uvicorn,
python-multipart and prometheus-client (``pip install 'beautyrt[serve]'``).
"""
