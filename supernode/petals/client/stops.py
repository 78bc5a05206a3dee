"""Stop sequences, applied by the daemon to any node's output: the text ends just before
the first place where one of them begins, and the stop sequence itself is not returned
(OpenAI's rule). Done here, not by the node, so that every node kind and an auditor's
re-run cut a text the same way."""

from __future__ import annotations

MAX_STOPS = 4  # OpenAI's limit
MAX_STOP_CHARS = 100


def cut(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the earliest stop sequence, and whether one was found."""
    at = min((i for s in stops if (i := text.find(s)) >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


class StopCutter:
    """Cuts a stream: ``feed`` returns what may be sent now, holding back the tail that
    could be the start of a stop sequence; ``stopped`` once one showed (send nothing
    more); ``flush`` returns what was held back when the stream ended without one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.pending = ""
        self.stopped = False

    def feed(self, chunk: str) -> str:
        if self.stopped:
            return ""
        self.pending += chunk
        text, self.stopped = cut(self.pending, self.stops)
        if self.stopped:
            self.pending = ""
            return text
        keep = min(self.hold, len(self.pending))
        out, self.pending = (
            self.pending[: len(self.pending) - keep],
            self.pending[len(self.pending) - keep :],
        )
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out
