"""Supernode: a federated peer daemon for operators who sell paid AI inference."""

__version__ = "0.1.0"
