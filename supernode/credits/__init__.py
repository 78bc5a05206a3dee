"""Credit packs: purchase quotes, payment certification, and (later) spends."""
