"""Stop strings over a growing byte output, and what is safe to stream so far.

A stop string can arrive split across several steps, so the tail of the output that
could still become a stop string is held back, and so is an incomplete UTF-8
sequence (a member may have emitted half a character).
"""

from __future__ import annotations

from collections.abc import Sequence

from .vocab import incomplete_utf8_tail


class StopStrings:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s.encode("utf-8") for s in stops]
        self.longest = max((len(s) for s in self.stops), default=0)

    def find(self, output: bytes, since: int) -> tuple[int, str] | None:
        """Earliest stop string that ends after offset ``since``: (start, stop)."""
        if not self.stops:
            return None
        start = max(0, since - self.longest + 1)
        hits = [(pos, s) for s in self.stops if (pos := output.find(s, start)) >= 0]
        if not hits:
            return None
        pos, stop = min(hits)
        return pos, stop.decode("utf-8")

    def holdback(self, output: bytes) -> int:
        """Bytes at the end of ``output`` that are a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(output)), best, -1):
                if output.endswith(stop[:n]):
                    best = n
                    break
        return best

    def safe_end(self, output: bytes) -> int:
        """How much of ``output`` can be shown to the user now."""
        return len(output) - max(self.holdback(output), incomplete_utf8_tail(output))
