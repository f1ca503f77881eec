"""Several processes under ``torchrun``: the process's place in the group, process groups, agreement on
errors (training) and sharded evaluation.

``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` come from torchrun (``distributed_env``); with more than one
process the group is initialised with NCCL on CUDA and gloo on CPU. ``agree`` makes an error on one rank
stop every rank (the others would otherwise wait forever at the next collective). Evaluation
(``test.py``, ``init_cmsr.py``) shards images with ``Shard`` (every ``world``-th item) and gathers per-image
results on every rank with ``gather``.

Teardown: a process that exits with its gloo group still alive can abort at interpreter exit ("terminate
called without an active exception", SIGABRT: gloo's worker threads are still joinable when the C++ objects
are destroyed). Every group is therefore started by ``start_group``, which registers ``close_group`` with
``atexit``, and ``engine.errors.run`` closes it as soon as the script's ``main`` returns or raises.
Collectives (``agree``, ``gather``) that fail because a peer has left raise ``PeerFailed`` (one line) instead
of the backend's multi-line error.
"""
import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class PeerFailed(RuntimeError):
    """Another process of the group failed (it prints its own error)."""


PEER_MESSAGE = 'another process of the torchrun group failed (see its error)'
_closer_registered = False


def start_group(backend):
    """Initialise the default process group (torchrun's environment) once; ``close_group`` runs at exit."""
    global _closer_registered
    if dist.is_initialized():
        return
    dist.init_process_group(backend)
    if not _closer_registered:
        atexit.register(close_group)
        _closer_registered = True


def close_group():
    """Destroy the default process group if there is one (idempotent; a no-op without torchrun). Joins the
    backend's threads while the interpreter is fully alive; nothing further is sent to the other processes."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:       # noqa: BLE001  (a peer already gone: nothing left to release cleanly)
            pass


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
