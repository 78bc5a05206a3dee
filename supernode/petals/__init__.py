"""Petals execution: talking to inference nodes, and a node of our own.

Client side: `pool` (NodePool: health, weighted choice by load, bounded fail-over, a
circuit breaker per node) over `nodes` (one node: the Petals HTTP/WebSocket API or an
OpenAI-compatible server). Node side: `server` (`supernode petals-node`: the Petals API
over a real model) with `wire` (request parsing) and `engine` (the model, one generation
worker); `tiny_model` makes a small random model with an offline tokenizer for tests and
the devnet. Nothing is imported here eagerly: torch and transformers load only in the
process that serves a model.
"""
