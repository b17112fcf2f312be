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

Options (docs/dasgd.md): `delay="auto"` measures an average against the step time and picks
d (auto_delay.py); `avg_dtype="bf16"|"fp16"` sends differences to a common reference in low
precision (low_precision.py); `fragments=F` cuts the model into F parts whose rounds take
turns over the period (fragments.py). The defaults are the plain method above, unchanged.
"""
import math
import time
from collections import deque

from .auto_delay import (DEFAULT_BOUNDS, FIRST_CHECK_AFTER, StepClock, check_bounds,
                         check_delay, decide_delay)
from .base import Strategy, float_optimizer_state
from .flat import FlatBuffer
from .fragments import check_fragments, fragment_offsets, piece_views, split_pieces
from .low_precision import WIRE_DTYPES, LowPrecisionSlot, check_avg_dtype
from .optimizer_state import align_optimizer_state
from .watchdog import poll_until_done


class _Round:
    """One average in flight: its buffers (a reused slot), handle and schedule."""

    __slots__ = ("slot", "handle", "name", "launched_at", "merge_at", "fragment")

    def __init__(self, slot, handle, name, launched_at, merge_at, fragment=0):
        self.slot, self.handle, self.name = slot, handle, name
        self.launched_at, self.merge_at, self.fragment = launched_at, merge_at, fragment


class _Slot:
    """Snapshot and send buffer (fp32 path) for one in-flight round, allocated once and
    reused."""

    def __init__(self, tensors, name, with_snapshot):
        self.send = FlatBuffer(tensors)
        self.snapshot = FlatBuffer(tensors) if with_snapshot else None
        self.name = name

    def start(self, hvd):
        return hvd.grouped_allreduce_async_(self.send.tensors, name=self.name, op=self._op(hvd))

    def _op(self, hvd):
        # With a snapshot the merge needs only ā - s, so send the sum and fold 1/n into the
        # merge's subtraction: Horovod's separate scaling pass over the whole buffer (on the
        # communication thread, competing with compute) is saved. For n a power of two the
        # result is bit for bit that of op=Average.
        return hvd.Sum if self.snapshot is not None else hvd.Average

    def prepare(self, tensors):
        if self.snapshot is not None:
            self.send.load_twice(tensors, self.snapshot)
        else:
            self.send.load(tensors)

    def merge(self, tensors, ranks, received=None, relaunch=False):
        """`received`: the collective's output (unused: the sum is reduced in place)."""
        if self.snapshot is None:
            # d = 0: nothing happened since the snapshot, the average replaces the model
            # exactly (bit for bit periodic averaging).
            self.send.store(tensors)
        else:
            # send holds the sum over ranks: (sum - n s) / n = ā - s
            self.send.merge_into(tensors, self.snapshot, ranks, relaunch=relaunch)

    def reset_reference(self, tensors):
        """Nothing to reset: the fp32 path sends the weights themselves."""


class _Fragment:
    """One fragment of the averaged tensors: its element ranges, launch offset and slots."""

    def __init__(self, pieces, offset):
        self.pieces, self.offset = pieces, offset
        self.slots = []

    def views(self, tensors):
        return piece_views(tensors, self.pieces)

    def slot_for(self, since, period):
        """The slot of the launch at `since` (launches of a fragment use its slots in turn)."""
        launches_before = (since - self.offset) // period - 1
        return self.slots[launches_before % len(self.slots)]


