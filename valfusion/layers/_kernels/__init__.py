"""The fused kernels behind the composite transformer and its parts, and when they run.

Each file holds one kernel: a function of the layer module and its token-major inputs,
built on a hand-written ``torch.autograd.Function``, with the formula it computes and the
reference (the layer's ``forward``) it must equal. The layers call :func:`plan` once per
call; ``None`` means: run the reference.

* ``token_projection.py``: ``F_c``'s first 1x1 conv as one GEMM onto the text term.
* ``grouped_qkv.py``: the q/k/v maps of all heads as one batched GEMM, then SDPA.
* ``gated_residual.py``: ``r * (a ⊗ s) [+ t W^T + b]`` in one buffer (preservation and mix).
* ``composite.py``: the composite transformer as one pass over token-major memory.
* ``gemm.py``: a token-major linear map and its gradients as oneDNN 1x1 convolutions, the
  GEMM route on CPUs where oneDNN outruns the BLAS (:func:`cpu_gemm_route`).
* ``triton_gates.py``: the gated residual's elementwise part, forward and backward, as Triton
  kernels (``Plan.elementwise == "triton"``; triton is imported on first use only).

Autocast: every ``Function`` is applied through :func:`autocast_apply`, which wraps it in
:func:`torch.amp.custom_fwd` / :func:`torch.amp.custom_bwd` for the active device and
autocast dtype: its floating inputs are cast to that dtype (as autocast casts a
convolution's), so its outputs have that dtype, as :class:`torch.nn.Conv2d`'s do.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import torch
from torch import Tensor

from valfusion._io import atomic_write, cache_dir
from valfusion.layers._kernels import triton_gates
from valfusion.layers.backend import get_backend

__all__ = [
    "CPU_GEMM_ENV_VAR",
    "DEVICE_PLANS",
    "ONEDNN_MIN_SPEEDUP",
    "PER_SAMPLE_MIN_TOKENS",
    "ROUTE_CACHE_FILE",
    "TOKEN_MAJOR",
    "Elementwise",
    "Plan",
    "autocast_apply",
    "cpu_gemm_route",
    "device_plan",
    "is_channel_major",
    "like_memory_format",
    "plan",
    "runnable",
]


GemmRoute = Literal["blas", "onednn"]
"""How the fused kernels compute their matrix products on token-major memory: ``"blas"``
(``torch.mm`` and friends: MKL on x86 CPUs, cuBLAS on CUDA) or ``"onednn"`` (1x1
convolutions on the same memory, ``gemm.py``)."""
Elementwise = Literal["torch", "triton"]
"""Who computes the gated residual's elementwise part (``r a s``, its gradients and their
reductions): torch ops, or the Triton kernels of ``triton_gates.py``."""


@dataclass(frozen=True)
class Plan:
    """How the fused kernels lay out a ``(B, C, H, W)`` map, compute their products, and
    who computes the gates.

    Attributes:
        per_sample_min_tokens: from this many positions on, an NCHW map is read and written
            in place by one GEMM per sample on its ``(C, N)`` matrices; smaller maps (and
            every map when ``None``) are transposed once to token-major ``(B N, C)`` memory
            on the way in and once on the way out, and every product is one large GEMM.
        gemm: the route of the token-major products (:data:`GemmRoute`); ``"onednn"``
            implies ``per_sample_min_tokens=None``.
        elementwise: ``"triton"``: the gated residual's product and gradients (and their
            reductions) in one Triton kernel each way; :func:`plan` turns it into
            ``"torch"`` (torch ops) where Triton cannot run (:func:`runnable`).
    """

    per_sample_min_tokens: int | None
    gemm: GemmRoute = "blas"
    elementwise: Elementwise = "torch"


#: On the two-core CPU, in fp32, the transposes of an NCHW map of this many positions cost
#: more than per-sample GEMMs lose to one large GEMM (``benchmarks/results/composite_limits.md``).
PER_SAMPLE_MIN_TOKENS = 256

TOKEN_MAJOR = Plan(per_sample_min_tokens=None)
"""One transpose each way, single large GEMMs: the layout with no per-sample loops."""

DEVICE_PLANS: dict[tuple[str, torch.dtype | None], Plan] = {
    # Measured on CPU (benchmarks/results/composite*.md): the fused kernels beat the
    # reference composition at all three VAL levels, per-sample GEMMs on large NCHW maps.
    ("cpu", None): Plan(per_sample_min_tokens=PER_SAMPLE_MIN_TOKENS),
    # bf16 autocast on CPU (two cores, batch 16, fwd+bwd, one run of 3 alternating rounds):
    # token-major was 1.12x faster at 256 positions (1024 channels), per-sample 1.04x
    # faster at 1024 positions (512 channels). A one-off comparison of the two plans, not
    # a committed results file: bf16 on CPU is not in benchmarks/results/ yet.
    ("cpu", torch.bfloat16): Plan(per_sample_min_tokens=1024),
    # NOT YET MEASURED on a GPU. Per-sample weight-gradient GEMMs on channel-major maps lost
    # 1.7-1.9x to the official graph's preservation on an H100 (fp32), so CUDA takes the
    # token-major layout: one transpose each way, single large GEMMs, and SDPA's fused
    # kernels; the gates and their gradients in one Triton kernel each way where triton is
    # importable (else torch ops). Which backend is faster there (the reference, this, this
    # with torch's elementwise ops) is still to be measured
    # (benchmarks/scripts/check_cuda_kernels.py).
    ("cuda", None): Plan(per_sample_min_tokens=None, elementwise="triton"),
}
"""``"auto"``'s choice per device type and compute dtype (the autocast dtype under
autocast, else the input's): the plan of the fused kernels; ``(device, None)`` covers the
dtypes without an entry of their own, and a device without any entry runs the reference.

