"""The node's side of Petals: ``supernode petals-node``, the Petals API over a local model.

Nothing is imported here eagerly: torch and transformers load only when a model does.
"""
