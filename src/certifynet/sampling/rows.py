"""The resumable row loop of every per-input stage: rows not yet in the log are made and written one by
one (each flushed as it comes), so a stopped run resumes where it stopped. Torch-free."""
from __future__ import annotations

import logging

from certifynet.paths import shown
from certifynet.progress import progress
from certifynet.records import RowLog

log = logging.getLogger(__name__)


def nothing_to_do(indices, shard) -> bool:
    """True (and says so) when this shard selects no inputs: an array with more tasks than inputs."""
    if indices:
        return False
    log.info("shard %s/%s selects no inputs; nothing to do", shard[0], shard[1])
    return True


def run_batches(rows: RowLog, indices, make_rows, group: int, desc: str, show: bool = True) -> int:
    """Write the rows make_rows(idxs) yields, for the indices not yet in the log, `group` indices per call;
    each row is written (and flushed) as it comes. Returns how many indices were to do."""
    todo = [i for i in indices if i not in rows.done]
    if len(todo) < len(indices):
        log.info("resuming: %d of %d inputs already in %s", len(indices) - len(todo), len(indices), shown(rows.path))
    with progress(len(todo), desc, "input", enabled=show) as bar:
        for k in range(0, len(todo), group):
            for row in make_rows(todo[k:k + group]):
                rows.write(row)
                bar.update(1)
    return len(todo)


def run_rows(rows: RowLog, indices, make_row, desc: str, show: bool = True, prefetch=None) -> int:
    """Write make_row(idx) for every idx not yet in the log; returns how many were to do.
    `prefetch(idxs)` (InputSampler.prefetcher) is called ahead of each group of `prefetch.group` inputs."""
    def make_rows(idxs):
        if prefetch is not None:
            prefetch(idxs)
        for idx in idxs:
            yield make_row(idx)
    return run_batches(rows, indices, make_rows, getattr(prefetch, "group", 1), desc, show)
