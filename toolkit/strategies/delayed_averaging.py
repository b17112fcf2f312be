"""DaSGD: local SGD whose model average travels while the ranks keep training.

Every step each rank applies its own optimizer update. Every `period` (H) steps it copies
its parameters and floating buffers into a snapshot s, starts a non-blocking Horovod
allreduce of a copy of s (the sum over the n ranks; with d = 0 the average), and keeps
training. `delay` (d) steps later it waits for it (normally finished long ago) and applies
the delay-corrected merge with ā = sum / n

    w <- w + (ā - s)

which keeps the d local updates made in the meantime. d = 0 is blocking periodic model
averaging (local SGD); with H = 1 and plain SGD that equals synchronous SGD.

Step t (1-based count of step() calls) in order: local update; merge the round launched
at t - d; launch a round if t - W is a positive multiple of H (W = warm-up steps, during
which gradients are averaged synchronously instead).
"""
import math
from collections import deque

from .base import Strategy
from .flat import FlatBuffer


class _Round:
    """One average in flight: its buffers (a reused slot), handle and schedule."""

    __slots__ = ("slot", "handle", "name", "launched_at", "merge_at")

    def __init__(self, slot, handle, name, launched_at, merge_at):
        self.slot, self.handle, self.name = slot, handle, name
        self.launched_at, self.merge_at = launched_at, merge_at


class _Slot:
    """Snapshot and send buffer for one in-flight round, allocated once and reused."""

    def __init__(self, tensors, name, with_snapshot):
        self.send = FlatBuffer(tensors)
        self.snapshot = FlatBuffer(tensors) if with_snapshot else None
        self.name = name


