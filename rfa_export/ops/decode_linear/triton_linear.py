"""y = x W^T + b (+ exact GELU) for at most 64 rows, as one Triton kernel.

Decoding runs each linear layer on a handful of rows: cuBLAS then spends more time in launch, ramp-up and
a separate split-K reduction (and a separate GELU) than in reading the weights. This kernel gives each
program a strip of output columns over all rows and the whole K, with the bias and GELU in the epilogue;
for a deep, narrow layer (few strips), triton_decode_linear_partials gives each program a range of K
instead and leaves fp32 partial sums for the next kernel to add. triton_decode_linear_argmax also leaves each
program's largest output per row, which one small kernel reduces to the rows' argmax (greedy decoding's next
token without a separate reduction over the logits).
On Hopper it is a programmatic dependent launch (plugins/kernels/dependent_launch.cuh says what that is):
it may start while the kernel before it finishes, reading its bias and weights (at one row its whole strip of
them, for up to 4 rows its first two K tiles) before waiting for that kernel, and holding its whole strip it
lets the next kernel launch before that wait; the q/k/v GEMM of a decode step asks for its weights into L2 there
too. At one row a program may also form x itself first: a residual add and the LayerNorm after it (RowNorm;
triton_norm_linear.py).
"""

from typing import NamedTuple, Optional, Tuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the model falls back to F.linear
    triton = None

MAX_ROWS = 64
_DTYPES = (torch.float16, torch.bfloat16)
USE_PDL = True  # programmatic dependent launch where the device has it; tests compare with it off
SPLIT_K_MAX = 4  # most parts decode_linear_splits splits a layer's K into
SPLIT_K_MIN_RANGE = 512  # shortest range of K a part gets (the output projection, K 1024, in 2 parts)
PROJ_PRECISION = tl.constexpr("tf32x3") if triton is not None else None  # 3 TF32 passes: fp32-accurate products
MAX_PROJECTION_PARTS = 4  # the decode step kernel's limit (rfa_decode_args_t::proj_parts)
PRELOAD_MAX_ROWS = 4  # up to this many rows the first two weight tiles are read before the wait (_launch)
# at one row, what a program reads before its wait: "strip" its whole weight strip into registers, where that
# holds at most STRIP_MAX_ELEMENTS (32x1024: every layer of a d_model 1024 step but the LM head), else as
# "tiles", its first two K tiles (as up to PRELOAD_MAX_ROWS rows); benchmarks/bench_decode_variants_gpu.py
ONE_ROW_EARLY_READ = "strip"
STRIP_MAX_ELEMENTS = 32 * 1024
# a program holding its whole strip lets the next kernel launch before its own wait, not after it: that kernel
# then reads its weights while this one waits (benchmarks/bench_decode_variants_gpu.py, "trigger")
STRIP_TRIGGERS_BEFORE_WAIT = True
# except a GELU layer (FFN1): it lets FFN2 launch after its wait, so fewer kernels stream weights beside the
# attention step (benchmarks/bench_decode_variants_gpu.py, "ffn1_trigger")
GELU_STRIP_TRIGGERS_AFTER_WAIT = True
PREFETCH_PROJECTION_WEIGHTS = True  # see triton_decode_linear_projected; tests compare with it off
WIDE_K_TILE_MIN_ROWS = 32  # see _tiles
_SHARED_MEMORY = {}


class RowNorm(NamedTuple):
    """The residual add and LayerNorm a one-row strip program applies to x before its GEMM (NORM): x + add
    (add a row like x, or `parts` fp32 partial sums [parts, K] plus add_bias; None: x alone), rounded to x's
    dtype and stored into sum_out by program 0, then LayerNorm(ln_weight, ln_bias, eps) of it, rounded to x's
    dtype (ops/add_layer_norm's arithmetic; triton_norm_linear.py)."""

    add: Optional[torch.Tensor]
    parts: int
    add_bias: Optional[torch.Tensor]
    ln_weight: torch.Tensor
    ln_bias: Optional[torch.Tensor]
    eps: float
    sum_out: torch.Tensor


