"""Inference: the model menu, usage quotes, execution on local nodes, results, refunds."""
