"""The daemon's side of Petals: the node pool and one client per node kind.

Nothing is imported here eagerly; import from the modules (``pool`` first).
"""
