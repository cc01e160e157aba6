"""Every backend computes the reference's function: the switch, autocast, and property tests.

Backends under test, all on CPU tensors:

- ``reference``: each layer's ``forward``, the plain composition;
- ``fused``: the kernels with the CPU plans (fp32: NCHW maps of 256+ positions in place;
  bf16 autocast: 1024+);
- ``fused/per-sample``: the kernels reading every NCHW map in place by per-sample GEMMs
  (the CPU plan's large-map layout, forced on the small maps drawn here);
- ``fused/token-major``: the kernels with CUDA's plan (one transpose each way, no
  per-sample loops), forced on CPU.

Tolerances (fp32). Both implementations are compositions of the same operations in other
orders (sums split differently, products fused into one buffer), each backward stable:
its result is the exact function of data perturbed by a few ``eps32`` relative (each
rounding error is bounded by ``gamma_n * sum |terms|``, Higham). Its forward error is
then about the function's sensitivity to such perturbations, which depends on the data
(batch norm over two values, gradients that cancel). Two measurements of that scale on
the drawn data: the fp32 reference's own distance to an fp64 run of the reference
(``ref_err``), and the change of the fp64 reference when every input and parameter is
perturbed by a random relative ``eps32`` (``sens``). Every backend must lie within

    ||got32 - truth64||_inf <= 4 ref_err + 16 sens + 16 eps32 ||truth64||_inf

for the output and for every gradient (input and parameters).

Tolerance (bf16 autocast). Rounding GEMM operands to bf16 (unit roundoff ``u = 2^-8``)
changes each of the about six chained products by up to a few ``u`` relative, so the
output may move by ``~6 * 2 u = 0.047`` of its scale; every backend must lie within
``2 ||ref_bf16 - ref32||_inf + 8 u ||ref32||_inf`` of the fp32 reference, i.e. as close
as the bf16 reference itself, with a margin.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from einops import rearrange
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import valfusion
from valfusion.layers import (
    CompositeTransformer,
    JointAttentionalPreservation,
    SelfAttentionalTransformation,
    TextImageFusion,
    _kernels,
    get_backend,
    set_backend,
    use_backend,
)
from valfusion.layers._kernels.gated_residual import _GatedResidual
from valfusion.layers._kernels.grouped_qkv import _GroupedQKVProjection
from valfusion.layers._kernels.token_projection import _TokenProjection

ROOT = Path(__file__).resolve().parents[1]
EPS32 = torch.finfo(torch.float32).eps
BF16_U = 2.0**-8
BACKENDS = ("reference", "fused", "fused/per-sample", "fused/token-major", "fused/onednn")
PLANS = {
    "fused/per-sample": _kernels.Plan(per_sample_min_tokens=1),
    "fused/token-major": _kernels.DEVICE_PLANS[("cuda", None)],
    "fused/onednn": _kernels.Plan(per_sample_min_tokens=None, gemm="onednn"),
}


@contextmanager
def backend(name: str) -> Iterator[None]:
    """Run under one of :data:`BACKENDS` (a fused variant other than ``fused`` sets the
    CPU plan it names, for every dtype, and its GEMM route in fp32, whatever
    :func:`cpu_gemm_route` measures on this CPU)."""
    if name == "reference":
        with use_backend("reference"):
            yield
        return
    saved = dict(_kernels.DEVICE_PLANS)
    measured = _kernels.cpu_gemm_route
    if name in PLANS:
        for key in [key for key in _kernels.DEVICE_PLANS if key[0] == "cpu"]:
            _kernels.DEVICE_PLANS[key] = PLANS[name]
        route = PLANS[name].gemm
        _kernels.cpu_gemm_route = lambda: route  # type: ignore[assignment]
    try:
        with use_backend("fused"):
            yield
    finally:
        _kernels.DEVICE_PLANS.update(saved)
        _kernels.cpu_gemm_route = measured  # type: ignore[assignment]


def _randomise_batch_norm(module: nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def _custom_functions(output: Tensor) -> set[str]:
    """Names of the autograd nodes of our kernels in ``output``'s graph."""
    names, seen, stack = set(), set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    kernels = ("_TokenProjection", "_GroupedQKVProjection", "_GatedResidual")
    return {n for n in names if n.startswith(kernels)}


