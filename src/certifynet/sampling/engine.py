"""The hot loop: batched noisy forward passes → class counts (`Sampler`).

`Sampler.counts(x, noise, n, generator)` draws n noisy copies x + δ in batches of `batch`, reusing one
preallocated buffer, under `torch.inference_mode`, and accumulates argmax counts on the device (a one-hot
sum, which unlike CUDA `bincount` needs no host sync), so there is no host round-trip until the final
counts. Memory is O(batch), flat in n. On CUDA, inputs reach the device through a reused pinned buffer
without blocking, and `amp=True` runs the model in bf16 autocast. `channels_last=True` (the default) keeps
image batches in NHWC memory on any device: oneDNN and cuDNN convolutions run faster on it (1.3–1.5× for
LeNet/ResNet-20 on a 2-core CPU), and the arithmetic is the same fp32 up to summation order.
On the CPU, `optimize=True` (the default) runs full batches through a frozen TorchScript trace
(`torch.jit.optimize_for_inference`: BN folded into convs, oneDNN layouts; about 2× for LeNet and 1.4× for
ResNet-20 on 2 cores), checked against the eager model on a probe batch and dropped if they disagree.
On CUDA, `cuda_graph=True` (off by default: not yet measured on a GPU) replays each full batch's
add + forward + argmax + count from one captured CUDA graph (`cuda_graph.py`), also checked on a probe batch.
In every case the smoothed classifier is that of the function actually evaluated (bf16, traced or eager):
certificates stay valid because the base classifier f is whatever deterministic function is sampled.

`Sampler.counts_many(xs, noise, ns, generators)` samples several inputs at once: each input's draws come
in the same chunks as `counts` from its own generator; the tails of several inputs (e.g. the N0 = 100
selection draws) share forward passes. The caller's model is never modified (no in-place `.to`/`.eval`).

Generators come from `streams.input_generator` (one per input and use of the noise). Notes (a fallback to
eager sampling, a flag without effect) go to `logging.getLogger(__name__)`; nothing is printed.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math

import numpy as np
import torch

from certifynet.errors import CertifyNetError
from certifynet.noise import Noise
from certifynet.sampling.cuda_graph import GraphedBatch, capture_cuda_graph
from certifynet.sampling.device import resolve_device

log = logging.getLogger(__name__)
_progress_hook = None


def set_progress_hook(hook) -> None:
    """Call hook(b) after every batch of b forward passes in this process (None: off). For front ends that
    report progress (the web app's job worker); sampling never imports them."""
    global _progress_hook
    _progress_hook = hook


def _report(passes: int) -> None:
    if _progress_hook is not None:
        _progress_hook(passes)


def check_finite_input(x: torch.Tensor, idx=None) -> None:
    """Refuse a non-tensor, and NaN/Inf pixels, with a one-line error (they would silently turn into one class)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise CertifyNetError(f"x must be a floating-point image tensor [C, H, W], got {type(x).__name__}"
                              + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if not torch.isfinite(x).all():
        where = f" input {idx}" if idx is not None else " the input"
        raise CertifyNetError(f"NaN or Inf pixel values in{where}")


class _ModuleWatch:
    """Tells cheaply whether a module was changed since it was looked at: the version counter and storage of
    every parameter and buffer (in-place updates, `load_state_dict`, `.to`, `.data =`) and every submodule's
    train/eval mode. Replacing a parameter or submodule object is not seen: build a new Sampler then."""

    def __init__(self, model):
        self.tensors = list(itertools.chain(model.parameters(), model.buffers()))
        self.modules = list(model.modules())
        self.state = self._state()

    def _state(self):
        return [(t._version, t.data_ptr()) for t in self.tensors], [m.training for m in self.modules]

    def changed(self) -> bool:
        return self._state() != self.state


def _module_for(model, device, channels_last):
    """`model` itself if it is on `device`, in eval mode and (channels_last) NHWC already; else a converted
    deep copy."""
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    ready = (all(t.device == device for t in tensors) and not any(m.training for m in model.modules())
             and not (channels_last and any(t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last)
                                            for t in tensors)))
    if ready:
        return model
    try:
        own = copy.deepcopy(model)
    except Exception as e:
        raise CertifyNetError(f"cannot copy the model to evaluate it ({type(e).__name__}: {e}); pass it already on "
                              f"{device}, in eval mode{', channels_last' if channels_last else ''}") from None
    own = own.to(device).eval()
    return own.to(memory_format=torch.channels_last) if channels_last else own


class Sampler:
    """Counts argmax_c f(x + δ) over n draws of δ, in batches of `batch`.

    The caller's module is never changed. f is evaluated on the module itself when it is already on the
    device, in eval mode and (with channels_last) in NHWC memory; otherwise on a private converted copy.
    The copy, and any trace or CUDA graph of it, is rebuilt when the caller's parameters, buffers or
    train/eval modes change (tensor version counters, see `_ModuleWatch`), so f is the caller's current model.
    """

    def __init__(self, model: torch.nn.Module, num_classes: int, batch: int = 1000, device=None,
                 amp: bool = False, channels_last: bool = True, optimize: bool = True, cuda_graph: bool = False):
        if batch < 1:
            raise CertifyNetError(f"{{batch}} must be >= 1, got {batch}", "batch")
        self.device = resolve_device(device) if not isinstance(device, torch.device) else device
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is None:  # compare devices exactly (cuda != cuda:0)
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.channels_last = bool(channels_last)
        self.num_classes, self.batch = int(num_classes), int(batch)
        self.amp = bool(amp and self.cuda)
        self.optimize = bool(optimize and not self.cuda)
        self.cuda_graph = bool(cuda_graph and self.cuda)
        if cuda_graph and not self.cuda:  # a message naming its argument (the CLI shows --cuda-graph)
            log.info(CertifyNetError(f"note: {{cuda_graph}} captures CUDA kernels; on {self.device} it has no effect",
                                     "cuda_graph"))
        self._classes = torch.arange(self.num_classes, device=self.device)
        self._source, self._watch = model, None
        self._buf = None
        self._traced, self._graphs = {}, {}
        self._pinned, self._staged = None, None
        self._refresh()

    def _refresh(self):
        """(Re)derive the evaluated module when the caller's model is new or has changed since."""
        if self._watch is None or self._watch.changed():
            self._watch = _ModuleWatch(self._source)
            self.model = _module_for(self._source, self.device, self.channels_last)
            self._traced.clear()
            self._graphs.clear()

    def _traced_model(self, shape):
        """The frozen TorchScript trace for full batches of `shape` (CPU), or None when unavailable."""
        if not self.optimize:
            return None
        if shape not in self._traced:
            import warnings
            probe = torch.rand((self.batch, *shape), generator=torch.Generator().manual_seed(0))
            traced = None
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    traced = torch.jit.optimize_for_inference(torch.jit.trace(self.model, probe, check_trace=False))
                    if not torch.equal(traced(probe).argmax(1), self.model(probe).argmax(1)):
                        traced = None
            except Exception:  # untraceable model: use it eagerly
                traced = None
            self._traced[shape] = traced
        return self._traced[shape]

    def _buffer(self, shape):
        if self._buf is None or self._buf.shape[1:] != shape:
            fmt = (torch.channels_last if (self.channels_last and len(shape) == 3 and not self.optimize)
                   else torch.contiguous_format)
            self._buf = torch.empty((self.batch, *shape), device=self.device).contiguous(memory_format=fmt)
        return self._buf

    def _autocast(self):
        # no weight-cast cache: a CUDA graph must capture the casts it replays
        return (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if self.amp
                else contextlib.nullcontext())

    def _count(self, logits):
        """Per-class counts of argmax over the rows (classes ≥ K dropped), with no host sync (unlike CUDA bincount).
        Also notes, on the device, whether every logit was finite (read once per `counts_many`)."""
        self._finite &= torch.isfinite(logits).all()
        return torch.eq(logits.argmax(1).unsqueeze(1), self._classes).sum(0)

    def _forward(self, f, batch):
        """f(batch), with a model that cannot take the input's shape reported in one line."""
        try:
            return f(batch)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as e:
            raise CertifyNetError(f"the model cannot take an input of shape {tuple(batch.shape[1:])} (one image, "
                                  f"without a batch dimension): {str(e).strip().splitlines()[0][:200]}") from None

    def _to_device(self, xs):
        """The inputs on the device. From the host on CUDA through one reused pinned buffer, copied without
        blocking; the buffer is rewritten only once its previous copy has been done."""
        if not self.cuda or all(x.device == self.device for x in xs):
            return [x.to(self.device) for x in xs]
        shape, dtype = (len(xs), *xs[0].shape), xs[0].dtype
        size = math.prod(shape)
        if self._pinned is None or self._pinned.numel() < size or self._pinned.dtype != dtype:
            self._pinned = torch.empty(size, dtype=dtype, pin_memory=True)
        elif self._staged is not None:
            self._staged.synchronize()
        host = self._pinned[:size].view(shape)
        torch.stack([x.cpu() for x in xs], out=host)
        dev = host.to(self.device, non_blocking=True)
        self._staged = torch.cuda.Event()
        self._staged.record()
        return list(dev)

    def _graph(self, shape):
        """The CUDA graph of one full batch for inputs of `shape`, captured on first use (None: run eagerly)."""
        if shape not in self._graphs:
            self._graphs[shape] = self._capture_graph(shape)
        return self._graphs[shape]

    def _capture_graph(self, shape):
        buf = self._buffer(shape)
        try:
            graph = GraphedBatch(self.model, buf, self._classes, self._autocast, self.graph_capture)
            buf.copy_(torch.rand(buf.shape, generator=torch.Generator(self.device).manual_seed(0), device=self.device))
            with self._autocast():
                want = self.model(buf.clone(memory_format=torch.preserve_format)).argmax(1)
            graph.x.zero_()
            same = torch.equal(graph.replay(), want)
            graph.reset()
        except Exception as e:  # capture refused (e.g. a host sync inside the model): run eagerly
            log.info("note: CUDA graph capture failed (%s: %s); sampling eagerly", type(e).__name__,
                     str(e).splitlines()[0] if str(e) else "")
            return None
        if not same:
            log.info("note: the CUDA graph's predictions differ from the eager model's on a probe batch; "
                     "sampling eagerly")
            return None
        return graph

    graph_capture = staticmethod(capture_cuda_graph)  # tests swap in a CPU stand-in

    def _full_batches(self, x, noise, generator, k, shape, row):
        """row += counts of k full batches of draws for one input (graph, trace or eager model)."""
        graph = self._graph(shape) if self.cuda_graph else None
        if graph is not None:
            graph.run(x, noise, generator, k, row, self._finite)
            _report(k * self.batch)
            return
        f = self._traced_model(shape) or self.model
        buf = self._buffer(shape)
        for _ in range(k):
            noise.sample_(buf, generator).add_(x)
            row += self._count(self._forward(f, buf))
            _report(self.batch)

    def _packed(self, buf, members, rows, out):
        """One eager forward pass over buf[:rows], holding the tails of several inputs (i, offset, size)."""
        logits = self._forward(self.model, buf[:rows])
        _report(rows)
        if len(members) == 1:
            out[members[0][0]] += self._count(logits)
            return
        self._finite &= torch.isfinite(logits).all()
        pred = logits.argmax(1).unsqueeze(1)
        for i, start, size in members:
            out[i] += torch.eq(pred[start:start + size], self._classes).sum(0)

    @torch.inference_mode()
    def counts_many(self, xs, noise, ns, generators=None) -> torch.Tensor:
        """Class counts [len(xs), K] on the device: row i counts f(x_i + δ) over n_i draws δ ~ noise_i.

        `noise` is one Noise or one per input; generators[i] is input i's own (seed, idx, stream) generator.
        Input i's draws come in exactly the chunks `counts` uses (⌊n_i/batch⌋ full batches, then one tail of
        n_i mod batch), so its noise does not depend on the other inputs. Full batches run input by input;
        the tails of several inputs share forward passes of up to `batch` rows (cross-input batching).
        """
        m = len(xs)
        noises = list(noise) if isinstance(noise, (list, tuple)) else [noise] * m
        gens = list(generators) if generators is not None else [None] * m
        ns = [int(n) for n in ns]
        if not (len(noises) == len(gens) == len(ns) == m):
            raise CertifyNetError(f"counts_many: {m} inputs but {len(noises)} noises, {len(ns)} sizes, "
                                  f"{len(gens)} generators")
        if any(n < 0 for n in ns):
            raise CertifyNetError(f"counts_many: sample sizes must be >= 0, got {min(ns)}")
        out = torch.zeros(m, self.num_classes, dtype=torch.long, device=self.device)
        if m == 0:
            return out
        for x in xs:
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
                raise CertifyNetError(f"x must be one floating-point image tensor [C, H, W], got {type(x).__name__}"
                                      + (f" {tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else ""))
        self._finite = torch.ones((), dtype=torch.bool, device=self.device)
        shape = tuple(xs[0].shape)
        if any(tuple(x.shape) != shape for x in xs):
            raise CertifyNetError("counts_many: all inputs must have the same shape")
        self._refresh()
        xs = self._to_device(xs)
        with self._autocast():
            for i, n in enumerate(ns):
                if n >= self.batch:
                    self._full_batches(xs[i], noises[i], gens[i], n // self.batch, shape, out[i])
            buf, members, rows = self._buffer(shape), [], 0
            for i, n in enumerate(ns):
                size = n % self.batch
                if size == 0:
                    continue
                if rows + size > self.batch:
                    self._packed(buf, members, rows, out)
                    members, rows = [], 0
                noises[i].sample_(buf[rows:rows + size], gens[i]).add_(xs[i])
                members.append((i, rows, size))
                rows += size
            if members:
                self._packed(buf, members, rows, out)
        if any(ns) and not bool(self._finite):  # one host sync per call, never per batch
            raise CertifyNetError("the model's outputs are not finite (NaN/Inf) on noisy inputs: the noise is too "
                                  "large for its float arithmetic, or its weights are broken")
        return out

    def counts(self, x: torch.Tensor, noise: Noise, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Class counts (LongTensor [K], on the device) of f(x + δ_j), j = 1..n, δ_j ~ noise."""
        return self.counts_many([x], noise, [n], [generator])[0]

    def counts_np(self, x, noise, n, generator=None) -> np.ndarray:
        return self.counts(x, noise, n, generator).cpu().numpy()