========  ==========  ====================================================  ==========  ============
device    dtype       an NCHW map                                           gates       evidence
========  ==========  ====================================================  ==========  ============
cpu       bfloat16    per-sample GEMMs in place from 1024 positions, else   torch       one-off run
                      one transpose each way
cpu       other       per-sample GEMMs in place from 256 positions, else    torch       ``results/``
                      one transpose each way
cuda      any         one transpose each way, single large GEMMs            triton (*)  not measured
other     any         the reference (``"fused"``: as on cuda, torch ops)    -           -
========  ==========  ====================================================  ==========  ============

gates: who computes the gated residual's elementwise part (``Plan.elementwise``). (*) Where
triton is importable and the GPU has compute capability 8.0+, else torch ops
(:func:`runnable`). The Triton kernels are tested on the CPU under Triton's interpreter only.

A ``channels_last`` map and the map view of tokens are token-major already: no transpose.
"""


def device_plan(device_type: str, dtype: torch.dtype) -> Plan | None:
    """The :data:`DEVICE_PLANS` entry for a device type and compute dtype, if any."""
    return DEVICE_PLANS.get((device_type, dtype), DEVICE_PLANS.get((device_type, None)))


def plan(x: Tensor) -> Plan | None:
    """The fused kernels' plan for a layer input ``x``, or ``None`` to run the reference.

    The reference runs whenever the backend is ``"reference"``; for an empty ``x`` (plain
    ops handle zero-size tensors); and under :func:`torch.compile`, :func:`torch.export`
    and :func:`torch.jit.trace`: the compiler fuses the plain composition itself, and the
    tracer would record the kernels' ``out=`` products without their writes. Otherwise
    ``"fused"`` takes the device's plan (token-major on devices without one) and
    ``"auto"`` the :data:`DEVICE_PLANS` entry, the reference on devices without one. On a
    CPU in fp32 either takes the products through oneDNN, token-major, where
    :func:`cpu_gemm_route` says so.

    Args:
        x: a layer's image input (a map, or the map view of its tokens).

    Returns:
        A :class:`Plan` that runs on ``x``'s device (:func:`runnable`), or ``None``.
    """
    backend = get_backend()
    if (
        backend == "reference"
        or x.numel() == 0
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
    ):
        return None
    device = x.device.type
    autocast = device in ("cpu", "cuda") and torch.is_autocast_enabled(device)
    dtype = torch.get_autocast_dtype(device) if autocast else x.dtype
    chosen = device_plan(device, dtype)
    if backend == "fused" and chosen is None:
        chosen = TOKEN_MAJOR
    if chosen is None:
        return None
    if device == "cpu" and dtype == torch.float32 and cpu_gemm_route() == "onednn":
        chosen = dataclasses.replace(chosen, per_sample_min_tokens=None, gemm="onednn")
    return runnable(chosen, x.device)


def runnable(chosen: Plan, device: torch.device) -> Plan:
    """``chosen``, with torch's elementwise ops in place of Triton's where the Triton kernels
    cannot run on ``device`` (:func:`triton_gates.supports`: triton not importable, a GPU
    older than compute capability 8.0, or the CPU outside Triton's interpreter)."""
    if chosen.elementwise == "triton" and not triton_gates.supports(device):
        return dataclasses.replace(chosen, elementwise="torch")
    return chosen


CPU_GEMM_ENV_VAR = "VALFUSION_CPU_GEMM"
"""The environment variable that fixes :func:`cpu_gemm_route`: ``"blas"``, ``"onednn"``, or
``"measure"`` (unset or empty: ``"measure"``). Read on the first fused fp32 call on a CPU."""

ONEDNN_MIN_SPEEDUP = 1.3
"""How much faster oneDNN must measure than the BLAS for :func:`cpu_gemm_route` to take it.
Measured ratios of one forward product were 2.0 (AMD EPYC, AVX-512) and 0.8 to 0.9 (AMD EPYC,
AVX2); the margin keeps a
CPU where the two are close on the BLAS, so that two processes (a run and its resume) do
not choose differently by noise."""

_MEASURE_SHAPE = (4, 256, 512, 512)
"""``(B, N, K, O)`` of the product timed by :func:`cpu_gemm_route`: VAL's mid level's token
count, 1.6 GFLOP per forward + two gradients (about 16 ms per route at 100 GFLOP/s)."""


@functools.cache
def cpu_gemm_route() -> GemmRoute:
    """The fused kernels' GEMM route for fp32 on this CPU: ``"onednn"`` or ``"blas"``.

    Matrix products go to the BLAS (MKL in PyTorch's x86 wheels), 1x1 convolutions to
    oneDNN, and which is faster depends on the CPU: on an AMD EPYC with AVX-512 oneDNN ran
    a ``2048^3`` product at 204 GFLOP/s and MKL at 102, on an AMD EPYC with AVX2 at 0.8 to
    0.9 of MKL's rate (``benchmarks/results/cpu_gemm_paths.md``). So, once per machine
    (see below), this times one token-major product, forward and both gradients,
    ``(B, N, K, O) = (4, 256, 512, 512)``,
    each route twice, alternately, at the current thread count, and takes oneDNN only if
    its best time beats the BLAS's by :data:`ONEDNN_MIN_SPEEDUP`. The choice is kept in
    valfusion's cache folder (:data:`ROUTE_CACHE_FILE`, per CPU model, capability, torch
    version and thread count): later processes on the machine read it instead of
    measuring, so a run and its resume take the same route (``VALFUSION_CACHE_DIR=off``:
    every process measures). The environment variable
    :data:`CPU_GEMM_ENV_VAR` (``VALFUSION_CPU_GEMM``) = ``blas`` or ``onednn`` skips the
    measurement (for bit-identical runs across machines, or a comparison).

    Returns:
        ``"onednn"`` or ``"blas"`` (always ``"blas"`` without oneDNN).

    Raises:
        ValueError: on another value of ``VALFUSION_CPU_GEMM``.
    """
    choices = (*get_args(GemmRoute), "measure")
    value = os.environ.get(CPU_GEMM_ENV_VAR) or "measure"
    if value not in choices:
        raise ValueError(f"{CPU_GEMM_ENV_VAR}: expected one of {choices}, got {value!r}")
    if value != "measure":
        return cast(GemmRoute, value)
    if not torch.backends.mkldnn.is_available():
        return "blas"
    key = _machine_key()
    cached = _read_route_cache().get(key)
    if cached in get_args(GemmRoute):
        return cast(GemmRoute, cached)
    route = _measured_route()
    _write_route_cache(key, route)
    return route


ROUTE_CACHE_FILE = "cpu-gemm-route.json"
"""The file in valfusion's cache folder (:func:`valfusion._io.cache_dir`) that keeps each
machine's measured route, ``{machine key: route}``: a run and its resume (or two workers)
on one machine take the same route, so their results stay bit-identical."""


def _machine_key() -> str:
    """What the measured route depends on: the CPU model, its capability, torch and the
    thread count."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            model = next((line.split(":", 1)[1].strip() for line in info
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return (f"{model} | {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__}"
            f" | {torch.get_num_threads()} threads")


def _read_route_cache() -> dict[str, object]:
    folder = cache_dir()
    if folder is None:
        return {}
    try:
        routes = json.loads((folder / ROUTE_CACHE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return routes if isinstance(routes, dict) else {}


def _write_route_cache(key: str, route: GemmRoute) -> None:
    folder = cache_dir()
    if folder is None:
        return
    routes = {**_read_route_cache(), key: route}
    try:
        atomic_write(folder / ROUTE_CACHE_FILE,
                     lambda f: f.write(json.dumps(routes, indent=1).encode()))
    except OSError:  # a read-only home: measure again in the next process
        pass


def _measured_route() -> GemmRoute:
    """Time one product both ways (see :func:`cpu_gemm_route`) and return the route."""
    from valfusion.layers._kernels import gemm

    batch, n, k, o = _MEASURE_SHAPE
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, n, k, generator=generator)
    w = torch.randn(o, k, generator=generator)
    g = torch.randn(batch, n, o, generator=generator)
    x2d, g2d = x.view(-1, k), g.view(-1, o)

    def blas() -> None:
        torch.mm(x2d, w.t())
        torch.mm(g2d, w)
        torch.mm(g2d.t(), x2d)

    def onednn() -> None:
        gemm.linear(x, w)
        gemm.linear_backward(g, x, w)

    best = {"blas": float("inf"), "onednn": float("inf")}
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        blas()  # first-call set-up outside the timing
        onednn()
        for _ in range(2):
            for name, step in (("blas", blas), ("onednn", onednn)):
                start = time.perf_counter()
                step()
                best[name] = min(best[name], time.perf_counter() - start)
    return "onednn" if best["blas"] >= ONEDNN_MIN_SPEEDUP * best["onednn"] else "blas"


def is_channel_major(tokens: Tensor) -> bool:
    """Whether ``(B, N, C)`` ``tokens`` are the token view of a contiguous NCHW map
    (``C > 1``, ``N > 1``): memory ``(B, C, N)``."""
    if tokens.dim() != 3:
        return False
    _, n, c = tokens.shape
    return n > 1 and c > 1 and tokens.stride() == (n * c, 1, n)


def like_memory_format(x: Tensor, like: Tensor) -> Tensor:
    """``x`` (a ``(B, C, H, W)`` map) in ``like``'s memory: token-major (``channels_last``)
    when ``like``'s channels have unit stride, as for a ``channels_last`` map or the map
    view of a ``(B, N, C)`` token sequence; else contiguous NCHW. ``x`` itself when it
    already has that layout."""
    if like.shape[1] > 1 and like.shape[2] * like.shape[3] > 1 and like.stride(1) == 1:
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def autocast_apply(function: type[torch.autograd.Function], *args: Any) -> Any:
    """``function.apply(*args)``, under autocast through :func:`torch.amp.custom_fwd`
    (inputs cast to the autocast dtype, autocast off inside) and :func:`torch.amp.custom_bwd`.

    Args:
        function: a ``torch.autograd.Function`` whose forward takes same-dtype inputs.
        *args: its inputs; the first is a tensor on the device whose autocast state counts.

    Returns:
        What ``function.apply`` returns.
    """
    device_type = args[0].device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return function.apply(*args)
    dtype = torch.get_autocast_dtype(device_type)
    return _under_autocast(function, device_type, dtype).apply(*args)


@functools.cache
def _under_autocast(
    function: type[torch.autograd.Function], device_type: str, dtype: torch.dtype
) -> type[torch.autograd.Function]:
    """``function`` with its forward and backward decorated for autocast on one device."""
    forward = torch.amp.custom_fwd(function.forward, device_type=device_type, cast_inputs=dtype)
    backward = torch.amp.custom_bwd(function.backward, device_type=device_type)
    return type(
        function.__name__,
        (function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)},
    )
