"""The daemon's side of Petals: the node pool (``pool``) and one client class per node kind
(``petals``, ``openai``, over ``base``), all on aiohttp; ``protocol`` is what they share.

Nothing is imported here eagerly; callers import from ``pool``. Nothing here imports torch.
"""
