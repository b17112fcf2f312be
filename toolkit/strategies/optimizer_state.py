"""Optimizer state that exists on some ranks only.

torch optimizers create a parameter's state (SGD's momentum buffer, Adam's moments) at its
first update with a gradient. A parameter that gets no gradient on one rank (a branch of the
model that only some ranks' data takes) therefore has state on some ranks and none on the
others, and an allreduce of "every rank's floating state" would pair tensors of different
shapes. Before such an average the ranks agree on the union of the state entries, and a
rank that lacks an entry creates it as zeros: the value that state has before a first
update (for SGD with momentum and no dampening, a zero buffer then behaves exactly like a
missing one), so the average is the mean over all ranks with the missing ones counting as
not yet started.
"""
import json

import torch


def state_layout(optimizer):
    """[(group, position, key, shape, dtype)] of the floating tensor state, in the order
    float_optimizer_state() lists it."""
    layout = []
    for g, group in enumerate(optimizer.param_groups):
        for i, p in enumerate(group["params"]):
            state = optimizer.state.get(p, {})
            for key in sorted(state, key=str):
                value = state[key]
                if torch.is_tensor(value) and value.is_floating_point():
                    layout.append((g, i, key, tuple(value.shape), str(value.dtype)))
    return layout


def _allgather_bytes(strategy, payload, name):
    """Every rank's `payload` (bytes), in rank order, by two variable-length allgathers."""
    hvd = strategy._hvd
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    sizes = strategy._wait(hvd.allgather_async(torch.tensor([data.numel()]),
                                               name=f"{name}.sizes"), f"{name}.sizes")
    joined = strategy._wait(hvd.allgather_async(data, name=name), name)
    out, start = [], 0
    for size in sizes.tolist():
        out.append(bytes(joined[start:start + size].tolist()))
        start += size
    return out


def _dtype(name):
    return getattr(torch, name.split(".", 1)[1])


def align_optimizer_state(strategy, name):
    """Give every rank the same floating optimizer state entries (collective: all ranks call
    it at the same point). Missing entries are created as zeros; returns how many were
    created here. An entry whose shape or dtype differs between ranks is an error."""
    optimizer = strategy.optimizer
    mine = state_layout(optimizer)
    if strategy.size == 1:
        return 0
    union = {}
    # JSON, not pickle: a peer's bytes are data, never code.
    payload = json.dumps(mine).encode()
    for rank, theirs in enumerate(_allgather_bytes(strategy, payload, name)):
        for g, i, key, shape, dtype in json.loads(theirs):
            shape = tuple(shape)
            seen = union.setdefault((g, i, key), (shape, dtype, rank))
            if seen[:2] != (shape, dtype):
                raise ValueError(f"optimizer state {key!r} of parameter {i} in group {g} is "
                                 f"{seen[1]}{list(seen[0])} on rank {seen[2]} but "
                                 f"{dtype}{list(shape)} on rank {rank}")
    have = {(g, i, key) for g, i, key, _, _ in mine}
    created = 0
    for (g, i, key), (shape, dtype, _) in sorted(union.items(), key=lambda kv: (
            kv[0][0], kv[0][1], str(kv[0][2]))):
        if (g, i, key) in have:
            continue
        p = optimizer.param_groups[g]["params"][i]
        optimizer.state[p][key] = torch.zeros(shape, dtype=_dtype(dtype), device=p.device)
        created += 1
    return created
