"""FastAPI routers only: parse, call a service, shape the reply."""
