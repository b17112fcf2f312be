"""The training input pipeline: one DataLoader for the whole run, optionally with worker
processes that decode and augment ahead of the training step.

Reproducibility does not depend on the number of workers. The batch sampler runs in the
training process and hands out keys (epoch, index); whoever loads a key (the training
process or any worker) sets the dataset's epoch from the key itself, and augmentation draws
from the generator of (seed, epoch, index) (see augment.py). Workers are started once and
kept across epochs; a new epoch (or a resume at step k) only changes what the sampler
deals out.

A sample that cannot be loaded does not travel as a worker's traceback: the worker returns
a LoadFailure naming it, and the training process raises DataReadError with that one line.
A worker that dies (killed, out of memory) is reported the same way, naming the files of the
batch that was awaited.

Stop signals (SIGTERM, SIGUSR1, SIGINT: a scheduler's time limit, a launcher ending the job)
reach the workers too, as members of the rank's process group. The training process decides
how to stop (a checkpoint first); the workers ignore those signals and end when the training
process shuts them down or is gone.
"""
import atexit
import multiprocessing.util  # noqa: F401 -- its exit handler must be registered before ours
import os
import re
import signal
import weakref

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils import signal_handling
from torch.utils.data._utils.collate import default_collate

from toolkit.data.sharding import shard_indices, steps_per_epoch

PREFETCH_BATCHES = 2  # per worker: enough to hide a slow image without holding many batches


class DataReadError(OSError):
    """A training sample could not be read, or a loader worker died.

    An OSError rather than a DataError: only the rank that owns the sample sees it, so it
    must be reported by that rank (the CLI prints OSErrors on every rank that has one)."""


class LoadFailure:
    """What a worker returns instead of a batch holding a sample it could not load."""

    def __init__(self, message):
        self.message = message


def describe_sample(dataset, index):
    """The file behind sample `index` when the dataset has files (ImageFolder), else its index."""
    samples = getattr(dataset, "samples", None)
    if samples is not None and 0 <= index < len(samples):
        return str(samples[index][0])
    return f"sample {index}"


class EpochIndexed(Dataset):
    """`dataset` addressed by (epoch, index) keys, so a worker never depends on an epoch
    set in another process."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        try:
            return self.dataset[index]
        except Exception as exc:  # any failure ends the run; it must name the sample
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            where = describe_sample(self.dataset, index)
            if where not in text:
                text = f"{where}: {text}"
            return LoadFailure(f"training data: {text}")


def ignore_stop_signals(worker_id):
    """worker_init_fn: a stop signal is the training process's to handle (see above)."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def collate_or_failure(items):
    """default_collate, unless a sample failed: then that failure stands for the batch."""
    for item in items:
        if isinstance(item, LoadFailure):
            return item
    return default_collate(items)


class ShardBatches:
    """Batch sampler over this rank's shard of one epoch (see sharding.py), yielding
    (epoch, index) keys; set_epoch chooses the epoch and the first step to deal."""

    def __init__(self, n_samples, batch_size, rank, world_size, seed):
        self.n_samples, self.batch_size = n_samples, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch, start_step=0):
        self.epoch, self.start_step = int(epoch), int(start_step)

    def batches(self):
        shard = shard_indices(self.n_samples, self.batch_size, self.rank, self.world_size,
                              self.seed, self.epoch, train=True)
        return [[(self.epoch, i) for i in batch] for batch in shard[self.start_step:]]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self):
        steps = steps_per_epoch(self.n_samples, self.batch_size, self.world_size)
        return max(0, steps - self.start_step)


def default_workers(ranks_on_node, compute_threads):
    """Loader workers per rank when --workers is not given: the cores this rank may use
    (its affinity shared by the node's ranks) minus its compute threads, at least 0."""
    cores = len(os.sched_getaffinity(0)) // max(1, ranks_on_node)
    return max(0, cores - max(1, compute_threads))


