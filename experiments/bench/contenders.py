"""The contenders of the step benchmarks (Horovod strategies and PyTorch's peers), each with
its own model copy, and the turns they take within one job (experiments.bench.comm).

A turn is a block of steps of one contender; a round gives every contender one turn, in an
order that rotates from round to round, so that all of them see the same load on a shared
machine and the turns of one round can be compared pairwise. Within a turn, the steps before
the strategy's steady state are not timed: the first one (nothing in flight, caches of the
previous contender) and, for dasgd, the d + H - 1 steps before its first merge. Without
those, a turn shorter than d would time only launches and never the wait for an average,
and a link too slow for one average per step would look free.

A strategy that averages every H steps (local, postlocal) pays in one step of H: the median
of single steps would never see that step. Its timed steps are therefore a multiple of H,
and a turn is summarised by the median of the means of its windows of H consecutive steps
(each holds one averaging step, whatever the phase). DaSGD's waits are lumpy: averages
queued behind a slow link are fused by Horovod and finish together, so several merges find
their average done and the next one waits for many; a median of single steps then misses
most of the waiting. Its turn is summarised by the mean of all its timed steps, at least
2d of them, so that a lump is a small part of the turn.
"""
import statistics
import time

import torch

PERIODIC = ("local", "dasgd", "postlocal")


def window_median(times, window):
    """Median over the means of consecutive windows of `window` steps (a trailing partial
    window is dropped): the step time of a strategy that pays once every `window` steps."""
    means = [statistics.fmean(times[i:i + window])
             for i in range(0, len(times) - window + 1, window)]
    return statistics.median(means or times)


def finish_gpu_work(t):
    """CUDA kernels run asynchronously: a time read before they finish is their launch's."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


class Contender:
    """One strategy (or PyTorch peer) with its own model copy (same init), so that they can
    take turns. period: its averaging period H (local, dasgd, postlocal)."""

    def __init__(self, name, args, make_strategy, build_model, period, delay_max=None):
        from experiments.bench.device_time import device_time_forward
        from experiments.bench.peers import PEER_NAMES, TorchPeer
        torch.manual_seed(args.seed)
        self.name = name
        self.period = period
        self.window = period if name in PERIODIC else 1  # steps holding one average
        self.model = build_model(args.model, num_classes=10, in_channels=3,
                                 image_size=args.image_size, norm="bn").to(args.device)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9,
                                    weight_decay=5e-4)
        # --compute device:MS: the forward/backward sleeps on an emulated GPU (before DDP
        # wraps the model, so that DDP runs the surrogate too).
        self.device_time = device_time_forward(self.model, args.compute_s) \
            if args.compute_s is not None else None
        if name in PEER_NAMES:
            self.strategy = TorchPeer(name, self.model, optimizer, period)
            self.forward = self.strategy.module
        else:
            extra = {"delay_bounds": (1, delay_max)} if delay_max else {}
            self.strategy = make_strategy(name, self.model, optimizer, period=period,
                                          delay=args.delay, **extra)
            self.forward = self.model
        self.times, self.waits = [], []
        self.block_medians = []  # one value per turn: pairs strategies side by side
        self.cpu = None  # CpuSplit over the timed steps

    def settle_steps(self):
        """Steps of a turn before its steady state beyond the first: dasgd merges its first
        average d steps after launching it, at the H-th step."""
        if self.name != "dasgd":
            return 0
        return self.strategy.delay + self.strategy.period - 1

    def step(self, x, y, loss_fn, timed):
        wait_before = self.strategy.comm_wait_s
        finish_gpu_work(x)
        start = time.perf_counter()
        self.strategy.optimizer.zero_grad()
        out = self.forward(x)
        (out if self.device_time else loss_fn(out, y)).backward()
        self.strategy.step()
        finish_gpu_work(x)
        if timed:
            self.times.append(time.perf_counter() - start)
            self.waits.append(self.strategy.comm_wait_s - wait_before)


def take_turn(c, batches, loss_fn, timed_steps, counter, record=True):
    """One turn of contender `c`: the untimed first and settling steps, then `timed_steps`
    timed ones (when `record`), then a flush, so that nothing is in flight while the next
    contender runs. `counter` is a one-element list: the global step, which picks batches."""
    untimed = 1 + c.settle_steps()
    window = c.window
    if c.name == "dasgd":
        timed_steps = max(timed_steps, 2 * c.strategy.delay)
    timed_steps = -(-timed_steps // window) * window  # whole periods
    if c.name == "dasgd":
        window = timed_steps  # the turn's mean
    for i in range(untimed + timed_steps):
        x, y = batches[counter[0] % len(batches)]
        counter[0] += 1
        timed = record and i >= untimed
        if timed and i == untimed:
            c.cpu.start()
        c.step(x, y, loss_fn, timed=timed)
    if record:
        c.cpu.stop()
    c.strategy.flush()
    if record:
        c.block_medians.append(window_median(c.times[-timed_steps:], window))


def run_rounds(contenders, batches, loss_fn, rounds, block_steps, warmup_turn=False):
    """`rounds` rounds of turns of `block_steps` steps (the first untimed), the order
    rotating every round. warmup_turn: one untimed turn of every contender first, so that
    one-time costs (gloo's connections, DDP's buckets, --delay auto's decision) stay out of
    the first round and dasgd's turns are long enough for the d it chose. Returns the
    seconds the warm-up and the rounds took (what a longer run of the benchmark costs)."""
    counter = [0]
    began = time.perf_counter()
    if warmup_turn:
        for c in contenders:
            take_turn(c, batches, loss_fn, block_steps - 1, counter, record=False)
    warmed = time.perf_counter()
    for rnd in range(rounds):
        shift = rnd % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            take_turn(c, batches, loss_fn, block_steps - 1, counter)
    return {"warmup_s": warmed - began, "rounds_s": time.perf_counter() - warmed}
