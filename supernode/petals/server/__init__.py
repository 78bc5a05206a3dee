"""The node's side of Petals: ``supernode petals-node`` (``run``), the Petals HTTP and WebSocket
API (``app``) over an engine (``engine``: the seam and its worker; ``transformers_engine``: a
local model), with request parsing (``wire``) and a tiny random model for tests (``tiny_model``).

Nothing is imported here eagerly: torch and transformers load only when a model does.
"""
