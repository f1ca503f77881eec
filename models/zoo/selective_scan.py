"""The selective scan of Mamba (S6) in pure PyTorch, with the semantics of ``mamba_ssm``'s reference
``selective_scan_ref``; ``mamba_ssm``'s CUDA kernel is used instead for CUDA tensors when it is installed.

Shapes (``b`` batch, ``d`` channels, ``L`` sequence length, ``n`` state size):

* ``u``, ``delta``, ``z``: (b, d, L); ``A``: (d, n) real; ``D``, ``delta_bias``: (d,);
* ``B`` and ``C`` each in one of three forms: (d, n) fixed per channel; (b, n, L) shared by all channels;
  (b, G, n, L) grouped: channel ``k`` uses group ``k // (d / G)`` (``d`` a multiple of ``G``).

Computation::

    delta <- softplus(delta + delta_bias)          (bias and softplus as requested)
    x_t    = exp(delta_t A) * x_{t-1} + delta_t u_t B_t,   x_{-1} = 0,   x_t: (b, d, n)
    y_t    = sum_n x_t C_t  +  D u_t,              out = y * silu(z) when z is given

Returns ``out`` (b, d, L) in the dtype of ``u`` (and the last state x_{L-1} (b, d, n) with
``return_last_state``). Arithmetic is float32, or float64 for float64 inputs (the reference always uses
float32).

Complexity: O(b d L n) time and O(b d L) memory for the output. The recurrence runs sequentially over L in
blocks of ``L_blk = max(1, BLOCK_ELEMENTS // (b d n))`` steps: each block forms exp(delta A) and
delta u B for its steps only, time-major, so one step updates a contiguous (b, d, n) slab in place; the
working memory is a few ``BLOCK_ELEMENTS`` floats, independent of L. L Python-level steps in all; the
per-step cost is memory-bound for b d n >~ 5000 and dominated by the ~10 us step overhead below that.
(A two-level form, the recurrence inside chunks for all chunks at once and then across chunks, is as exact
but did ~3 more passes over the (L, b, d, n) data and measured slower on a CPU: the sequential steps are
not the bottleneck; exp(delta A) is.)
Training (autograd): the recurrence has a hand-written backward (the reverse scan
``g_t = dL/dx_t + exp(delta_{t+1} A) g_{t+1}``), exact, but it keeps each block's exp(delta A), delta u B
and states, i.e. O(b d L n) memory, like the reference (the CUDA kernel recomputes them instead).
"""
import torch
import torch.nn.functional as F

try:    # optional CUDA kernel; never required
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba_ssm_scan
except ImportError:
    mamba_ssm_scan = None

#: Elements of one time-major work buffer (L_blk x b x d x n); three such buffers are live per block.
BLOCK_ELEMENTS = 1 << 20


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """The selective scan (module docstring): ``mamba_ssm``'s kernel for CUDA tensors when it is installed,
    else :func:`selective_scan_torch`."""
    if mamba_ssm_scan is not None and u.is_cuda:
        return mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, block_elements=BLOCK_ELEMENTS):
    """The selective scan in PyTorch (module docstring: shapes, semantics, complexity). On the meta device
    (shape inference, MAC counting) only the output shapes are formed: the recurrence is element-wise and
    not counted as MACs, and its L Python-level steps would dominate a count of a large input."""
    b, d, L = _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    n = A.shape[1]
    if u.device.type == 'meta':
        y = torch.empty_like(u)
        return (y, u.new_empty(b, d, n, dtype=torch.promote_types(u.dtype, torch.float32))) \
            if return_last_state else y
    dtype = torch.promote_types(u.dtype, torch.float32)
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    u_f, A = u.to(dtype), A.to(dtype)
    B, C = B.to(dtype), C.to(dtype)
    # time-major (L, b, d, 1) copies, so that every (l, b, d, n) product below is time-major too
    delta_t = delta.permute(2, 0, 1).contiguous().unsqueeze(-1)
    du_t = (delta * u_f).permute(2, 0, 1).contiguous().unsqueeze(-1)
    step = max(1, block_elements // (b * d * n))
    state = u_f.new_zeros(b, d, n)
    ys = []
    for lo in range(0, L, step):
        hi = min(L, lo + step)
        dA = (delta_t[lo:hi] * A).exp_()                                                   # (l, b, d, n)
        dBu = _times_operand(du_t[lo:hi], B, lo, hi)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (dA, dBu, state)):
            states = _LinearRecurrence.apply(dA, dBu, state)
        else:
            states = _recur_(dA, dBu, state)
        ys.append(_contract_operand(states, C, lo, hi))                                  # (l, b, d)
        state = states[-1]
    y = torch.cat(ys).permute(1, 2, 0)
    if D is not None:
        y = y + u_f * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(u.dtype)
    return (y, state) if return_last_state else y


