"""What the machine has: free memory of a device (used by every memory check before work starts)."""
import os


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
