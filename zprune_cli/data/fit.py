"""How calibration windows fit their text: nsamples windows of seqlen tokens drawn at random from a text of T
tokens overlap when nsamples x seqlen nears T, and then the statistics weigh the same tokens again and again
while the run costs as if the text were longer. Measured on the windows actually drawn."""

from __future__ import annotations

from dataclasses import dataclass

HEAVY_REUSE = 2.0  # each covered token read twice on average: random draws from ample text stay far below it


@dataclass(frozen=True)
class WindowFit:
    nsamples: int
    seqlen: int
    lengths: tuple[int, ...]  # tokens of the stream, or of each document (the drawn ones; all of them when measured)
    covered: int  # distinct text tokens the drawn windows cover
    complete: bool = True  # lengths names every document (else `capacity` is a lower bound)
    documents: bool = False  # a list of documents (a window never crosses one), not one stream

    @property
    def drawn(self) -> int:
        return self.nsamples * self.seqlen

    @property
    def reuse(self) -> float:
        """How often each covered token is read, on average (1.0: no overlap)."""
        return self.drawn / max(self.covered, 1)

    def capacity(self, seqlen: int) -> int:
        """Windows of `seqlen` the text holds without overlap (a window ends before a text's last token)."""
        return sum((n - 1) // seqlen for n in self.lengths if n > seqlen)

    def longest_seqlen(self, nsamples: int) -> int:
        """The longest window of which the text holds `nsamples` without overlap (0: none of 2 tokens)."""
        low, high = 1, max(self.lengths, default=0)
        while low < high:  # capacity falls as seqlen grows: the largest seqlen with capacity >= nsamples
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self.capacity(mid) >= nsamples else (low, mid - 1)
        return low if low >= 2 and self.capacity(low) >= nsamples else 0

    def warning(self, what: str) -> str | None:
        """One line when the windows overlap heavily, naming the sizes that would not; None otherwise."""
        if self.reuse < HEAVY_REUSE:
            return None
        total = sum(n for n in self.lengths if n > self.seqlen)  # what windows can be drawn from
        text = f"{'' if self.complete else 'at least '}{total:,} tokens"
        if self.documents:
            text += " (in documents longer than a window)"
        line = (f"--nsamples {self.nsamples} x --seqlen {self.seqlen} draws {self.drawn:,} tokens from {text} of {what}: "
                f"the windows overlap, each token read {self.reuse:.1f} times on average")
        fits = [f"--nsamples {n} --seqlen {self.seqlen}" for n in [self.capacity(self.seqlen)] if n >= 1]
        fits += [f"--nsamples {self.nsamples} --seqlen {n}" for n in [self.longest_seqlen(self.nsamples)] if n >= 2]
        if fits:
            line += f"; without overlap it holds {' or '.join(fits)}"
        return line


def covered_tokens(spans: list[tuple[int, int]], seqlen: int) -> int:
    """Distinct tokens under windows given as (document, start), each seqlen long."""
    total, end_of = 0, {}
    for doc, start in sorted(spans):
        end = end_of.get(doc, 0)
        total += max(0, start + seqlen - max(start, end))
        end_of[doc] = max(end, start + seqlen)
    return total