class DaSGD(Strategy):
    """Delayed averaging of parameters and floating buffers around any torch optimizer.

    period: H >= 1, steps between launches. delay: 0 <= d, steps between a launch and its
    merge (d > H keeps ceil(d/H) rounds in flight, each in its own buffers and collective
    name). warmup_steps: first W steps use synchronous gradient averaging.
    average_optimizer_state: also send floating optimizer state (momentum) through the
    same delayed merge; off by default (momentum stays local, as in the paper).
    """

    name = "dasgd"
    fuse_relaunch = True  # False: separate merge and snapshot passes (same values; tests)

    def __init__(self, model, optimizer, *, period=1, delay=1, warmup_steps=0,
                 average_optimizer_state=False):
        for label, value, low in (("period", period, 1), ("delay", delay, 0),
                                  ("warmup_steps", warmup_steps, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
        super().__init__(model, optimizer)
        self.period = period
        self.delay = delay
        self.warmup_steps = warmup_steps
        self.average_optimizer_state = bool(average_optimizer_state)
        self.rounds_launched = 0
        self._in_flight = deque()
        self._slots = None  # built lazily: optimizer state exists only after a first step
        self._grad_buffer = None

    # -- the step -------------------------------------------------------------------
    def step(self):
        if self.steps_done < self.warmup_steps:
            self._average_gradients()
        self.optimizer.step()
        self.steps_done += 1
        since = self.steps_done - self.warmup_steps
        launching = since > 0 and since % self.period == 0
        prepared = False
        # Launches are H steps apart and all wait d steps, so at most one round is due.
        if self._in_flight and self._in_flight[0].merge_at <= self.steps_done:
            rnd = self._in_flight.popleft()
            # A merge in a step that launches into the same slot (d a multiple of H, the
            # default H = d = 1 included) writes the next round's buffers in the same pass.
            prepared = (self.fuse_relaunch and launching and
                        rnd.slot is self._slots[self.rounds_launched % len(self._slots)])
            self._merge(rnd, relaunch=prepared)
        if launching:
            self._launch(prepared=prepared)

    def _average_gradients(self):
        """Warm-up: synchronous SGD by a blocking average of the gradients."""
        params = [p for p in self._params if p.requires_grad]
        for p in params:
            if p.grad is None:  # same convention as Horovod: a missing gradient counts as 0
                p.grad = p.detach().new_zeros(p.shape)
        if self.size == 1:
            return
        if self._grad_buffer is None:
            self._grad_buffer = FlatBuffer([p.grad for p in params])
        grads = [p.grad for p in params]
        self._grad_buffer.load(grads)
        handle = self._hvd.grouped_allreduce_async_(self._grad_buffer.tensors,
                                                    name="dasgd.warmup.grad",
                                                    op=self._hvd.Average)
        self._wait(handle, "dasgd.warmup.grad")
        self._grad_buffer.store(grads)

    # -- rounds ---------------------------------------------------------------------
    def _tensors(self):
        tensors = self.model_tensors
        if self.average_optimizer_state:
            from .base import float_optimizer_state
            tensors = tensors + float_optimizer_state(self.optimizer)
        return tensors

    def _build_slots(self, tensors):
        count = max(1, math.ceil(self.delay / self.period))
        prefix = f"{self.name}.avg"
        self._slots = [_Slot(tensors, prefix if count == 1 else f"{prefix}.{i}",
                             with_snapshot=self.delay > 0) for i in range(count)]

    def _launch(self, prepared=False):
        """Start the next round; `prepared`: the merge just wrote its buffers already."""
        tensors = self._tensors()
        if self._slots is None:
            self._build_slots(tensors)
        slot = self._slots[self.rounds_launched % len(self._slots)]
        if not prepared and slot.snapshot is not None:
            slot.send.load_twice(tensors, slot.snapshot)
        elif not prepared:
            slot.send.load(tensors)
        # With a snapshot the merge needs only ā - s, so send the sum and fold 1/n into the
        # merge's subtraction: Horovod's separate scaling pass over the whole buffer (on the
        # communication thread, competing with compute) is saved. For n a power of two the
        # result is bit for bit that of op=Average.
        op = self._hvd.Sum if slot.snapshot is not None else self._hvd.Average
        handle = self._hvd.grouped_allreduce_async_(slot.send.tensors, name=slot.name, op=op)
        self.rounds_launched += 1
        rnd = _Round(slot, handle, slot.name, self.steps_done, self.steps_done + self.delay)
        if self.delay == 0:
            self._merge(rnd)
        else:
            self._in_flight.append(rnd)

    def _merge(self, rnd, relaunch=False):
        self._wait(rnd.handle, rnd.name)
        tensors = self._tensors()
        slot = rnd.slot
        if slot.snapshot is None:
            # d = 0: nothing happened since the snapshot, the average replaces the model
            # exactly (bit for bit periodic averaging).
            slot.send.store(tensors)
        else:
            # send holds the sum over ranks: (sum - n s) / n = ā - s
            slot.send.merge_into(tensors, slot.snapshot, self.size, relaunch=relaunch)

    def flush(self):
        """Wait for every in-flight average and merge it now (all ranks must call it)."""
        while self._in_flight:
            self._merge(self._in_flight.popleft())

    # -- checkpoints ----------------------------------------------------------------
    def _counters(self):
        return {"strategy": self.name, "step": self.steps_done,
                "rounds": self.rounds_launched, "period": self.period,
                "delay": self.delay, "warmup_steps": self.warmup_steps}

    def state_dict(self):
        if self._in_flight:
            raise RuntimeError(
                f"{self.name}: {len(self._in_flight)} average(s) still in flight at step "
                f"{self.steps_done}; call synchronize_model() on every rank before "
                f"state_dict()")
        return super().state_dict()

    def load_state_dict(self, state):
        if self._in_flight:
            raise RuntimeError(f"{self.name}: load_state_dict() with averages in flight; "
                               f"call it before training or after synchronize_model()")
        super().load_state_dict(state)
        self.rounds_launched = int(state.get("rounds", 0))
        return state


class LocalSGD(DaSGD):
    """Blocking periodic model averaging (d = 0): the `local` baseline."""

    name = "local"

    def __init__(self, model, optimizer, *, period=1, warmup_steps=0):
        super().__init__(model, optimizer, period=period, delay=0, warmup_steps=warmup_steps)
