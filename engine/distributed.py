"""Several processes under ``torchrun``: the process's place in the group, process groups, agreement on
errors (training) and sharded evaluation.

``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` come from torchrun (``distributed_env``); with more than one
process the group is initialised with NCCL on CUDA and gloo on CPU. ``agree`` makes an error on one rank
stop every rank (the others would otherwise wait forever at the next collective). Evaluation
(``test.py``, ``init_cmsr.py``) shards images with ``Shard`` (every ``world``-th item) and gathers per-image
results on every rank with ``gather``.

Teardown: a process whose gloo group is still alive when the interpreter finalises can abort (SIGABRT,
"terminate called without an active exception"): a backend worker thread that releases a finished
collective's tensor needs the GIL to drop its Python object, and a thread asking for the GIL during
finalisation is unwound through a ``noexcept`` destructor (seen in a core dump: ``ProcessGroupGloo::runLoop``
-> ``~AsyncAllreduceWork`` -> ``decref_pyobject`` -> ``take_gil`` -> ``pthread_exit`` -> ``std::terminate``).
Destroying the group does not help once ``DistributedDataParallel`` has wrapped a model: torch keeps a C++
reference to the group, so its threads outlive ``destroy_process_group`` and ``gc.collect``. Every group is
therefore started by ``start_group``; ``engine.errors.run`` calls ``finish`` when the script's ``main`` has
returned: every rank meets at a barrier (after a success only, so that a failing rank never waits for a peer
that is stuck in another collective), the group is destroyed and a process that started a group leaves with
``os._exit`` once its output is flushed, skipping the finalisation the worker threads could race with
(``main`` has closed its files: checkpoints are written atomically, logs and TensorBoard writers closed).
Collectives (``agree``, ``gather``) that fail because a peer has left raise ``PeerFailed`` (one line) instead
of the backend's multi-line error.
"""
import atexit
import gc
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


class PeerFailed(RuntimeError):
    """Another process of the group failed (it prints its own error)."""


PEER_MESSAGE = 'another process of the torchrun group failed (see its error)'
_closer_registered = False
_started_here = False


def start_group(backend):
    """Initialise the default process group (torchrun's environment) once; ``close_group`` runs at exit and
    ``finish`` ends the process."""
    global _closer_registered, _started_here
    if dist.is_initialized():
        return
    dist.init_process_group(backend)
    _started_here = True
    if not _closer_registered:
        atexit.register(close_group)
        _closer_registered = True


def close_group(synchronise=False):
    """Destroy the default process group if there is one (idempotent; a no-op without torchrun).
    ``synchronise``: first wait at a barrier until every rank has got here (their collectives complete, no
    rank leaves while another still talks to it); only after a success, a failing rank must not wait. A peer
    that has already gone is not waited for (nothing left to release cleanly)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()                # unreachable DataLoader iterators shut their worker processes down now, before
                                # finish's os._exit skips the interpreter's own clean-up
    if synchronise:
        try:
            dist.barrier()
        except Exception:       # noqa: BLE001  (a peer already gone)
            pass
    try:
        dist.destroy_process_group()
    except Exception:           # noqa: BLE001
        pass


def finish(code):
    """End of a script's ``main`` (exit status ``code``): close the group (synchronised after a success) and,
    in a process that started one, flush the output and leave with ``os._exit(code)`` (module docstring:
    finalisation can abort while gloo's threads are alive). Returns ``code`` without a group."""
    close_group(synchronise=code == 0)
    if _started_here:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):       # a closed or broken pipe: nothing more to say
                pass
        os._exit(code)
    return code


def peer_left(error):
    """The one-line message for an exception raised by a collective because another process of the group
    left or failed (``torch.distributed.DistError``, or the backend's RuntimeError naming its transport), or
    None for any other exception."""
    if isinstance(error, PeerFailed):
        return str(error)
    if not isinstance(error, RuntimeError) or distributed_env()[1] <= 1:
        return None
    text = str(error)
    if (isinstance(error, getattr(dist, 'DistError', ())) or '/gloo/' in text or 'NCCL' in text
            or 'Connection closed by peer' in text or 'Connection reset by peer' in text):
        return PEER_MESSAGE
    return None


def _collective(fn, *args):
    """Run a collective; a peer that has left (connection closed, timeout) becomes ``PeerFailed``."""
    try:
        return fn(*args)
    except RuntimeError as e:        # torch.distributed.DistError and the backends' errors derive from it
        raise PeerFailed(PEER_MESSAGE) from e


@dataclass
class Dist:
    """rank / world size of this process and its device (``main``: rank 0, which logs and saves)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def main(self):
        return self.rank == 0


def distributed_env():
    """(rank, world, local_rank) from torchrun's environment (0, 1, 0 for a plain run)."""
    return (int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1)),
            int(os.environ.get('LOCAL_RANK', 0)))


def setup_distributed(device=None):
    """Read torchrun's environment; initialise the process group when there is more than one process.

    ``device``: 'cpu', 'cuda' or 'mps' (default: cuda when available, else cpu).
    """
    rank, world, local_rank = distributed_env()
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError('--device cuda requested but CUDA is not available')
        dev = torch.device('cuda', local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if world > 1:
        start_group('nccl' if dev.type == 'cuda' else 'gloo')
    return Dist(rank, world, local_rank, dev)


def agree(dd, error=None):
    """Collective: raise on every rank if any rank had an error (``error``: this rank's exception or None).

    The failing rank re-raises its own exception; the others raise ``PeerFailed``.
    """
    if dd.world > 1:
        flag = torch.tensor([0 if error is None else 1], device=dd.device)
        _collective(dist.all_reduce, flag)
        if error is None and int(flag.item()):
            raise PeerFailed(PEER_MESSAGE)
    if error is not None:
        raise error


def init_process_group(device):
    """Start the torchrun process group (gloo on the CPU, nccl on CUDA) if there is more than one process;
    returns the number of processes."""
    _, world, _ = distributed_env()
    if world > 1:
        start_group('nccl' if str(device).startswith('cuda') else 'gloo')
    return world


def gather(obj):
    """All processes' ``obj`` as a list ordered by rank, on every process (``[obj]`` without torchrun)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    _collective(dist.all_gather_object, out, obj)
    return out


class Shard:
    """Every ``world``-th item of a dataset starting at ``rank``; ``indices`` maps back to the dataset."""

    def __init__(self, dataset, rank, world):
        self.dataset = dataset
        self.indices = list(range(rank, len(dataset), world))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]