# --- the switch ---------------------------------------------------------------------


def test_backend_defaults_to_auto_and_is_exported_at_the_top_level() -> None:
    assert get_backend() == "auto"
    assert valfusion.set_backend is set_backend
    assert {"get_backend", "set_backend", "use_backend"} <= set(valfusion.__all__)


def test_use_backend_restores_the_previous_backend_even_on_error() -> None:
    with pytest.raises(RuntimeError, match="inside"):
        with use_backend("reference"):
            assert get_backend() == "reference"
            raise RuntimeError("inside")
    assert get_backend() == "auto"


def test_an_unknown_backend_name_is_rejected_with_the_choices() -> None:
    choices = r"\('auto', 'fused', 'reference'\)"
    with pytest.raises(ValueError, match=rf"name: expected one of {choices}, got 'fast'"):
        set_backend("fast")  # type: ignore[arg-type]
    assert get_backend() == "auto"


def _import_with_env(value: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VALFUSION_LAYERS_BACKEND=value, PYTHONPATH=str(ROOT))
    code = "import valfusion.layers as l; print(l.get_backend())"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_environment_variable_sets_the_backend_at_import() -> None:
    done = _import_with_env("reference")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "reference"


def test_a_bad_environment_variable_names_itself_the_choices_and_the_value() -> None:
    done = _import_with_env("fastest")
    assert done.returncode != 0
    assert (
        "ValueError: VALFUSION_LAYERS_BACKEND: expected one of ('auto', 'fused', "
        "'reference'), got 'fastest'"
    ) in done.stderr


def test_reference_backend_runs_no_custom_autograd_function() -> None:
    block = CompositeTransformer(8, 5).train()
    image, text = torch.randn(2, 8, 3, 4, requires_grad=True), torch.randn(2, 5)
    with use_backend("reference"):
        assert _custom_functions(block(image, text)) == set()
    with use_backend("fused"):
        assert _custom_functions(block(image, text))


def test_fused_attn_false_leaves_no_kernel_on_under_the_reference_backend() -> None:
    # It used to choose only the attention formula while the gated residual's custom
    # autograd function stayed on; now fused_attn picks the attention, the backend the rest.
    block = CompositeTransformer(8, 5, fused_attn=False).train()
    image, text = torch.randn(2, 8, 3, 4, requires_grad=True), torch.randn(2, 5)
    with use_backend("reference"):
        assert _custom_functions(block(image, text)) == set()


class _RecordShapes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if isinstance(out, Tensor):
            self.ops.append((str(func.overloadpacket), tuple(out.shape)))
        return out


@pytest.mark.parametrize("name", ["reference", "fused"])
def test_fused_attn_false_builds_the_attention_matrix_in_every_backend(name: str) -> None:
    block = CompositeTransformer(8, 5, fused_attn=False).train()
    image, text = torch.randn(2, 8, 3, 4), torch.randn(2, 5)
    with backend(name), _RecordShapes() as recorder:
        block(image, text)
    assert any(shape[-2:] == (12, 12) for _, shape in recorder.ops)


def _gemm_count(batch: int, name: str, *, autocast: bool = False) -> int:
    block = CompositeTransformer(8, 5).train()
    with torch.no_grad():
        block.w_sa.fill_(0.5)
    image = torch.randn(batch, 8, 16, 16, requires_grad=True)  # 256 positions, NCHW
    with backend(name), _RecordShapes() as recorder:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = block(image, torch.randn(batch, 5))
        out.float().sum().backward()
    return sum(op in ("aten.mm", "aten.addmm", "aten.addmm_") for op, _ in recorder.ops)