class TrainLoader:
    """The run's training batches: `epoch(e, start_step)` returns the iterable of epoch e
    from step start_step on. workers = 0 loads in the training process."""

    def __init__(self, dataset, batch_size, rank, world_size, seed, *, workers=0,
                 pin_memory=False):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"--workers must be an integer >= 0, got {workers!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if steps_per_epoch(len(dataset), batch_size, world_size) == 0:
            raise ValueError(f"batch size {batch_size} x {world_size} ranks exceeds the "
                             f"{len(dataset)} training samples: not one full step per epoch")
        self.dataset, self.workers = dataset, workers
        self.sampler = ShardBatches(len(dataset), batch_size, rank, world_size, seed)
        extra = {}
        if workers:
            # fork: workers start in milliseconds and share the dataset's memory; they
            # never touch MPI or Horovod, only the dataset.
            extra = dict(persistent_workers=True, prefetch_factor=PREFETCH_BATCHES,
                         multiprocessing_context="fork", worker_init_fn=ignore_stop_signals)
            # torch's SIGCHLD handler raises a worker's death at whatever line the training
            # process is executing (in the middle of a collective, say). Without it the
            # loader finds a dead worker while waiting for its batch (within 5 s), where
            # _CheckedBatches turns it into one DataReadError.
            signal_handling._SIGCHLD_handler_set = True
            _LOADERS.add(self)
            _register_exit_handler()
        # A private generator: creating an epoch's iterator must not draw from the global
        # torch RNG, whose state a checkpoint carries for the model's own randomness.
        self.loader = DataLoader(EpochIndexed(dataset), batch_sampler=self.sampler,
                                 num_workers=workers, collate_fn=collate_or_failure,
                                 pin_memory=pin_memory, generator=torch.Generator(), **extra)

    def epoch(self, epoch, start_step=0):
        self.sampler.set_epoch(epoch, start_step)
        return _CheckedBatches(self, self.sampler.batches())

    def close(self):
        """Stop the worker processes (also done when the loader is garbage collected)."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            # torch ends a worker that missed its stop message with SIGTERM, which ours
            # ignore: end it for good.
            _kill_alive(getattr(iterator, "_workers", ()))
        self.loader._iterator = None


# Every worker process any loader started, and the loaders with workers. multiprocessing's
# exit handler sends its children SIGTERM and then joins them: our workers ignore SIGTERM,
# so one left running (a loader never closed, or collected in a reference cycle whose
# finalisers could not reach it) would keep the interpreter from exiting. Ours runs first.
_WORKERS = weakref.WeakSet()
_LOADERS = weakref.WeakSet()
_exit_handler_registered = False


def _register_exit_handler():
    # Registered once the first workers exist, i.e. after multiprocessing's own handler:
    # atexit runs the later registration first.
    global _exit_handler_registered
    if not _exit_handler_registered:
        atexit.register(_stop_all_workers)
        _exit_handler_registered = True


def _stop_all_workers():
    for loader in list(_LOADERS):
        try:
            loader.close()
        except Exception:  # noqa: BLE001 -- at exit, stopping the rest matters more
            pass
    _kill_alive(list(_WORKERS))


def _kill_alive(processes):
    for process in processes:
        try:
            alive = process.is_alive()
        except AssertionError:  # a forked copy of the training process: not its child
            continue
        if alive:
            process.kill()
            process.join(5)


_DEAD_WORKER = re.compile(r"\(pid(?:\(s\))? ([\d, ]+)\)")


class _CheckedBatches:
    """One epoch's batches, turning a failed sample or a dead worker into DataReadError."""

    def __init__(self, owner, keys):
        self.owner, self.keys = owner, keys

    def __len__(self):
        return len(self.keys)

    def __iter__(self):
        iterator = iter(self.owner.loader)
        _WORKERS.update(getattr(iterator, "_workers", ()))
        for position in range(len(self.keys)):
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except Exception as exc:  # a dead worker, or its half-written batch
                raise DataReadError(self._loader_failure_message(exc, position)) from None
            if isinstance(batch, LoadFailure):
                raise DataReadError(batch.message)
            yield batch

    def _files_of(self, position):
        dataset = self.owner.dataset
        names = [describe_sample(dataset, index) for _, index in self.keys[position]]
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        return f"{names[0]}{more}"

    def _loader_failure_message(self, exc, position):
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sampler = self.owner.sampler
        where = (f"while loading batch {sampler.start_step + position + 1} of epoch "
                 f"{sampler.epoch + 1} "
                 f"({self._files_of(position)})")
        if "DataLoader worker" not in text:
            # A worker killed while sending a batch leaves a truncated message behind.
            return f"training data: the loader failed ({type(exc).__name__}: {text}) {where}"
        match = _DEAD_WORKER.search(text)
        pid = f" (pid {match.group(1).strip()})" if match else ""
        how = text[text.index("killed by signal"):] if "killed by signal" in text else \
            "exited unexpectedly"
        return f"training data: a loader worker{pid} died ({how.rstrip('. ')}) {where}"
