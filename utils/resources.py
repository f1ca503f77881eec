"""What the machine has: free memory of a device (used by every memory check before work starts) and the
CPU threads a process should use (`default_threads`: the thread policy of every script and the API)."""
import atexit
import os
import stat
import tempfile
import time
from contextlib import contextmanager


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


def default_threads(cores=None, load=None, local_world=None, claimed=None):
    """The CPU thread count of one process when the user gives none (``--threads``, ``threads=``).

    ``max(1, cores - round(max(load, claimed))) // local_world``, at least 1: the cores this process may use
    (``usable_cores``) minus the cores other processes keep busy, shared among the ``local_world`` processes
    of a torchrun job on this machine (``local_world_size``). The busy cores are the larger of the runnable
    tasks now (``machine_load``) and the threads other live runs of this project have claimed
    (``claimed_threads``): two runs started in the same instant both see an idle machine while they sample,
    but the second one sees the first one's claim. On an idle 8-core machine: 8; beside one CPU-bound process
    on 2 cores: 1; ``torchrun --nproc_per_node 2`` on 8 idle cores: 4 each. Arguments override the measured
    values (tests).
    """
    cores = usable_cores() if cores is None else int(cores)
    load = machine_load() if load is None else float(load)
    claimed = claimed_threads() if claimed is None else int(claimed)
    local_world = local_world_size() if local_world is None else int(local_world)
    free = max(1, cores - int(round(max(load, float(claimed), 0.0))))
    return max(1, free // max(1, local_world))


# ------------------------------------------------------------------------------------------------
# Thread claims: a machine-wide registry of the runs of this project (one file per process)
# ------------------------------------------------------------------------------------------------
def claims_folder():
    """This user's claims folder in the temporary directory (created private), or None where it cannot be
    used (not creatable, not a folder owned by this user, no ``fcntl`` locking): the policy then relies on
    ``machine_load`` alone."""
    try:
        import fcntl  # noqa: F401  (POSIX only)
        uid = os.getuid()
    except (ImportError, AttributeError):
        return None
    folder = os.path.join(tempfile.gettempdir(), f'assr-threads-{uid}')
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        return None
    return folder


def _process_start(pid):
    """A process's start time (``/proc/<pid>/stat`` field 22), '' where unknown: with the pid it names a
    process uniquely (pids are reused)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[19]
    except (OSError, IndexError):
        return ''


def _alive(pid, start):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:             # e.g. another user's process: it exists
        pass
    return _process_start(pid) == start


@contextmanager
def _locked(folder):
    import fcntl
    with open(os.path.join(folder, 'lock'), 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_claims(folder):
    """{file name: threads} of live processes other than this one; stale files (their process has ended)
    are removed."""
    claims, me = {}, f'{os.getpid()}-'
    for name in os.listdir(folder):
        if not name.endswith('.claim') or name.startswith(me):
            continue
        path = os.path.join(folder, name)
        try:
            pid, start = name[:-len('.claim')].split('-', 1)
            with open(path) as f:
                threads = int(f.read().strip() or 0)
            alive = _alive(int(pid), start)
        except (OSError, ValueError):
            continue
        if alive:
            claims[name] = max(threads, 0)
        else:
            try:
                os.remove(path)
            except OSError:
                pass
    return claims


def claimed_threads():
    """Threads claimed by other live processes (``claim_threads``); 0 without a claims folder."""
    folder = claims_folder()
    if folder is None:
        return 0
    try:
        return sum(_read_claims(folder).values())
    except OSError:
        return 0


_release_registered = False


def _claim_path(folder):
    return os.path.join(folder, f'{os.getpid()}-{_process_start(os.getpid())}.claim')


def claim_threads(threads):
    """Record that this process uses ``threads`` CPU threads, so that runs starting after it count them
    (``default_threads``); the record is removed when the process exits (or ``release_threads``), and a
    record whose process has gone is ignored and deleted by the next reader."""
    folder = claims_folder()
    if folder is None:
        return
    path = _claim_path(folder)
    try:
        with open(path + '.tmp', 'w') as f:
            f.write(str(int(threads)))
        os.replace(path + '.tmp', path)
    except OSError:
        return
    global _release_registered
    if not _release_registered:            # once per process, not once per claim (the API claims per call)
        atexit.register(release_threads)
        _release_registered = True


def release_threads():
    """Remove this process's claim (``claim_threads``), if any."""
    folder = claims_folder()
    if folder is not None:
        try:
            os.remove(_claim_path(folder))
        except OSError:
            pass


@contextmanager
def threads_held(threads):
    """``claim_threads(threads)`` for the duration of a ``with`` block (the API claims during a call, not
    for the life of the interpreter it runs in)."""
    claim_threads(threads)
    try:
        yield threads
    finally:
        release_threads()


def decide_threads(threads=None):
    """``choose_threads(threads)`` and ``claim_threads`` of the result in one step, under the claims folder's
    lock so that runs starting together decide one after the other (each sees the claims made before it)."""
    folder = claims_folder()
    if folder is None:
        return choose_threads(threads)
    try:
        with _locked(folder):
            n = choose_threads(threads)
            claim_threads(n)
            return n
    except OSError:
        return choose_threads(threads)


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
    """Apply ``decide_threads(threads)`` (the count, claimed for this process's lifetime) to torch's intra-op
    pool; returns the count used."""
    import torch
    n = decide_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
