"""Petals execution, in two halves that share no code: the daemon's client side and the node's
server side.

``client``: how the daemon runs a request on the operator's inference nodes. ``pool`` (NodePool:
health checks, weighted choice by load, bounded fail-over, a circuit breaker per node) over one
client per node, of the class its kind names: ``PetalsNodeClient`` (``petals``: the Petals HTTP
and WebSocket API) or ``OpenAINodeClient`` (``openai``: an OpenAI-compatible server), both a
``NodeClient`` (``base``); ``protocol`` holds the generation parameters and the reading of
answers. One HTTP client library: aiohttp.

``server``: ``supernode petals-node``, a node of our own. ``app`` (the Petals API, a
``ServedModel``) over ``engine`` (the ``Engine`` seam and its one generation worker) and
``transformers_engine`` (``TransformersEngine``, a local transformers model; a Petals swarm
engine would sit beside it); ``wire`` parses requests, ``run`` is the command, ``tiny_model``
makes a small random model with an offline tokenizer for tests and the devnet.

Nothing is imported here eagerly: torch and transformers load only in the process that serves
a model.
"""