if triton is not None:
    @triton.jit
    def _tile(ptr, rows, rows_ok, K, k0, k_end, BK: tl.constexpr):
        """The [rows, BK] tile of a row-major [*, K] matrix at columns k0.., zero outside rows_ok and k_end."""
        rk = k0 + tl.arange(0, BK)
        return tl.load(ptr + rows[:, None] * K + rk[None, :], mask=rows_ok[:, None] & (rk < k_end)[None, :], other=0.0)

    @triton.jit
    def _decode_linear_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, K_SPLIT,
                              proj_ptr, sigma_ptr, wt_ptr, H, D, best_ptr, best_index_ptr,
                              add_ptr, add_bias_ptr, ln_w_ptr, ln_b_ptr, sum_ptr, eps,
                              HAS_BIAS: tl.constexpr, GELU: tl.constexpr, PDL: tl.constexpr, PARTIAL: tl.constexpr,
                              ARGMAX: tl.constexpr, NORM: tl.constexpr, ADD_PARTS: tl.constexpr,
                              HAS_ADD: tl.constexpr, HAS_ADD_BIAS: tl.constexpr, HAS_LN_BIAS: tl.constexpr,
                              PRELOAD: tl.constexpr, PROJ: tl.constexpr, DH: tl.constexpr, FD: tl.constexpr,
                              PREFETCH: tl.constexpr, STRIP: tl.constexpr, KW: tl.constexpr,
                              EARLY_TRIGGER: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # program (i, j): output columns [i BN, (i + 1) BN) over K [j K_SPLIT, (j + 1) K_SPLIT); PARTIAL:
        # its fp32 partial sum goes to y[j], without bias or GELU. PROJ: see triton_decode_linear_projected.
        # STRIP (one row): the program's whole [BN, K_SPLIT] weight strip (KW >= K_SPLIT columns wide) is
        # read into registers before the wait, and after it only x's row is read. NORM (STRIP over the whole K):
        # x's row is first added to and normalised (RowNorm says how; the norm's parameters read before the wait).
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        k_begin = tl.program_id(1) * K_SPLIT
        k_end = tl.minimum(K, k_begin + K_SPLIT)
        rm = tl.arange(0, BM)
        n_ok = rn < N
        m_ok = rm < M
        if HAS_BIAS:
            bias = tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        if PROJ:
            # columns [0, H DH) are q, [H DH, 2 H DH) k: a program there holds BN of head h's DH dims and
            # reads that head's W~ and sigma over them, before the wait (the kernels before write neither)
            col0 = tl.program_id(0) * BN
            is_proj = col0 < 2 * H * DH
            head = (tl.minimum(col0, 2 * H * DH - 1) % (H * DH)) // DH
            rj = col0 % DH + tl.arange(0, BN)
            rd = tl.arange(0, FD)
            d_ok = (rd < D) & is_proj
            w_feat = tl.load(wt_ptr + head * D * DH + rd[:, None] * DH + rj[None, :], mask=d_ok[:, None], other=0.0)
            sigma = tl.load(sigma_ptr + head * DH + rj, mask=is_proj & (rj < DH), other=0.0)
        # PREFETCH: the program's weight rows go to L2 before the wait (triton_decode_linear_projected says why)
        if PREFETCH:
            rows = w_ptr + tl.minimum(rn, N - 1).to(tl.int64) * K + k_begin
            row_bytes = tl.zeros([BN], dtype=tl.int32) + (k_end - k_begin) * 2
            tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2;\n mov.u32 $0, 0;", "=r,l,r",
                                      [rows, row_bytes], dtype=tl.int32, is_pure=False, pack=1)
        # PRELOAD: the weights of the first two K tiles are read before waiting for the kernel before, as
        # they do not depend on it (_launch says where)
        if STRIP:
            w_strip = _tile(w_ptr, rn, n_ok, K, k_begin, k_end, KW)
            if NORM:
                rk = tl.arange(0, KW)
                gamma = tl.load(ln_w_ptr + rk, mask=rk < K, other=0.0).to(tl.float32)
                if HAS_LN_BIAS:
                    beta = tl.load(ln_b_ptr + rk, mask=rk < K, other=0.0).to(tl.float32)
                if HAS_ADD_BIAS:
                    add_bias = tl.load(add_bias_ptr + rk, mask=rk < K, other=0.0).to(tl.float32)
        elif PRELOAD:
            w_first = _tile(w_ptr, rn, n_ok, K, k_begin, k_end, BK)
            w_second = _tile(w_ptr, rn, n_ok, K, k_begin + BK, k_end, BK)
        if PDL:
            if EARLY_TRIGGER:
                tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
            if not EARLY_TRIGGER:
                # at once: triggered after the K loop instead, the model's decode step was slower
                tl.extra.cuda.gdc_launch_dependents()
        if STRIP:
            rk = k_begin + tl.arange(0, KW)
            k_ok = rk < k_end
            x_in = tl.load(x_ptr + rk, mask=k_ok, other=0.0)
            x_row = x_in.to(tl.float32)
            if NORM:
                if HAS_ADD:
                    if ADD_PARTS > 0:
                        a = tl.load(add_ptr + rk, mask=k_ok, other=0.0)
                        for p in tl.static_range(1, ADD_PARTS):
                            a += tl.load(add_ptr + p * K + rk, mask=k_ok, other=0.0)
                        if HAS_ADD_BIAS:
                            a += add_bias
                        a = a.to(x_in.dtype)  # rounded once, as the split layer's output would be
                    else:
                        a = tl.load(add_ptr + rk, mask=k_ok, other=0.0)
                    x_row = (x_row + a.to(tl.float32)).to(x_in.dtype).to(tl.float32)
                    if tl.program_id(0) == 0:
                        tl.store(sum_ptr + rk, x_row.to(x_in.dtype), mask=k_ok)
                mean = tl.sum(x_row, axis=0) / K
                diff = tl.where(k_ok, x_row - mean, 0.0)
                rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=0) / K + eps)
                x_row = diff * rstd * gamma
                if HAS_LN_BIAS:
                    x_row += beta
                x_row = x_row.to(x_in.dtype).to(tl.float32)  # the norm's output as its own kernel would store it
            row = tl.sum(w_strip.to(tl.float32) * x_row[None, :], axis=1)
            acc = tl.where(rm[:, None] == 0, row[None, :], 0.0)  # row 0 of the [BM, BN] tile the epilogue takes
        else:
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            if PRELOAD:
                acc += tl.dot(_tile(x_ptr, rm, m_ok, K, k_begin, k_end, BK), tl.trans(w_first))
                acc += tl.dot(_tile(x_ptr, rm, m_ok, K, k_begin + BK, k_end, BK), tl.trans(w_second))
            for k0 in range(k_begin + (2 * BK if PRELOAD else 0), k_end, BK):
                acc += tl.dot(_tile(x_ptr, rm, m_ok, K, k0, k_end, BK), tl.trans(_tile(w_ptr, rn, n_ok, K, k0, k_end, BK)))
        out_ok = m_ok[:, None] & n_ok[None, :]
        if PARTIAL:
            tl.store(y_ptr + tl.program_id(1) * M * N + rm[:, None] * N + rn[None, :], acc, mask=out_ok)
        else:
            if HAS_BIAS:
                acc += bias[None, :]
            if GELU:
                acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
            y = acc.to(y_ptr.dtype.element_ty)
            tl.store(y_ptr + rm[:, None] * N + rn[None, :], y, mask=out_ok)
            if ARGMAX:
                # the strip's largest stored (rounded) output per row and its first column; NaN counts as +inf
                yf = y.to(tl.float32)
                yf = tl.where(n_ok[None, :], tl.where(yf != yf, float("inf"), yf), float("-inf"))
                best = tl.max(yf, axis=1)
                first = tl.min(tl.where(yf == best[:, None], rn[None, :], N), axis=1)
                slot = rm * tl.num_programs(0) + tl.program_id(0)
                tl.store(best_ptr + slot, best, mask=m_ok)
                tl.store(best_index_ptr + slot, first, mask=m_ok)
            if PROJ:
                # this tile's share of the projections of the decode step's random features, from the
                # stored (rounded) q or k: fp32 products, tf32x3 keeps them to fp32 accuracy
                xr = tl.where(m_ok[:, None], y.to(tl.float32), 0.0)
                partial = tl.dot(xr * sigma.to(tl.float32)[None, :], tl.trans(w_feat.to(tl.float32)),
                                 input_precision=PROJ_PRECISION)
                squares = tl.sum(xr * xr, axis=1)
                slot = ((rm * H + head) * 2 + col0 // (H * DH)) * (DH // BN) + (col0 % DH) // BN
                dst = proj_ptr + slot * (D + 1)
                tl.store(dst[:, None] + rd[None, :], partial, mask=(m_ok & is_proj)[:, None] & d_ok[None, :])
                tl.store(dst + D, squares, mask=m_ok & is_proj)


    @triton.jit
    def _argmax_finish_kernel(best_ptr, best_index_ptr, out_ptr, P, PDL: tl.constexpr, BP: tl.constexpr):
        # row m: the largest of its P strips' best outputs, the first column holding it (strips in order)
        m = tl.program_id(0)
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        rp = tl.arange(0, BP)
        ok = rp < P
        best = tl.load(best_ptr + m * P + rp, mask=ok, other=float("-inf"))
        index = tl.load(best_index_ptr + m * P + rp, mask=ok, other=2**31 - 1)
        top = tl.max(best, axis=0)
        tl.store(out_ptr + m, tl.min(tl.where(best == top, index, 2**31 - 1), axis=0).to(tl.int64))


def _pdl_capable(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 9


def decode_linear_kernel_supports(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """True when the kernel takes these inputs: Triton installed, CUDA (compute capability >= 8), fp16 or
    bf16 throughout, x [..., K] dense with at most 64 rows, weight [N, K] dense (under 2^31 elements), bias
    [N] or None."""
    if triton is None or not x.is_cuda or x.dtype not in _DTYPES or x.dim() < 1 or x.numel() == 0:
        return False
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1] or weight.dtype != x.dtype or weight.device != x.device:
        return False
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != x.dtype or not bias.is_contiguous()):
        return False
    if not (x.is_contiguous() and weight.is_contiguous()) or x.numel() // x.shape[-1] > MAX_ROWS:
        return False
    if weight.numel() >= 2**31 or MAX_ROWS * weight.shape[0] >= 2**31:  # the kernel's offsets are 32-bit
        return False
    return torch.cuda.get_device_capability(x.device)[0] >= 8


def _tiles(N: int, K: int, M: int = 1, whole_k: bool = True, shared_memory: int = 0):
    """(BN, BK, num_stages) for N output columns, a range of K per program and M rows, tuned on the H200 for
    1-64 rows and the widths of a d_model 1024 decoder (a range of K split to 1024 deep takes BK 128, faster in
    the model step than 256). From WIDE_K_TILE_MIN_ROWS rows a layer not split over K and 32 columns a program
    wide (q/k/v, FFN1) reads K 256 deep where the device's shared memory per block (`shared_memory` bytes) holds
    its stages (BENCHMARKS.md, "Linear-layer tiles at 64 rows")."""
    BN = 16 if N <= 1024 else 32 if N <= 8192 else 64
    BK = 256 if K >= 4096 else 128
    stages = 3 if BN == 64 else 4
    if BK == 128 and whole_k and BN == 32 and K >= 1024 and M >= WIDE_K_TILE_MIN_ROWS:
        BM = max(16, triton.next_power_of_2(M))
        if stages * (BM + BN) * 256 * 2 <= shared_memory:
            BK = 256
    return BN, min(BK, max(16, triton.next_power_of_2(K))), stages


def _shared_memory(device: torch.device) -> int:
    """Bytes of shared memory a block may use on this device (Triton's own figure; 0 where it cannot say)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SHARED_MEMORY:
        try:
            _SHARED_MEMORY[index] = int(triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"])
        except Exception:  # noqa: BLE001 - any failure only means no wide tile
            _SHARED_MEMORY[index] = 0
    return _SHARED_MEMORY[index]


def strip_columns(M: int, BN: int, k_range: int) -> int:
    """How many columns of weights a program of BN output columns over a range of k_range reads into registers
    before its wait (ONE_ROW_EARLY_READ "strip"): the range rounded up to a power of two, at one row where the
    strip holds at most STRIP_MAX_ELEMENTS; 0 where it reads two tiles or none. Without a programmatic
    dependent launch the same strip is read (there is no wait to read it before), so both sum alike."""
    width = triton.next_power_of_2(k_range)
    if ONE_ROW_EARLY_READ != "strip" or M != 1 or BN * width > STRIP_MAX_ELEMENTS:
        return 0
    return width


def strip_num_warps(BN: int, width: int) -> int:
    """Warps of a program holding a [BN, width] weight strip in registers (width 0: no strip)."""
    return 8 if BN * width > 16 * 1024 else 4


def _k_range(K: int, splits: int) -> int:
    """Length of each program's range of K for `splits` parts: a multiple of 128 (a K tile below 4096)."""
    return K if splits == 1 else triton.cdiv(triton.cdiv(K, splits), 128) * 128


def _launch(x, weight, bias, out, gelu: bool, k_range: int, projection=None, argmax=None,
            norm: Optional[RowNorm] = None) -> None:
    """projection: (proj, sigma, w_tilde) for triton_decode_linear_projected; argmax: (best, best_index) for
    triton_decode_linear_argmax; norm: x added to and normalised first (one row read as a whole strip)."""
    N, K = weight.shape
    M = x.numel() // K
    BN, BK, stages = _tiles(N, k_range, M, k_range >= K, _shared_memory(x.device))
    pdl = USE_PDL and _pdl_capable(x.device)
    # early weight reads pay off at a few rows; with more they compete with the kernel before for memory
    preload = pdl and M <= PRELOAD_MAX_ROWS
    strip_width = strip_columns(M, BN, k_range)
    early_trigger = strip_width > 0 and STRIP_TRIGGERS_BEFORE_WAIT and not (gelu and GELU_STRIP_TRIGGERS_AFTER_WAIT)
    # 16-bit weights whose rows start 16-byte aligned, as the bulk prefetch needs
    prefetch = (PREFETCH_PROJECTION_WEIGHTS and projection is not None and pdl and not preload and K % 8 == 0
                and weight.data_ptr() % 16 == 0)
    proj, sigma, w_tilde = projection if projection is not None else (out, out, out)
    H, D, DH = w_tilde.shape if projection is not None else (1, 1, BN)
    best, best_index = argmax if argmax is not None else (out, out)
    if norm is not None and (strip_width == 0 or k_range < K):
        raise ValueError("a row norm needs one row whose strip is read whole (strip_columns)")
    n = norm if norm is not None else RowNorm(None, 0, None, x, None, 0.0, x)
    _decode_linear_kernel[(triton.cdiv(N, BN), triton.cdiv(K, k_range))](
        x, weight, bias if bias is not None else weight, out, M, N, K, k_range, proj, sigma, w_tilde, H, D,
        best, best_index, n.add if n.add is not None else x, n.add_bias if n.add_bias is not None else x, n.ln_weight,
        n.ln_bias if n.ln_bias is not None else n.ln_weight, n.sum_out, n.eps,
        HAS_BIAS=bias is not None, GELU=gelu, PDL=pdl, PARTIAL=k_range < K, ARGMAX=argmax is not None,
        NORM=norm is not None, ADD_PARTS=n.parts, HAS_ADD=n.add is not None, HAS_ADD_BIAS=n.add_bias is not None,
        HAS_LN_BIAS=n.ln_bias is not None, PRELOAD=preload,
        PROJ=projection is not None, PREFETCH=prefetch, DH=DH, FD=max(16, triton.next_power_of_2(D)),
        STRIP=strip_width > 0, KW=max(strip_width, 16), EARLY_TRIGGER=early_trigger,
        BM=max(16, triton.next_power_of_2(M)), BN=BN, BK=BK,
        num_warps=strip_num_warps(BN, strip_width), num_stages=stages, launch_pdl=pdl)


def triton_decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         gelu: bool = False, norm: Optional[RowNorm] = None) -> torch.Tensor:
    """Same contract as naive_decode_linear (fp32 accumulation, one rounding), on x's stream; the caller
    has checked decode_linear_kernel_supports. norm: x is first added to and normalised (triton_norm_linear.py)."""
    y = torch.empty((*x.shape[:-1], weight.shape[0]), device=x.device, dtype=x.dtype)
    _launch(x, weight, bias, y, gelu, weight.shape[1], norm=norm)
    return y


