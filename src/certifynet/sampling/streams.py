"""Noise streams: input `idx` draws from generators seeded by (seed, idx, stream) only, so results do not
depend on sharding, ordering, resumption or cross-input batching.

Each stream is one use of the noise: the N0 selection draws (or the ISS pilot), the N estimation draws of
P, those of Q, the ISS-DSRS Q pilot, and the attack's draws (`certifynet.attack`).
"""
from __future__ import annotations

import numpy as np
import torch

STREAM_SELECT, STREAM_P, STREAM_Q, STREAM_Q_PILOT = 0, 1, 2, 3
STREAM_ATTACK, STREAM_ATTACK_PREDICT = 4, 5  # certifynet.attack: PGD draws; PREDICT at the attacked point


def input_generator(seed: int, idx: int, stream: int, device) -> torch.Generator:
    """A torch.Generator on `device` seeded from (seed, idx, stream) through numpy's SeedSequence."""
    state = np.random.SeedSequence([int(seed), int(idx), int(stream)]).generate_state(2, np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return g