def test_token_major_plan_runs_no_per_sample_gemms_on_a_large_nchw_map() -> None:
    # CUDA's plan, forced on CPU: the number of GEMMs does not grow with the batch.
    assert _gemm_count(2, "fused/token-major") == _gemm_count(4, "fused/token-major")


def test_cpu_plan_reads_a_large_nchw_map_by_per_sample_gemms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Guards the test above: the counter does see the per-sample loop of the CPU plan (on
    # its BLAS route, whatever this CPU measures: the oneDNN route is token-major).
    monkeypatch.setattr(_kernels, "cpu_gemm_route", lambda: "blas")
    assert _gemm_count(4, "fused") > _gemm_count(2, "fused")


def test_cpu_plan_under_bf16_autocast_transposes_a_256_position_map() -> None:
    # Measured: under bf16 autocast per-sample GEMMs only pay from 1024 positions on.
    assert _gemm_count(2, "fused", autocast=True) == _gemm_count(4, "fused", autocast=True)


class _RecordAll(TorchDispatchMode):
    """Every op's name and its output shapes (a tuple of them for a tuple output)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        shapes = tuple(tuple(o.shape) if isinstance(o, Tensor) else None for o in outs)
        self.ops.append((str(func.overloadpacket), shapes))
        return out


def test_onednn_route_computes_every_token_level_product_as_a_convolution() -> None:
    """With ``gemm="onednn"`` no BLAS product of the fused composite has the ``B N`` token
    rows, forward or backward: ``F_c``, the q/k/v maps and ``F_proj`` are 1x1 convolutions
    of the ``(B, C, N, 1)`` token maps, and so are their input gradients (by ``W^T``); only
    the weight gradients, reductions over the tokens, are BLAS products."""
    block = CompositeTransformer(8, 5).train()
    with torch.no_grad():
        block.w_sa.fill_(0.5)
    image = torch.randn(2, 8, 16, 16, requires_grad=True)  # B N = 512 tokens
    products = ("aten.mm", "aten.addmm", "aten.addmm_", "aten.bmm", "aten.baddbmm",
                "aten.baddbmm_")

    def record(name: str) -> list[tuple[str, tuple]]:
        with backend(name), _RecordAll() as recorder:
            block(image, torch.randn(2, 5)).sum().backward()
        return recorder.ops

    def token_products(ops: list[tuple[str, tuple]]) -> list[tuple[str, tuple]]:
        return [(op, shapes) for op, shapes in ops
                if op in products and any(512 in s or s[1:2] == (512,) for s in shapes if s)]

    assert token_products(record("fused/token-major"))  # the counter sees BLAS's products
    ops = record("fused/onednn")
    assert token_products(ops) == []
    token_maps = [(op, shapes) for op, shapes in ops
                  if op.startswith("aten.convolution") and shapes[0] and shapes[0][2:] == (256, 1)]
    # F_c, q/k/v and F_proj, forward and input gradient.
    assert [op for op, _ in token_maps] == ["aten.convolution"] * 6


@pytest.fixture
def fresh_gemm_route(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """``cpu_gemm_route`` measured (or read) anew in the test, and forgotten after it."""
    _kernels.cpu_gemm_route.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    _kernels.cpu_gemm_route.cache_clear()


@pytest.mark.parametrize("route", ["blas", "onednn"])
def test_the_environment_variable_pins_the_cpu_gemm_route(
    fresh_gemm_route: pytest.MonkeyPatch, route: str
) -> None:
    fresh_gemm_route.setenv("VALFUSION_CPU_GEMM", route)
    assert _kernels.cpu_gemm_route() == route
    x = torch.randn(2, 8, 4, 4)
    with use_backend("auto"):
        fp32 = _kernels.plan(x)
        fp64 = _kernels.plan(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = _kernels.plan(x)
    assert fp32 is not None and fp64 is not None and bf16 is not None
    assert fp32.gemm == route
    # oneDNN's route is token-major: no per-sample products on NCHW maps.
    assert fp32.per_sample_min_tokens == (None if route == "onednn" else 256)
    # Only fp32 products take it (bf16 matrix products are oneDNN's already; fp64 has none).
    assert fp64.gemm == "blas" and bf16.gemm == "blas"


def test_a_bad_cpu_gemm_route_names_the_variable_the_choices_and_the_value(
    fresh_gemm_route: pytest.MonkeyPatch,
) -> None:
    fresh_gemm_route.setenv("VALFUSION_CPU_GEMM", "mkl")
    with pytest.raises(ValueError) as error:
        _kernels.cpu_gemm_route()
    assert str(error.value) == (
        "VALFUSION_CPU_GEMM: expected one of ('blas', 'onednn', 'measure'), got 'mkl'"
    )


def test_the_measured_cpu_gemm_route_is_chosen_once_per_process(
    fresh_gemm_route: pytest.MonkeyPatch,
) -> None:
    fresh_gemm_route.delenv("VALFUSION_CPU_GEMM", raising=False)
    first = _kernels.cpu_gemm_route()
    assert first in ("blas", "onednn")
    fresh_gemm_route.setenv("VALFUSION_CPU_GEMM", "onednn" if first == "blas" else "blas")
    assert _kernels.cpu_gemm_route() == first  # cached: a run does not change route midway


def test_the_measured_route_is_kept_per_machine_in_the_cache_folder(
    fresh_gemm_route: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The first process measures and writes ``{machine key: route}``; a later one (the
    in-process cache cleared) reads the file instead of measuring: the route it returns is
    the file's, even one the measurement would not give."""
    fresh_gemm_route.delenv("VALFUSION_CPU_GEMM", raising=False)
    fresh_gemm_route.setenv("VALFUSION_CACHE_DIR", str(tmp_path))
    measured = _kernels.cpu_gemm_route()
    path = tmp_path / _kernels.ROUTE_CACHE_FILE
    routes = json.loads(path.read_text())
    assert list(routes.values()) == [measured]
    (key,) = routes
    assert torch.backends.cpu.get_cpu_capability() in key and torch.__version__ in key
    other = "onednn" if measured == "blas" else "blas"
    path.write_text(json.dumps({key: other}))
    _kernels.cpu_gemm_route.cache_clear()
    assert _kernels.cpu_gemm_route() == other  # read, not measured


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"KEY": "mkl"}'])
def test_an_unreadable_route_cache_is_measured_again_and_rewritten(
    fresh_gemm_route: pytest.MonkeyPatch, tmp_path: Path, content: str
) -> None:
    fresh_gemm_route.delenv("VALFUSION_CPU_GEMM", raising=False)
    fresh_gemm_route.setenv("VALFUSION_CACHE_DIR", str(tmp_path))
    path = tmp_path / _kernels.ROUTE_CACHE_FILE
    path.write_text(content.replace("KEY", _kernels._machine_key()))
    route = _kernels.cpu_gemm_route()
    assert route in ("blas", "onednn")
    assert json.loads(path.read_text())[_kernels._machine_key()] == route