def argmax_index_fits(x: torch.Tensor, out_index: torch.Tensor) -> bool:
    """True when out_index can receive the argmax of a linear layer of x: dense int64 of shape x.shape[:-1] on
    x's device."""
    return (out_index.dtype == torch.int64 and out_index.shape == x.shape[:-1] and out_index.is_contiguous()
            and out_index.device == x.device)


def triton_decode_linear_argmax(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                out_index: torch.Tensor, norm: Optional[RowNorm] = None) -> torch.Tensor:
    """triton_decode_linear's output y, and y.argmax(-1) written into out_index (int64, x.shape[:-1], dense, on
    x's device): the first column of each row's largest output, NaN counted as +inf. Two kernels: the linear
    layer, which also leaves each column strip's best output per row, then one program per row over those.
    The caller has checked decode_linear_kernel_supports. norm: x is first added to and normalised
    (triton_norm_linear.py)."""
    N, K = weight.shape
    M = x.numel() // K
    if not argmax_index_fits(x, out_index):
        raise ValueError(f"out_index must be a dense int64 tensor of shape {tuple(x.shape[:-1])} on {x.device}")
    y = torch.empty((*x.shape[:-1], N), device=x.device, dtype=x.dtype)
    strips = triton.cdiv(N, _tiles(N, K, M)[0])
    best = torch.empty((M, strips), device=x.device, dtype=torch.float32)
    best_index = torch.empty((M, strips), device=x.device, dtype=torch.int32)
    _launch(x, weight, bias, y, False, K, argmax=(best, best_index), norm=norm)
    pdl = USE_PDL and _pdl_capable(x.device)
    _argmax_finish_kernel[(M,)](best, best_index, out_index, strips, PDL=pdl,
                                BP=max(16, triton.next_power_of_2(strips)), num_warps=4, launch_pdl=pdl)
    return y


