"""CUDA graphs for the sampler (`Sampler(..., cuda_graph=True)`): one full batch's add + forward + argmax +
count, captured once and replayed, which removes the launch cost of f's many small kernels.

The noise is drawn eagerly before each replay from the input's own generator, so every draw is that of the
eager path bit for bit; the sampler checks the graph against the eager model on a probe batch before use.
"""
from __future__ import annotations

import torch


class GraphedBatch:
    """One full batch, `counts += onehot(argmax f(buf + x))`, captured once and replayed (CUDA graphs).

    `capture(body)` returns a replay function that runs body's kernels again and returns its output.
    """

    def __init__(self, model, buf, classes, autocast, capture):
        self.buf = buf
        self.x = torch.zeros(buf.shape[1:], dtype=buf.dtype, device=buf.device)
        self.counts = torch.zeros(len(classes), dtype=torch.long, device=buf.device)
        self.finite = torch.ones((), dtype=torch.bool, device=buf.device)

        def body():
            with autocast():
                logits = model(self.buf.add_(self.x))
            pred = logits.argmax(1)
            self.finite.logical_and_(torch.isfinite(logits).all())
            self.counts.add_(torch.eq(pred.unsqueeze(1), classes).sum(0))
            return pred

        self.replay = capture(body)
        self.reset()

    def reset(self):
        self.counts.zero_()
        self.finite.fill_(True)

    def run(self, x, noise, generator, k, row, finite):
        """row += counts of k full batches of x + δ, finite &= all logits finite (both stay on the device)."""
        self.x.copy_(x)
        for _ in range(k):
            noise.sample_(self.buf, generator)
            self.replay()
        row += self.counts
        finite &= self.finite
        self.reset()


def capture_cuda_graph(body):
    """Warm `body` up on a side stream, capture it in a torch.cuda.CUDAGraph; returns replay() → body's output."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = body()

    def replay():
        graph.replay()
        return out
    return replay
