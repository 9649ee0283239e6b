"""Token-budget batching shared by generation and extraction."""

from __future__ import annotations

from collections.abc import Iterator, Sequence


def length_buckets(
    lengths: Sequence[int], batch_tokens: int, max_batch_size: int | None = None, sort: bool = True
) -> Iterator[list[int]]:
    """Indices grouped into batches within the token budget, counted as rows x longest row.

    Sorted by length (longest first) so that rows padded together are alike and little compute goes
    to padding; the caller restores input order. `sort=False` fills batches in input order (the
    naive baseline). A single item longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if sort else range(len(lengths))
    batch: list[int] = []
    width = 0
    for i in order:
        new_width = max(width, lengths[i])
        full = max_batch_size is not None and len(batch) == max_batch_size
        if batch and ((len(batch) + 1) * new_width > batch_tokens or full):
            yield batch
            batch, new_width = [], lengths[i]
        batch.append(i)
        width = new_width
    if batch:
        yield batch