def decode_linear_projection_parts(x: torch.Tensor, weight: torch.Tensor, sigma: torch.Tensor,
                                   w_tilde: torch.Tensor) -> int:
    """How many partial projections per head triton_decode_linear_projected makes for these inputs (the
    head dimension over the kernel's column tile), or 0 where it cannot. It takes sigma [H, dh] and w_tilde
    [H, D, dh] (D <= 128) dense and of x's dtype and device, a weight with at least 2 H dh rows (q's, then
    k's) and dh a multiple of the tile, in at most MAX_PROJECTION_PARTS parts; x and weight themselves are
    for decode_linear_kernel_supports to check."""
    if triton is None or w_tilde.dim() != 3 or sigma.dim() != 2:
        return 0
    H, D, dh = w_tilde.shape
    N, K = weight.shape
    BN = _tiles(N, K, max(1, x.numel() // K))[0]  # the column tile _launch takes for x's rows
    if sigma.shape != (H, dh) or not (sigma.is_contiguous() and w_tilde.is_contiguous()) or not 1 <= D <= 128:
        return 0
    if any(t.dtype != x.dtype or t.device != x.device for t in (sigma, w_tilde)) or dh % BN or 2 * H * dh > N:
        return 0
    if dh // BN > MAX_PROJECTION_PARTS:
        return 0
    return dh // BN


def triton_decode_linear_projected(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                   sigma: torch.Tensor, w_tilde: torch.Tensor,
                                   norm: Optional[RowNorm] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The q/k/v projection of a decode step with its random-feature projections made in the same kernel.

    x [..., K], weight [N, K] whose first H dh rows make q and next H dh make k (H, D, dh = w_tilde's shape) ->
    y (triton_decode_linear's output) and proj fp32 [M, H, 2, P, D + 1], M = x's rows, P =
    decode_linear_projection_parts: part m of q (index 0) or k (1) holds, over the m-th range of dh / P head
    dims j, sum_j W~[h, d, j] sigma[h, j] x_j at d < D and sum_j x_j^2 at D, x being the stored (rounded) y.
    The decode step kernel (ops/decode_attention, `proj`) adds the parts and normalises. The caller has
    checked decode_linear_kernel_supports and that P > 0. norm: x is first added to and normalised
    (triton_norm_linear.py).

    Above PRELOAD_MAX_ROWS rows each program asks for its weight rows into L2 before waiting for the kernel
    before (cp.async.bulk.prefetch.L2, Hopper): the decode step launched right after this kernel's wait
    streams the state of its resident blocks at once, and the GEMM's weight loads would queue behind those
    (only here: the same prefetch in every decode linear kernel was slower; BENCHMARKS.md).
    """
    H, D, dh = w_tilde.shape
    parts = decode_linear_projection_parts(x, weight, sigma, w_tilde)
    if parts == 0:
        raise ValueError("the projection epilogue does not take these inputs (decode_linear_projection_parts)")
    K = weight.shape[1]
    M = x.numel() // K
    y = torch.empty((*x.shape[:-1], weight.shape[0]), device=x.device, dtype=x.dtype)
    proj = torch.empty((M, H, 2, parts, D + 1), device=x.device, dtype=torch.float32)
    _launch(x, weight, bias, y, False, K, (proj, sigma, w_tilde), norm=norm)
    return y, proj


def decode_linear_splits(weight: torch.Tensor) -> int:
    """How many parts triton_decode_linear_partials splits K into for this weight [N, K]: enough programs
    to keep the device's memory busy when the output has few column strips (H200, d_model 1024: the FFN's
    second layer, K 4096, and the attention's output projection, K 1024, run 64 strips each: 4 and 2
    parts)."""
    N, K = weight.shape
    strips = triton.cdiv(N, _tiles(N, K)[0])
    splits = max(1, min(SPLIT_K_MAX, K // SPLIT_K_MIN_RANGE, 256 // strips))
    return triton.cdiv(K, _k_range(K, splits))


def triton_decode_linear_partials(x: torch.Tensor, weight: torch.Tensor, splits: int) -> torch.Tensor:
    """x [..., K], weight [N, K] -> fp32 [S, ..., N] with S = splits: the partial sums of x W^T over S
    consecutive ranges of K (no bias). Their sum, plus a bias and rounded, is triton_decode_linear's
    output; the residual norm after the FFN adds them up itself (ops/add_layer_norm), which saves
    launching a reduction. The caller has checked decode_linear_kernel_supports; `splits` comes from
    decode_linear_splits (>= 2)."""
    N, K = weight.shape
    k_range = _k_range(K, splits)
    if splits < 2 or triton.cdiv(K, k_range) != splits:
        raise ValueError(f"cannot split K = {K} into {splits} parts (use decode_linear_splits)")
    y = torch.empty((splits, *x.shape[:-1], N), device=x.device, dtype=torch.float32)
    _launch(x, weight, None, y, False, k_range)
    return y
