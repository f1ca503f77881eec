"""What the machine has: free memory of a device (used by every memory check before work starts) and the
CPU threads a process should use (`default_threads`: the thread policy of every script and the API)."""
import os
import time


def available_memory(device='cpu'):
    """Bytes that can still be allocated on ``device`` (None when unknown)."""
    dev = str(device)
    if dev.startswith('cuda'):
        import torch
        try:
            free, _ = torch.cuda.mem_get_info(torch.device(dev))
            return int(free)
        except (RuntimeError, AssertionError, ValueError):
            return None
    if dev.startswith('mps'):
        dev = 'cpu'       # unified memory
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------------
# CPU threads
# ------------------------------------------------------------------------------------------------
def usable_cores():
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def running_tasks():
    """Runnable tasks on the machine now, this thread included (``/proc/loadavg``), or None if unknown."""
    try:
        with open('/proc/loadavg') as f:
            return int(f.read().split()[3].split('/')[0])
    except (OSError, ValueError, IndexError):
        return None


def machine_load(samples=9, interval=0.01):
    """How many cores other processes keep busy now: the median over ``samples`` readings, ``interval``
    seconds apart, of the runnable tasks other than this thread (``/proc/loadavg``'s running count). Two
    runs started together see each other, and a CPU-bound process (a training run) is always runnable.
    The load *average* is not used: it lags by a minute, so a script started right after another one on an
    idle machine would take fewer threads than it could. Where the OS gives no running count, the 1-minute
    load average (0.0 if that is unknown too)."""
    readings = []
    for i in range(samples):
        running = running_tasks()
        if running is None:
            break
        readings.append(max(running - 1, 0))
        if i + 1 < samples:
            time.sleep(interval)
    if readings:
        return float(sorted(readings)[len(readings) // 2])
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def local_world_size():
    """Processes of this job on this machine: torchrun's ``LOCAL_WORLD_SIZE`` (else ``WORLD_SIZE``), else 1."""
    for name in ('LOCAL_WORLD_SIZE', 'WORLD_SIZE'):
        try:
            n = int(os.environ.get(name, ''))
        except ValueError:
            continue
        if n >= 1:
            return n
    return 1


def default_threads(cores=None, load=None, local_world=None):
    """The CPU thread count of one process when the user gives none (``--threads``, ``threads=``).

    ``max(1, cores - round(load)) // local_world``, at least 1: the cores this process may use
    (``usable_cores``) minus the cores other processes keep busy (``machine_load``: the runnable tasks now),
    shared among the ``local_world`` processes of a torchrun job on this machine
    (``local_world_size``). On an idle 8-core machine: 8; beside one CPU-bound process on 2 cores: 1;
    ``torchrun --nproc_per_node 2`` on 8 idle cores: 4 each. Arguments override the measured values
    (tests).
    """
    cores = usable_cores() if cores is None else int(cores)
    load = machine_load() if load is None else float(load)
    local_world = local_world_size() if local_world is None else int(local_world)
    free = max(1, cores - int(round(max(load, 0.0))))
    return max(1, free // max(1, local_world))


def threads_from_environment():
    """``OMP_NUM_THREADS`` when the user set it to a positive integer (it wins over the default), else None."""
    try:
        n = int(os.environ.get('OMP_NUM_THREADS', ''))
    except ValueError:
        return None
    return n if n >= 1 else None


def choose_threads(threads=None):
    """The thread count to use: ``threads`` if given (a positive integer, checked), else ``OMP_NUM_THREADS``
    if set, else ``default_threads()``."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f'threads must be a positive integer, got {threads!r}')
        return threads
    env = threads_from_environment()
    return env if env is not None else default_threads()


def set_threads(threads=None):
    """Apply ``choose_threads(threads)`` to torch's intra-op pool; returns the count used."""
    import torch
    n = choose_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
