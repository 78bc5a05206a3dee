"""Two mends petals' client needs to survive a server lost in the middle of a generation.

petals 2.2.0.post1 means to replace a failed server of an inference session with another holder
of the same blocks, which rebuilds the attention cache from the session's input history. Two
bugs stop that from working:

1. **The replacement starts at position 0.** It is handed the lost session's history, which
   holds every token so far, and its first step asserts ``Broken input cache`` whenever the
   failure came after the session's first step (petals issue #587; the mend is petals PR #523's,
   never released). Mended: the replacement takes the position of the session it replaces, so
   its first step sends the whole history and it carries on from there.
2. **A failed server stays in the routes.** ``on_request_failure`` bans the server and drops it
   from each block's server list, but routes are built from spans computed at the last update
   of the swarm's state (every ``update_period`` seconds), so the retry is routed through the
   same dead server and fails too. Mended: the spans are computed again from what is left as
   soon as a server is dropped.

``apply()`` runs in the Petals environment, in the node's process (``PetalsEngine``), after the
shim. ``tests/unit/petals/test_swarm_parts.py`` runs petals' own session and routing over
in-process servers, with and without the mends.
"""

from __future__ import annotations

from typing import Any

_MARK = "_supernode_mended"


def _mended(fn: Any) -> bool:
    return bool(getattr(fn, _MARK, False))


def apply() -> list[str]:
    """Apply both mends; returns those this call applied (none when already applied)."""
    return [name for name, mend in MENDS.items() if mend()]


def mend_replacement_position() -> bool:
    """Mend 1; True when this call applied it."""
    from petals.client.inference_session import InferenceSession

    update_sequence = InferenceSession._update_sequence
    if _mended(update_sequence):
        return False

    def _update_sequence(self: Any, server_idx: int, block_idx: int, attempt_no: int) -> Any:
        replaces = server_idx < len(self._server_sessions)
        result = update_sequence(self, server_idx, block_idx, attempt_no)
        if replaces:
            # the replacement holds the lost session's history, which ends at this step
            self._server_sessions[server_idx]._position = self._position
        return result

    setattr(_update_sequence, _MARK, True)
    InferenceSession._update_sequence = _update_sequence
    return True


def mend_routes() -> bool:
    """Mend 2; True when this call applied it."""
    from petals.client.routing.sequence_manager import RemoteSequenceManager

    on_request_failure = RemoteSequenceManager.on_request_failure
    if _mended(on_request_failure):
        return False

    def _on_request_failure(self: Any, peer_id: Any) -> None:
        on_request_failure(self, peer_id)
        if peer_id is None:
            return
        with self.lock_changes:
            info = self.state.sequence_info
            info.spans_by_priority, info.spans_containing_block = info._sort_spans(info.block_infos)

    setattr(_on_request_failure, _MARK, True)
    RemoteSequenceManager.on_request_failure = _on_request_failure
    return True


MENDS = {"replacement position": mend_replacement_position, "routes": mend_routes}