def test_no_route_cache_is_written_with_the_cache_off(
    fresh_gemm_route: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fresh_gemm_route.delenv("VALFUSION_CPU_GEMM", raising=False)
    fresh_gemm_route.setenv("VALFUSION_CACHE_DIR", "off")
    fresh_gemm_route.setenv("HOME", str(tmp_path))
    fresh_gemm_route.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _kernels.cpu_gemm_route() in ("blas", "onednn")
    assert list(tmp_path.rglob("*")) == []


# --- autocast -----------------------------------------------------------------------


def _part_calls() -> dict[str, tuple[nn.Module, Callable[[nn.Module, Tensor], Tensor]]]:
    text = torch.randn(2, 5)
    fused = torch.randn(2, 8, 3, 4)
    return {
        "composite": (CompositeTransformer(8, 5), lambda m, x: m(x, text)),
        "fusion": (TextImageFusion(8, 5), lambda m, x: m(x, text)),
        "self_attention": (SelfAttentionalTransformation(8), lambda m, x: m(x)),
        "preservation": (JointAttentionalPreservation(8), lambda m, x: m(fused, x)),
    }


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("part", ["composite", "fusion", "self_attention", "preservation"])
def test_output_has_the_autocast_dtype_like_conv2d(part: str, name: str) -> None:
    module, call = _part_calls()[part]
    image = torch.randn(2, 8, 3, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert nn.Conv2d(8, 8, 1)(image).dtype == torch.bfloat16  # what PyTorch's layer does
        with backend(name):
            out = call(module.train(), image)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert image.grad is not None and image.grad.dtype == torch.float32


# --- fp64 gradcheck of each custom autograd function ----------------------------------


def _double(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


LAYOUTS = {
    "token_major": (False, False),
    "channel_major": (True, False),
    "token_major_onednn": (False, True),
}
"""Test id -> (channel-major input, oneDNN GEMM route) for the gradchecks."""


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_token_projection_passes_gradcheck(layout: str) -> None:
    channel_major, onednn = LAYOUTS[layout]
    x, weight, shift = _double(2, 3, 5), _double(4, 3), _double(2, 4)  # x: (B, C, N)

    def project(x: Tensor, weight: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
        tokens = x.transpose(1, 2)  # (B, N, C): channel-major view
        tokens = tokens if channel_major else tokens.contiguous()
        out, alias = _TokenProjection.apply(tokens, weight, shift, onednn)
        return out, 2.0 * alias  # the alias's gradient flows back too

    assert torch.autograd.gradcheck(project, (x, weight, shift))


@pytest.mark.parametrize("pool", [False, True], ids=["qkv", "qkv_and_means"])
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("onednn", [False, True], ids=["blas", "onednn"])
def test_grouped_qkv_projection_passes_gradcheck(
    pool: bool, bias: bool, groups: int, onednn: bool
) -> None:
    x = _double(2, 3, 4)
    weight = _double(groups, 3 * 4 // groups, 4 // groups)
    b = _double(groups, 3 * 4 // groups) if bias else None
    assert torch.autograd.gradcheck(
        lambda x, w, b: _GroupedQKVProjection.apply(x, w, b, 2, pool, onednn), (x, weight, b)
    )


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("with_tokens", [False, True], ids=["product", "product_and_gemm"])
def test_gated_residual_passes_gradcheck(layout: str, with_tokens: bool) -> None:
    channel_major, onednn = LAYOUTS[layout]
    r, a, s = _double(2, 3, 5), _double(2, 3), _double(2, 5)  # r: (B, C, N)
    t, w, b = (_double(2, 5, 4), _double(3, 4), _double(3)) if with_tokens else (None,) * 3

    def residual(r: Tensor, a: Tensor, s: Tensor, t: Tensor | None, w: Tensor | None,
                 b: Tensor | None) -> Tensor:
        reference = r.transpose(1, 2)
        reference = reference if channel_major else reference.contiguous()
        return _GatedResidual.apply(reference, a, s, t, w, b, False, onednn)  # no Triton

    assert torch.autograd.gradcheck(residual, (r, a, s, t, w, b))


# --- property tests: every backend equals the reference ---------------------------------


@dataclass
class Case:
    """One drawn configuration."""

    module: nn.Module
    batch: int
    channels: int
    height: int
    width: int
    text: int
    form: str  # "nchw", "channels_last" or "tokens"
    prefix: int
    call: Callable[[nn.Module, Tensor, Tensor, dict[str, object]], Tensor]

    @classmethod
    def drawn(
        cls,
        module: nn.Module,
        shape: dict[str, object],
        call: Callable[[nn.Module, Tensor, Tensor, dict[str, object]], Tensor],
    ) -> Case:
        """The case of ``module`` on a shape drawn by ``_shapes()``."""
        return cls(
            module, int(shape["batch"]), int(shape["channels"]), int(shape["height"]),
            int(shape["width"]), int(shape["text"]), str(shape["form"]), int(shape["prefix"]),
            call,
        )


def _run(case: Case, name: str, dtype: torch.dtype, image: Tensor, text: Tensor,
         cotangent: Tensor, *, form: str, autocast: bool = False,
         perturb: float = 0.0) -> list[Tensor]:
    """Output (as a map of the patches) and every gradient, under backend ``name``; with
    ``perturb``, every input and parameter times ``1 + perturb * N(0, 1)``."""
    module = copy.deepcopy(case.module).to(dtype)
    if perturb:
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(1 + perturb * torch.randn_like(p))
        image = image * (1 + perturb * torch.randn_like(image))
        text = text * (1 + perturb * torch.randn_like(text))
    image = image.to(dtype).detach()
    text = text.to(dtype).detach().requires_grad_()
    prefix = torch.linspace(-1, 1, case.batch * case.prefix * case.channels, dtype=dtype)
    prefix = prefix.reshape(case.batch, case.prefix, case.channels)
    kwargs: dict[str, object] = {}
    if form == "channels_last":
        x = image.contiguous(memory_format=torch.channels_last).requires_grad_()
    elif form == "tokens":
        patches = rearrange(image, "b c y x -> b (y x) c")
        x = torch.cat([prefix, patches], dim=1).requires_grad_()
        kwargs = {"grid_size": (case.height, case.width), "num_prefix_tokens": case.prefix}
    else:
        x = image.requires_grad_()
    with backend(name), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = case.call(module, x, text, kwargs)
    grad_x = None
    if form == "tokens":
        assert out.shape == x.shape
        # The prefix is passed through: the very values, and the cotangent as its gradient.
        assert torch.equal(out[:, : case.prefix], prefix.to(out.dtype))
        out_map = rearrange(
            out[:, case.prefix :], "b (y x) c -> b c y x", y=case.height
        )
    else:
        out_map = out
    loss = (out_map.to(cotangent.dtype) * cotangent).sum()
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x, text, *params], allow_unused=True)
    grad_x = grads[0]
    if form == "tokens":
        assert grad_x is not None and torch.equal(grad_x[:, : case.prefix], torch.zeros_like(
            grad_x[:, : case.prefix]))
        grad_x = rearrange(grad_x[:, case.prefix :], "b (y x) c -> b c y x", y=case.height)
    rest = [torch.zeros_like(p) if g is None else g for g, p in zip(grads[1:], [text, *params])]
    return [out_map, grad_x, *rest]


def _assert_every_backend_equals_the_truth(case: Case) -> None:
    torch.manual_seed(0)
    image = torch.randn(case.batch, case.channels, case.height, case.width, dtype=torch.float64)
    text = torch.randn(case.batch, case.text, dtype=torch.float64)
    cotangent = torch.randn(case.batch, case.channels, case.height, case.width,
                            dtype=torch.float64)
    truth = _run(case, "reference", torch.float64, image, text, cotangent, form="nchw")
    ref32 = _run(case, "reference", torch.float32, image, text, cotangent, form="nchw")
    perturbed = _run(case, "reference", torch.float64, image, text, cotangent, form="nchw",
                     perturb=EPS32)
    labels = ["output", "grad image", "grad text"] + [n for n, _ in case.module.named_parameters()]
    # A gradient that vanishes in exact arithmetic (a weight whose scale a batch norm removes,
    # e.g. a 1 x 1 conv of one channel before BatchNorm2d) is pure rounding noise of terms
    # as large as the other gradients of the same loss; neither ``ref_error`` (one draw of
    # that noise) nor ``sensitivity`` (the invariance holds at the perturbed point too) sizes
    # it. Floor: 16 eps times the largest gradient (as test_model's float64 rule does).
    largest = max(t.abs().max().item() for t in truth[1:])
    for name in BACKENDS:
        got = _run(case, name, torch.float32, image, text, cotangent, form=case.form)
        for label, g, r, t, p in zip(labels, got, ref32, truth, perturbed):
            ref_error = (r.double() - t).abs().max().item()
            sensitivity = (p - t).abs().max().item()
            scale = t.abs().max().item()
            # ref_error is one draw of the reference's rounding; another summation order
            # (the kernels') draws its own, several times larger at times: factor 16.
            bound = 16 * ref_error + 16 * sensitivity + 16 * EPS32 * max(scale, largest) + 1e-30
            error = (g.double() - t).abs().max().item()
            assert error <= bound, f"{name} ({case.form}): {label} off by {error:.3g} > {bound:.3g}"


_norms = st.sampled_from([None, nn.BatchNorm2d])
_acts = st.sampled_from([None, nn.ReLU])


@st.composite
def _shapes(draw: st.DrawFn) -> dict[str, object]:
    heads = draw(st.integers(1, 3))
    training = draw(st.booleans())
    form = draw(st.sampled_from(["nchw", "channels_last", "tokens"]))
    return {
        "heads": heads,
        "channels": heads * draw(st.integers(1, 3)),
        "batch": draw(st.integers(2 if training else 1, 3)),
        "height": draw(st.integers(1, 4)),
        "width": draw(st.integers(1, 4)),
        "text": draw(st.integers(1, 4)),
        "training": training,
        "form": form,
        "prefix": draw(st.integers(0, 2)) if form == "tokens" else 0,
    }


@settings(max_examples=40, deadline=None)
@given(
    shape=_shapes(),
    head_layout=st.sampled_from(["full", "grouped"]),
    qkv_bias=st.booleans(),
    fused_attn=st.booleans(),
    fusion_layers=st.integers(1, 2),
    norm_layer=_norms,
    act_layer=_acts,
    proj_norm_act=st.booleans(),
    gate_norm_act=st.booleans(),
    kernel=st.integers(1, 3),
)
def test_composite_transformer_every_backend_equals_the_reference(
    shape: dict[str, object], head_layout: str, qkv_bias: bool, fused_attn: bool,
    fusion_layers: int, norm_layer: type[nn.Module] | None, act_layer: type[nn.Module] | None,
    proj_norm_act: bool, gate_norm_act: bool, kernel: int,
) -> None:
    torch.manual_seed(1)
    module = CompositeTransformer(
        int(shape["channels"]), int(shape["text"]), int(shape["heads"]),
        head_layout=head_layout, qkv_bias=qkv_bias, fused_attn=fused_attn,
        fusion_layers=fusion_layers, norm_layer=norm_layer, act_layer=act_layer,
        proj_norm_act=proj_norm_act, gate_norm_act=gate_norm_act, spatial_kernel_size=kernel,
        w_sa_init=0.7, w_ja_init=0.9,
    )
    _randomise_batch_norm(module)
    module.train(bool(shape["training"]))
    _assert_every_backend_equals_the_truth(Case.drawn(
        module, shape,
        lambda m, x, t, kw: m(x, t, **kw),
    ))


@settings(max_examples=20, deadline=None)
@given(
    shape=_shapes(),
    head_layout=st.sampled_from(["full", "grouped"]),
    qkv_bias=st.booleans(),
    fused_attn=st.booleans(),
    norm_layer=_norms,
    act_layer=_acts,
)
def test_self_attentional_transformation_every_backend_equals_the_reference(
    shape: dict[str, object], head_layout: str, qkv_bias: bool, fused_attn: bool,
    norm_layer: type[nn.Module] | None, act_layer: type[nn.Module] | None,
) -> None:
    torch.manual_seed(2)
    module = SelfAttentionalTransformation(
        int(shape["channels"]), int(shape["heads"]), head_layout=head_layout,
        qkv_bias=qkv_bias, fused_attn=fused_attn, proj_norm_layer=norm_layer,
        proj_act_layer=act_layer,
    )
    _randomise_batch_norm(module)
    module.train(bool(shape["training"]))
    _assert_every_backend_equals_the_truth(Case.drawn(
        module, shape,
        # the text only enters the loss through a zero weight: its gradient is zero
        lambda m, x, t, kw: m(x, **kw) + 0.0 * t.sum(),
    ))


@settings(max_examples=20, deadline=None)
@given(shape=_shapes(), norm_layer=_norms, act_layer=_acts, kernel=st.integers(1, 4))
def test_joint_attentional_preservation_every_backend_equals_the_reference(
    shape: dict[str, object], norm_layer: type[nn.Module] | None,
    act_layer: type[nn.Module] | None, kernel: int,
) -> None:
    torch.manual_seed(3)
    channels, batch = int(shape["channels"]), int(shape["batch"])
    module = JointAttentionalPreservation(
        channels, kernel, norm_layer=norm_layer, act_layer=act_layer
    )
    _randomise_batch_norm(module)
    module.train(bool(shape["training"]))
    height, width, prefix = int(shape["height"]), int(shape["width"]), int(shape["prefix"])

    def preserve(m: nn.Module, x: Tensor, t: Tensor, kw: dict[str, object]) -> Tensor:
        # fused = a map (or tokens) computed from the text, so the text gets a gradient
        fused = torch.tanh(t.sum(dim=1))[:, None, None, None] * torch.linspace(
            -2, 2, channels * height * width, dtype=t.dtype
        ).reshape(1, channels, height, width)
        if "grid_size" in kw:
            fused = torch.cat([torch.zeros(batch, prefix, channels, dtype=t.dtype),
                               rearrange(fused, "b c y x -> b (y x) c")], dim=1)
        elif x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            fused = fused.contiguous(memory_format=torch.channels_last)
        return m(fused, x, **kw)

    _assert_every_backend_equals_the_truth(Case(
        module, batch, channels, height, width, int(shape["text"]), str(shape["form"]),
        prefix, preserve,
    ))


@settings(max_examples=20, deadline=None)
@given(shape=_shapes(), num_layers=st.integers(1, 2), norm_layer=_norms, act_layer=_acts)
def test_text_image_fusion_every_backend_equals_the_reference(
    shape: dict[str, object], num_layers: int, norm_layer: type[nn.Module] | None,
    act_layer: type[nn.Module] | None,
) -> None:
    torch.manual_seed(4)
    module = TextImageFusion(
        int(shape["channels"]), int(shape["text"]), num_layers=num_layers,
        norm_layer=norm_layer, act_layer=act_layer,
    )
    _randomise_batch_norm(module)
    module.train(bool(shape["training"]))
    _assert_every_backend_equals_the_truth(Case.drawn(
        module, shape,
        lambda m, x, t, kw: m(x, t, **kw),
    ))


@settings(max_examples=15, deadline=None)
@given(shape=_shapes(), head_layout=st.sampled_from(["full", "grouped"]),
       gate_norm_act=st.booleans())
def test_bf16_autocast_every_backend_is_within_bf16_rounding_of_fp32(
    shape: dict[str, object], head_layout: str, gate_norm_act: bool,
) -> None:
    torch.manual_seed(5)
    module = CompositeTransformer(
        int(shape["channels"]), int(shape["text"]), int(shape["heads"]),
        head_layout=head_layout, gate_norm_act=gate_norm_act, w_sa_init=0.7,
    )
    _randomise_batch_norm(module)
    module.train(bool(shape["training"]))
    case = Case.drawn(
        module, shape,
        lambda m, x, t, kw: m(x, t, **kw),
    )
    image = torch.randn(case.batch, case.channels, case.height, case.width)
    text = torch.randn(case.batch, case.text)
    cotangent = torch.randn_like(image)
    ref32 = _run(case, "reference", torch.float32, image, text, cotangent, form="nchw")[0]
    ref16 = _run(case, "reference", torch.float32, image, text, cotangent, form="nchw",
                 autocast=True)[0]
    bound = 2 * (ref16.float() - ref32).abs().max().item() + 8 * BF16_U * ref32.abs().max().item()
    for name in BACKENDS:
        got = _run(case, name, torch.float32, image, text, cotangent, form=case.form,
                   autocast=True)[0]
        assert got.dtype == torch.bfloat16
        error = (got.float() - ref32).abs().max().item()
        assert error <= bound, f"{name}: {error:.3g} > {bound:.3g}"