def selective_scan_sequential(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                              return_last_state=False):
    """A plain one-step-at-a-time transcription of the recurrence (float64 inside), for tests: slow."""
    b, d, L = _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    f = torch.float64
    delta = delta.to(f) + (0 if delta_bias is None else delta_bias.to(f)[:, None])
    if delta_softplus:
        delta = F.softplus(delta)
    u_f, A = u.to(f), A.to(f)

    def at(X, t):               # the operand for step t as (b or 1, d, n)
        X = X.to(f)
        if X.dim() == 2:
            return X.unsqueeze(0)
        if X.dim() == 3:
            return X[:, None, :, t]
        return X[:, :, :, t].repeat_interleave(d // X.shape[1], dim=1)

    x = u_f.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(L):
        x = torch.exp(delta[:, :, t, None] * A) * x + (delta[:, :, t] * u_f[:, :, t])[..., None] * at(B, t)
        ys.append((x * at(C, t)).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u_f * D.to(f)[:, None]
    if z is not None:
        y = y * F.silu(z.to(f))
    y = y.to(u.dtype)
    return (y, x) if return_last_state else y


class _LinearRecurrence(torch.autograd.Function):
    """h_t = a_t h_{t-1} + v_t over the leading (time) axis of ``a``, ``v`` (l, ...), from ``h0`` (...):
    returns all h_t (l, ...). Backward: the reverse recurrence g_t = grad_t + a_{t+1} g_{t+1}."""

    @staticmethod
    def forward(ctx, a, v, h0):
        h = _recur_(a, v.clone(), h0)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad):
        a, h, h0 = ctx.saved_tensors
        g = grad.clone()
        for t in range(g.shape[0] - 2, -1, -1):
            g[t].addcmul_(a[t + 1], g[t + 1])
        grad_a = g * torch.cat([h0.unsqueeze(0), h[:-1]])
        return grad_a, g, a[0] * g[0]


def _recur_(a, h, h0):
    """In place: h_t <- a_t h_{t-1} + h_t along the leading axis, h_{-1} = h0; returns h."""
    h[0].addcmul_(a[0], h0)
    for t in range(1, h.shape[0]):
        h[t].addcmul_(a[t], h[t - 1])
    return h


def _steps(X, lo, hi):
    """The B/C operand ``X`` at steps [lo, hi), time-major and contiguous: (d, n) as is, (b, n, L) ->
    (l, b, 1, n), (b, G, n, L) -> (l, b, G, 1, n)."""
    if X.dim() == 2:
        return X
    if X.dim() == 3:
        return X[:, :, lo:hi].permute(2, 0, 1).contiguous().unsqueeze(2)
    return X[:, :, :, lo:hi].permute(3, 0, 1, 2).contiguous().unsqueeze(3)


def _times_operand(x, X, lo, hi):
    """x (l, b, d, 1) times the B/C operand ``X`` at steps [lo, hi) -> (l, b, d, n)."""
    Xs = _steps(X, lo, hi)
    if X.dim() < 4:
        return x * Xs
    l, b, d, _ = x.shape
    return (x.view(l, b, X.shape[1], d // X.shape[1], 1) * Xs).view(l, b, d, -1)


def _contract_operand(h, X, lo, hi):
    """sum_n h (l, b, d, n) * the B/C operand ``X`` at steps [lo, hi) -> (l, b, d)."""
    Xs = _steps(X, lo, hi)
    if X.dim() == 2:
        return torch.einsum('lbdn,dn->lbd', h, Xs)
    if X.dim() == 3:
        return torch.einsum('lbdn,lbn->lbd', h, Xs[:, :, 0])
    l, b, d, n = h.shape
    G = X.shape[1]
    return torch.einsum('lbghn,lbgn->lbgh', h.view(l, b, G, d // G, n), Xs[:, :, :, 0]).reshape(l, b, d)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias):
    """(b, d, L) after checking every operand against the forms in the module docstring."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f'selective_scan: u and delta must be (b, d, L) of one shape, got {tuple(u.shape)} '
                         f'and {tuple(delta.shape)}')
    b, d, L = u.shape
    if A.dim() != 2 or A.shape[0] != d or A.is_complex():
        raise ValueError(f'selective_scan: A must be a real (d, n) = ({d}, n) tensor, got {tuple(A.shape)} '
                         f'{A.dtype}')
    n = A.shape[1]
    for name, X in (('B', B), ('C', C)):
        ok = ((X.dim() == 2 and X.shape == (d, n)) or (X.dim() == 3 and X.shape == (b, n, L))
              or (X.dim() == 4 and X.shape[0] == b and X.shape[2:] == (n, L) and X.shape[1] > 0
                  and d % X.shape[1] == 0))
        if not ok:
            raise ValueError(f'selective_scan: {name} must be ({d}, {n}), ({b}, {n}, {L}) or ({b}, G, {n}, {L}) '
                             f'with G dividing {d}, got {tuple(X.shape)}')
    for name, X, shape in (('D', D, (d,)), ('delta_bias', delta_bias, (d,)), ('z', z, (b, d, L))):
        if X is not None and tuple(X.shape) != shape:
            raise ValueError(f'selective_scan: {name} must be {shape}, got {tuple(X.shape)}')
    if L == 0:
        raise ValueError('selective_scan: empty sequence (L = 0)')
    return b, d, L
