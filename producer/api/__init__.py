"""The HTTP API (``fusebox api``): FastAPI routers, one module per API family."""
