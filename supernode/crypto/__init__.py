"""Keys, EIP-712 envelopes, canonical encoding and signature checks.

This package imports nothing else of ours: it is the wire's foundation.
"""
