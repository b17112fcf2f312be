"""What every strategy shares: the model's state tensors, the blocking average used before
evaluation and checkpoints, the communication clock and the counters a checkpoint carries."""
import inspect
import time

import torch

from .flat import FlatBuffer
from .optimizer_state import align_optimizer_state
from toolkit.job.startup import comm_timeout_s

from .watchdog import wait_handle


def float_buffers(model):
    """Floating-point buffers (BatchNorm running statistics); integer counters stay local."""
    return [b for b in model.buffers() if b.is_floating_point()]


def float_optimizer_state(optimizer):
    """Floating optimizer state tensors (momentum, Adam moments) in a rank-independent order."""
    tensors = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key in sorted(state, key=str):
                value = state[key]
                if torch.is_tensor(value) and value.is_floating_point():
                    tensors.append(value)
    return tensors


class Strategy:
    """Base class. Subclasses implement step() and may extend state_dict().

    A strategy declares its options as the keyword-only parameters of its __init__ (see
    options()), and says what it does in `about` (the --strategy help)."""

    name = "base"
    about = ""

    @classmethod
    def options(cls):
        """The options this strategy takes: the keyword-only parameters of its __init__."""
        return tuple(p.name for p in inspect.signature(cls.__init__).parameters.values()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY)

    def __init__(self, model, optimizer):
        import horovod.torch as hvd

        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, "
                             f"got {type(optimizer).__name__}")
        self._hvd = hvd
        self.model = model
        self.optimizer = optimizer
        self.rank = hvd.rank()
        self.size = hvd.size()
        self.timeout_s = comm_timeout_s()
        self.comm_wait_s = 0.0
        self.steps_done = 0
        self._params = list(model.parameters())
        self._buffers = float_buffers(model)
        # Every strategy starts from rank 0's model so that the ranks' trajectories are
        # comparable (and sync SGD stays in lockstep).
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    @property
    def model_tensors(self):
        return self._params + self._buffers

    def _wait(self, handle, name):
        start = time.perf_counter()
        try:
            return wait_handle(handle, name=name, step=self.steps_done,
                               timeout_s=self.timeout_s, rank=self.rank)
        finally:
            self.comm_wait_s += time.perf_counter() - start

    def blocking_average(self, tensors, name):
        """Replace every tensor by its average over ranks (all ranks must call it)."""
        tensors = list(tensors)
        if self.size == 1 or not tensors:
            return
        buf = FlatBuffer(tensors)
        buf.load(tensors)
        handle = self._hvd.grouped_allreduce_async_(buf.tensors, name=name,
                                                    op=self._hvd.Average)
        self._wait(handle, name)
        buf.store(tensors)

    def flush(self):
        """Complete any in-flight communication (nothing to do without delayed averaging)."""

    def synchronize_model(self):
        """Identical full training state on every rank: parameters, floating buffers and
        floating optimizer state are averaged (after flushing in-flight averages)."""
        self.flush()
        # A parameter that got no gradient on some rank has no optimizer state there.
        align_optimizer_state(self, name=f"{self.name}.sync_model.layout")
        self.blocking_average(self.model_tensors + float_optimizer_state(self.optimizer),
                              name=f"{self.name}.sync_model")

    def step(self):
        raise TypeError(f"{type(self).__name__} does not define step()")

    def _counters(self):
        return {"strategy": self.name, "step": self.steps_done}

    def state_dict(self):
        state = self._counters()
        state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state):
        if not isinstance(state, dict) or "strategy" not in state or "step" not in state:
            raise ValueError("strategy state must be a dict from Strategy.state_dict() "
                             "(keys 'strategy', 'step', 'optimizer')")
        mine = self._counters()
        for key, value in mine.items():
            if key in ("step", "rounds"):
                continue
            if state.get(key) != value:
                raise ValueError(f"checkpoint was written with {key}={state.get(key)!r}, "
                                 f"this run uses {key}={value!r}")
        self.steps_done = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        return state