class DaSGD(Strategy):
    """Delayed averaging of parameters and floating buffers around any torch optimizer.

    period: H >= 1, steps between launches. delay: 0 <= d, steps between a launch and its
    merge (d > H keeps ceil(d/H) rounds in flight, each in its own buffers and collective
    name), or "auto" (chosen within delay_bounds from measurements; see auto_delay.py).
    warmup_steps: first W steps use synchronous gradient averaging.
    average_optimizer_state: also send floating optimizer state (momentum) through the
    same delayed merge; off by default (momentum stays local, as in the paper).
    avg_dtype: "fp32" (the weights themselves), "bf16" or "fp16" (differences to a common
    reference, see low_precision.py). fragments: F >= 1 parts averaged in turn.
    """

    name = "dasgd"
    about = "delayed averaging that overlaps communication with compute"
    fuse_relaunch = True  # False: separate merge and snapshot passes (same values; tests)

    def __init__(self, model, optimizer, *, period=1, delay=1, warmup_steps=0,
                 average_optimizer_state=False, avg_dtype="fp32", fragments=1,
                 delay_bounds=DEFAULT_BOUNDS):
        auto = check_delay(delay) == "auto"
        for label, value, low in (("period", period, 1), ("warmup_steps", warmup_steps, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
        check_avg_dtype(avg_dtype)
        check_fragments(fragments)
        delay_bounds = check_bounds(delay_bounds)
        super().__init__(model, optimizer)
        self.period = period
        self.delay_setting = delay          # what the user asked for: an int or "auto"
        self.delay = delay_bounds[0] if auto else delay  # the d in use
        self.delay_bounds = delay_bounds
        self.delay_decided = not auto
        self.delay_log = []                 # one entry per decision of delay="auto"
        self._clock = StepClock() if auto else None
        self.warmup_steps = warmup_steps
        self.average_optimizer_state = bool(average_optimizer_state)
        self.avg_dtype = avg_dtype
        self.fragments = fragments
        self._offsets = fragment_offsets(fragments, period)
        self.rounds_launched = 0
        self._in_flight = deque()
        self._fragments = None  # built lazily: optimizer state exists only after a first step
        self._grad_buffer = None
        self._layout_size = None  # tensors averaged, fixed when the buffers are built
        # Low precision sends differences to a reference every rank holds identically: until
        # the buffers exist that is the model as broadcast (or as last synchronized).
        self._common = self._copy_model() if avg_dtype != "fp32" else None

    # -- the step -------------------------------------------------------------------
    def step(self):
        if self._clock is not None:
            self._clock.tick(self.comm_wait_s)
        if self.steps_done < self.warmup_steps:
            self._average_gradients()
        self.optimizer.step()
        self.steps_done += 1
        since = self.steps_done - self.warmup_steps
        if not self.delay_decided and since >= FIRST_CHECK_AFTER:
            self._retune()
        launching = {f for f, offset in enumerate(self._offsets)
                     if since - offset > 0 and (since - offset) % self.period == 0}
        prepared = set()
        # Launches of a fragment are H steps apart and all wait d steps: in time order.
        while self._in_flight and self._in_flight[0].merge_at <= self.steps_done:
            rnd = self._in_flight.popleft()
            # A merge in a step that launches into the same slot (d a multiple of H, the
            # default H = d = 1 included) writes the next round's buffers in the same pass.
            relaunch = (self.fuse_relaunch and rnd.fragment in launching and rnd.slot is
                        self._fragments[rnd.fragment].slot_for(since, self.period))
            self._merge(rnd, relaunch=relaunch)
            if relaunch:
                prepared.add(rnd.fragment)
        for f in sorted(launching):
            self._launch(f, since, prepared=f in prepared)

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
            tensors = tensors + float_optimizer_state(self.optimizer)
            if self._layout_size is not None and len(tensors) != self._layout_size:
                raise RuntimeError(
                    f"{self.name}: the optimizer created state for another parameter at step "
                    f"{self.steps_done} ({len(tensors)} tensors to average, the buffers hold "
                    f"{self._layout_size}); with average_optimizer_state every parameter "
                    f"must have its state before the first average")
        return tensors

    def _copy_model(self):
        return [t.detach().clone() for t in self.model_tensors]

    def _build_fragments(self):
        if self.average_optimizer_state:
            # every rank must send the same tensors
            align_optimizer_state(self, name=f"{self.name}.state_layout")
        tensors = self._tensors()
        self._layout_size = len(tensors)
        if self.fragments == 1:
            pieces = [[(i, 0, t.numel()) for i, t in enumerate(tensors)]]
        else:
            pieces = split_pieces(tensors, self.fragments)
            if any(not p for p in pieces):
                raise ValueError(f"fragments={self.fragments} exceeds the "
                                 f"{sum(t.numel() for t in tensors)} averaged elements")
        self._fragments = [_Fragment(p, offset) for p, offset in zip(pieces, self._offsets)]
        references = None
        if self.avg_dtype != "fp32":
            # optimizer state starts as zeros everywhere: identical on every rank too
            extra = [t.new_zeros(t.shape) for t in tensors[len(self._common):]]
            references = self._common + extra
            self._common = None
        self._build_slots(tensors, references)

    def _build_slots(self, tensors, references=None):
        """Slots of every fragment for the current d. `references`: tensors identical on
        every rank that low-precision slots take differences to."""
        count = max(1, math.ceil(self.delay / self.period))
        for f, frag in enumerate(self._fragments):
            prefix = f"{self.name}.avg" + (f".f{f}" if self.fragments > 1 else "")
            names = [prefix] if count == 1 else [f"{prefix}.{i}" for i in range(count)]
            views = frag.views(tensors)
            if self.avg_dtype == "fp32":
                frag.slots = [_Slot(views, name, with_snapshot=self.delay > 0)
                              for name in names]
            else:
                ref = frag.views(references) if references is not None else \
                    frag.slots[0].reference.views
                frag.slots = [LowPrecisionSlot(views, name, WIRE_DTYPES[self.avg_dtype], ref)
                              for name in names]

    def _launch(self, f, since, prepared=False):
        """Start fragment f's next round; `prepared`: the merge just wrote its buffers."""
        if self._fragments is None:
            self._build_fragments()
        frag = self._fragments[f]
        slot = frag.slot_for(since, self.period)
        if not prepared:
            slot.prepare(frag.views(self._tensors()))
        handle = slot.start(self._hvd)
        self.rounds_launched += 1
        rnd = _Round(slot, handle, slot.name, self.steps_done, self.steps_done + self.delay, f)
        if self.delay == 0:
            self._merge(rnd)
        else:
            self._in_flight.append(rnd)

    def _merge(self, rnd, relaunch=False):
        received = self._wait(rnd.handle, rnd.name)
        tensors = self._fragments[rnd.fragment].views(self._tensors())
        rnd.slot.merge(tensors, self.size, received, relaunch=relaunch)

    def flush(self):
        """Wait for every in-flight average and merge it now (all ranks must call it)."""
        while self._in_flight:
            self._merge(self._in_flight.popleft())

    def synchronize_model(self):
        super().synchronize_model()
        self._reset_references()
        if self._clock is not None:
            self._clock.restart()  # evaluation and checkpoints are not training steps

    def _reset_references(self):
        """All ranks hold one model again: low-precision differences start from it."""
        if self.avg_dtype == "fp32":
            return
        if self._fragments is None:
            self._common = self._copy_model()
            return
        tensors = self._tensors()
        for frag in self._fragments:
            for slot in frag.slots:
                slot.reset_reference(frag.views(tensors))

    # -- delay="auto" -----------------------------------------------------------------
    def _payload_numel(self):
        if self._fragments is not None:
            return max(sum(stop - start for _, start, stop in frag.pieces)
                       for frag in self._fragments)
        return -(-sum(t.numel() for t in self._tensors()) // self.fragments)

    def _retune(self):
        """Measure, let rank 0 decide d, apply it on every rank (collective); True if d
        changed."""
        start = time.perf_counter()
        for rnd in self._in_flight:  # keep the link free for the probe; values unchanged
            poll_until_done(rnd.handle, name=rnd.name, step=self.steps_done,
                            timeout_s=self.timeout_s, rank=self.rank)
        self.comm_wait_s += time.perf_counter() - start
        previous = self.delay
        d, avg_s, step_s = decide_delay(self, self._payload_numel(),
                                        WIRE_DTYPES[self.avg_dtype], self._clock,
                                        self.delay_bounds)
        self.delay_decided = True
        self.delay_log.append({"step": self.steps_done, "delay": d, "previous": previous,
                               "avg_s": avg_s, "step_s": step_s})
        if d == previous:
            return False
        self.flush()  # rounds in flight were scheduled with the old d
        self.delay = d
        if self._fragments is not None:
            self._build_slots(self._tensors())
        return True

    def recheck_delay(self):
        """With delay="auto": measure again and apply the decision (all ranks call it at
        the same point, e.g. at the end of an epoch). Returns the new d if it changed,
        else None; None also for a fixed delay."""
        if self._clock is None:
            return None
        return self.delay if self._retune() else None

    # -- checkpoints ----------------------------------------------------------------
    def _counters(self):
        return {"strategy": self.name, "step": self.steps_done,
                "rounds": self.rounds_launched, "period": self.period,
                "delay": self.delay_setting, "warmup_steps": self.warmup_steps,
                "avg_dtype": self.avg_dtype, "fragments": self.fragments}

    def state_dict(self):
        if self._in_flight:
            raise RuntimeError(
                f"{self.name}: {len(self._in_flight)} average(s) still in flight at step "
                f"{self.steps_done}; call synchronize_model() on every rank before "
                f"state_dict()")
        state = super().state_dict()
        if self._clock is not None:
            state["auto_delay"] = {"delay": self.delay, "decided": self.delay_decided,
                                   "log": list(self.delay_log)}
        return state

    def load_state_dict(self, state):
        """Restore counters, optimizer state and (delay="auto") the d in use. Load the
        model's state first: low-precision averages take differences to it."""
        if self._in_flight:
            raise RuntimeError(f"{self.name}: load_state_dict() with averages in flight; "
                               f"call it before training or after synchronize_model()")
        if isinstance(state, dict):  # checkpoints written before these options existed
            state = {"avg_dtype": "fp32", "fragments": 1, **state}
        super().load_state_dict(state)
        self.rounds_launched = int(state.get("rounds", 0))
        auto = state.get("auto_delay")
        if self._clock is not None and isinstance(auto, dict):
            self.delay = int(auto["delay"])
            self.delay_decided = bool(auto["decided"])
            self.delay_log = list(auto.get("log", []))
            if self._fragments is not None:
                self._build_slots(self._tensors())
        self._reset_references()
        return state


class LocalSGD(DaSGD):
    """Blocking periodic model averaging (d = 0): the `local` baseline."""

    name = "local"
    about = "blocking model averaging every --period steps"

    def __init__(self, model, optimizer, *, period=1, warmup_steps=0):
        super().__init__(model, optimizer, period=period, delay=0, warmup_steps=warmup_steps)
