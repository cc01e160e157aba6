"""The Triton kernels of the gated residual (``valfusion/layers/_kernels/triton_gates.py``),
run on CPU tensors by Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before Triton builds a kernel, so the kernels run in a
child process (this file run as a script, :func:`_measure`), started once per module; the
tests assert on what it measured. Triton is installed with the torch wheel (the README's
test command); without it these tests fail, they do not skip.

The math, stated here independently of the kernels, in fp64 from the very (rounded) inputs:

    out[b, n, c]  = r a s + bias[c]            grad_r[b, n, c] = g a s
    grad_a[b, c]  = sum_n g r s                grad_s[b, n]    = sum_c g r a

(``a = a[b, c]``, ``s = s[b, n]``, ``r``, ``g`` at ``[b, n, c]``). Bounds, elementwise, with
``u32 = 2^-24`` (the kernels compute in fp32): products and one addition in fp32 are within
``5 u32 (|r a s| + |bias|)`` of the exact value, a sum of ``L`` fp32 terms in any order
within ``(L + 4) u32 sum |terms|`` (Higham's ``gamma_L``, with the two products per term),
and the final conversion to the output dtype adds one ulp, ``eps |truth|`` (plus one
subnormal spacing, for fp16 values below ``2^-14``): a GPU rounds to nearest (half an ulp),
Triton's interpreter converts fp32 to bf16 by truncation (up to one). A kernel that read a
masked-off element fails them; one that summed in bf16 or fp16 fails them on sums whose
terms cancel (truth 0: error ``~u sum |terms|`` against a bound of ``(L + 4) u32 sum |terms|``).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


def _python(
    args: list[str], *, interpret: bool, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with the checkout on the path, under the interpreter or not."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=TIMEOUT_S, check=False,
    )


@pytest.fixture(scope="module")
def measured() -> dict[str, Any]:
    """What :func:`_measure` found, in a child process under Triton's interpreter."""
    done = _python([__file__], interpret=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_triton_is_installed_for_these_tests() -> None:
    assert importlib.util.find_spec("triton") is not None, (
        "triton is not installed: install torch as the README's test command does (its "
        "wheel brings triton); the Triton kernels' tests need it"
    )


# --- the kernels against the formula --------------------------------------------------


@pytest.mark.parametrize("quantity", ["out", "grad_r", "grad_a", "grad_s"])
def test_kernel_result_is_the_formula_within_its_rounding_bound(
    measured: dict[str, Any], quantity: str
) -> None:
    cases = measured["kernels"][quantity]
    assert len(cases) >= 18  # 3 shapes x 2 layouts x 3 dtypes (forward: x 2 bias)
    over = [c for c in cases if not c["ratio"] <= 1.0]
    assert not over, f"{quantity}: error / bound > 1 in {over}"


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_sums_accumulate_in_fp32_not_in_the_input_dtype(
    measured: dict[str, Any], dtype: str
) -> None:
    # Sums whose terms cancel exactly (truth 0): the bound is the fp32 summation bound
    # alone, which a sum kept in bf16 or fp16 (error ~ u sum |terms|) misses by far.
    assert measured["cancelling"][dtype]["grad_a"] <= 1.0
    assert measured["cancelling"][dtype]["grad_s"] <= 1.0


def test_kernels_write_nothing_outside_their_output(measured: dict[str, Any]) -> None:
    # Outputs are views into larger NaN-filled buffers, with shapes not multiples of the
    # blocks: the margins stay NaN, every element inside is written.
    assert measured["masking"] == {"out": [True, True], "grad_r": [True, True]}


def test_need_flags_compute_only_the_requested_gradients_with_the_same_values(
    measured: dict[str, Any],
) -> None:
    flags = measured["need"]
    assert len(flags) == 7
    for need, (present, same) in flags.items():
        assert present == json.loads(need), need  # None exactly where not needed
        assert same, f"{need}: values differ from those of the run that needs all three"


def test_grad_reference_may_overwrite_the_gradient_it_reads(measured: dict[str, Any]) -> None:
    assert measured["in_place_grad_r"] is True


@pytest.mark.parametrize(
    "variant", [f"{layout}/{gemm}" for layout in ("token_major", "channel_major")
                for gemm in ("product", "product_and_gemm")]
)
def test_gated_residual_with_triton_passes_gradcheck(
    measured: dict[str, Any], variant: str
) -> None:
    assert measured["gradcheck"][variant] is True


# --- the layers: the Triton path runs, and equals the reference -------------------------


def test_plan_with_triton_elementwise_runs_triton_under_the_interpreter(
    measured: dict[str, Any],
) -> None:
    assert measured["resolved"] == "triton"


def test_triton_elementwise_leaves_no_torch_product_or_reduction(
    measured: dict[str, Any],
) -> None:
    # JointAttentionalPreservation, forward and backward: with torch's elementwise ops the
    # gated residual runs aten.mul on (B, N, C) and aten.bmm reductions (the guard).
    ops = measured["elementwise_ops"]
    assert ops["torch"], "the recorder saw none of torch's elementwise ops: guard broken"
    assert ops["triton"] == []


@pytest.mark.parametrize("case", ["nchw/train", "tokens/eval/batch1", "channels_last/proj_norm"])
def test_composite_transformer_with_triton_elementwise_equals_the_reference(
    measured: dict[str, Any], case: str
) -> None:
    failure = measured["composite"][case]
    assert failure is None, failure


@pytest.mark.parametrize("case", ["nchw", "tokens", "channels_last"])
def test_joint_attentional_preservation_with_triton_elementwise_equals_the_reference(
    measured: dict[str, Any], case: str
) -> None:
    failure = measured["preservation"][case]
    assert failure is None, failure


def test_bf16_autocast_with_triton_elementwise_is_within_bf16_rounding_of_fp32(
    measured: dict[str, Any],
) -> None:
    got = measured["bf16_autocast"]
    assert got["dtype"] == "torch.bfloat16"
    assert got["error"] <= got["bound"], got


# --- without Triton; the GPU check's dry run ----------------------------------------------

_BLOCK_TRITON = """
import sys

class _NoTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, _NoTriton())
"""


def test_without_triton_the_package_imports_and_plans_fall_back_to_torch() -> None:
    code = _BLOCK_TRITON + """
import torch
import valfusion
from valfusion.layers import CompositeTransformer, _kernels, use_backend
from valfusion.layers._kernels import triton_gates

cuda = _kernels.DEVICE_PLANS[("cuda", None)]
print("cuda_wants", cuda.elementwise)
print("cuda_runs", _kernels.runnable(cuda, torch.device("cuda")).elementwise)
print("supports_cpu", triton_gates.supports(torch.device("cpu")))
_kernels.DEVICE_PLANS[("cpu", None)] = _kernels.Plan(None, elementwise="triton")
block = CompositeTransformer(6, 4, w_sa_init=0.5).eval()
image, text = torch.randn(2, 6, 3, 5), torch.randn(2, 4)
print("cpu_runs", _kernels.plan(image).elementwise)
with use_backend("fused"):
    fused = block(image, text)
with use_backend("reference"):
    reference = block(image, text)
print("close", torch.allclose(fused, reference, rtol=1e-5, atol=1e-6))
print("imported", "triton" in sys.modules)
"""
    done = _python(["-c", code], interpret=True)  # the interpreter asked for, triton absent
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines == {
        "cuda_wants": "triton", "cuda_runs": "torch", "supports_cpu": "False",
        "cpu_runs": "torch", "close": "True", "imported": "False",
    }


def test_layers_on_the_cpu_do_not_import_triton() -> None:
    code = """
import sys
import torch
from valfusion.layers import CompositeTransformer
CompositeTransformer(6, 4).train()(torch.randn(2, 6, 3, 5), torch.randn(2, 4)).sum().backward()
print("triton" in sys.modules)
"""
    done = _python(["-c", code], interpret=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False"]


def test_cuda_kernel_check_dry_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "kernels.md"
    done = _python(
        [str(ROOT / "benchmarks" / "scripts" / "check_cuda_kernels.py"), "--device", "cpu",
         "--tiny", "--min-run-time", "0.01", "--out", str(out)],
        interpret=False,  # the script sets TRITON_INTERPRET=1 itself on the CPU
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    # 3 levels x 2 dtypes x (4 kernel quantities + the composite block), every one passed
    assert text.count("| PASS |") == 30 and "FAIL" not in text
    assert "torch / triton" in text and text.count("| level ") == 2


def test_run_gpu_script_runs_the_kernel_check_first(tmp_path: Path) -> None:
    # The suite then refuses --dtype (it chooses its own), which ends the run quickly.
    out = tmp_path / "cuda"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "run_gpu.sh"), str(out), "--device", "cpu", "--tiny",
         "--min-run-time", "0.01", "--dtype", "bf16"],
        cwd=tmp_path, env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
        text=True, timeout=TIMEOUT_S, check=False,
    )
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "drop --dtype" in done.stderr
    assert "30 of 30 checks passed" in (out / "kernels.md").read_text()


# --- the child: runs under TRITON_INTERPRET=1 ---------------------------------------------


def _measure() -> dict[str, Any]:
    """Everything the tests above assert on, measured with Triton's interpreter."""
    import torch

    torch.set_num_threads(1)
    return {
        "kernels": _kernel_errors(),
        "cancelling": _cancelling(),
        "masking": _masking(),
        "need": _need_flags(),
        "in_place_grad_r": _in_place_grad_r(),
        "gradcheck": _gradchecks(),
        **_layers(),
    }


def _inputs(shape: tuple[int, int, int], dtype: Any, layout: str, seed: int) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    batch, tokens, channels = shape

    def draw(*size: int) -> Any:
        return torch.randn(*size, generator=generator).to(dtype)

    r, g = draw(batch, tokens, channels), draw(batch, tokens, channels)
    if layout == "channel_major":  # the token view of an NCHW map: memory (B, C, N)
        r = r.transpose(1, 2).contiguous().transpose(1, 2)
        g = g.transpose(1, 2).contiguous().transpose(1, 2)
    return {"r": r, "g": g, "a": draw(batch, channels), "s": draw(batch, tokens),
            "bias": draw(channels)}


def _ratio(got: Any, truth: Any, scale: Any, terms: int, dtype: Any) -> float:
    """``max |got - truth| / (eps |truth| + (terms + 4) u32 scale + subnormal spacing)``."""
    import torch

    info = torch.finfo(dtype)
    u32 = torch.finfo(torch.float32).eps / 2
    bound = info.eps * truth.abs() + (terms + 4) * u32 * scale + info.tiny * info.eps
    return ((got.double() - truth).abs() / bound).max().item()


def _kernel_errors() -> dict[str, list[dict[str, Any]]]:
    import torch

    from valfusion.layers._kernels import triton_gates

    # B = 1 with N, C odd and past one block (37 > 32 tokens, 131 > 128 channels); all
    # within one block; exact multiples of every block.
    shapes = [(1, 37, 131), (3, 5, 7), (2, 32, 128)]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    found: dict[str, list[dict[str, Any]]] = {q: [] for q in ("out", "grad_r", "grad_a", "grad_s")}
    for seed, (shape, layout, name) in enumerate(
        itertools.product(shapes, ("token_major", "channel_major"), dtypes)
    ):
        dtype = dtypes[name]
        x = _inputs(shape, dtype, layout, seed)
        r, g, a, s, bias = (x[k].double() for k in ("r", "g", "a", "s", "bias"))
        case = {"shape": shape, "layout": layout, "dtype": name}
        ras = r * a[:, None, :] * s[:, :, None]
        for with_bias in (False, True):
            out = triton_gates.gated_product(
                x["r"], x["a"], x["s"], x["bias"] if with_bias else None,
                out=torch.empty_like(x["r"]),
            )
            truth = ras + bias if with_bias else ras
            scale = ras.abs() + (bias.abs() if with_bias else 0)
            found["out"].append({**case, "bias": with_bias,
                                 "ratio": _ratio(out, truth, scale, 1, dtype)})
        grad_r, grad_a, grad_s = triton_gates.gated_product_backward(
            x["g"], x["r"], x["a"], x["s"], (True, True, True)
        )
        gas = g * a[:, None, :] * s[:, :, None]
        grs, gra = g * r * s[:, :, None], g * r * a[:, None, :]
        tokens, channels = shape[1:]
        for quantity, got, truth, scale, terms in (
            ("grad_r", grad_r, gas, gas.abs(), 1),
            ("grad_a", grad_a, grs.sum(1), grs.abs().sum(1), tokens),
            ("grad_s", grad_s, gra.sum(2), gra.abs().sum(2), channels),
        ):
            assert got is not None and got.dtype == dtype, (quantity, got)
            found[quantity].append({**case, "ratio": _ratio(got, truth, scale, terms, dtype)})
    return found


def _cancelling() -> dict[str, dict[str, float]]:
    """Error / bound of ``grad_a`` and ``grad_s`` when their terms cancel: every token and
    channel has a partner (a random pairing, past one block) with the same ``r`` and ``g``
    and the opposite ``s`` (tokens) or ``a`` (channels)."""
    import torch

    from valfusion.layers._kernels import triton_gates

    tokens, channels = 40, 300
    found = {}
    for seed, (name, dtype) in enumerate((("bf16", torch.bfloat16), ("fp16", torch.float16))):
        x = _inputs((2, tokens // 2, channels // 2), dtype, "token_major", 10 + seed)
        pair_n = torch.randperm(tokens, generator=torch.Generator().manual_seed(seed))
        pair_c = torch.randperm(channels, generator=torch.Generator().manual_seed(seed))
        r = x["r"].repeat(1, 2, 2)[:, pair_n][:, :, pair_c]
        g = x["g"].repeat(1, 2, 2)[:, pair_n][:, :, pair_c]
        a = torch.cat([x["a"], -x["a"]], dim=1)[:, pair_c]
        s = torch.cat([x["s"], -x["s"]], dim=1)[:, pair_n]
        _, grad_a, grad_s = triton_gates.gated_product_backward(g, r, a, s, (False, True, True))
        gd, rd, ad, sd = g.double(), r.double(), a.double(), s.double()
        zero = torch.zeros((), dtype=torch.float64)
        found[name] = {
            "grad_a": _ratio(grad_a, zero, (gd * rd * sd[:, :, None]).abs().sum(1), tokens, dtype),
            "grad_s": _ratio(grad_s, zero, (gd * rd * ad[:, None, :]).abs().sum(2), channels,
                             dtype),
        }
    return found


def _masking() -> dict[str, list[bool]]:
    """For ``out`` and ``grad_r`` written into views of NaN buffers: (margins still all
    NaN, inside all finite)."""
    import torch

    from valfusion.layers._kernels import triton_gates

    batch, tokens, channels = 2, 37, 131
    x = _inputs((batch, tokens, channels), torch.float32, "token_major", 0)

    def view_of_nan_buffer() -> tuple[Any, Any]:
        buffer = torch.full((batch, tokens + 3, channels + 5), float("nan"))
        return buffer, buffer[:, 1 : tokens + 1, 2 : channels + 2]

    def check(buffer: Any, inside: Any) -> list[bool]:
        margin = buffer.isnan()
        margin[:, 1 : tokens + 1, 2 : channels + 2] = False
        return [bool(buffer.isnan().sum() == margin.sum()), bool(inside.isfinite().all())]

    buffer, out = view_of_nan_buffer()
    triton_gates.gated_product(x["r"], x["a"], x["s"], x["bias"], out=out)
    result = {"out": check(buffer, out)}
    buffer, grad_r = view_of_nan_buffer()
    triton_gates.gated_product_backward(x["g"], x["r"], x["a"], x["s"], (True, False, False),
                                        grad_r)
    result["grad_r"] = check(buffer, grad_r)
    return result


def _need_flags() -> dict[str, tuple[list[bool], bool]]:
    """Per non-empty ``need`` (as JSON): (which results are present, values bitwise equal
    to those of the run that needs all three)."""
    import torch

    from valfusion.layers._kernels import triton_gates

    x = _inputs((2, 37, 131), torch.bfloat16, "token_major", 1)
    every = triton_gates.gated_product_backward(x["g"], x["r"], x["a"], x["s"], (True,) * 3)
    found = {}
    for need in itertools.product((False, True), repeat=3):
        if not any(need):
            continue
        got = triton_gates.gated_product_backward(x["g"], x["r"], x["a"], x["s"], need)
        present = [t is not None for t in got]
        same = all(t is None or torch.equal(t, e) for t, e in zip(got, every))
        found[json.dumps(list(need))] = (present, same)
    return found


def _in_place_grad_r() -> bool:
    import torch

    from valfusion.layers._kernels import triton_gates

    x = _inputs((2, 37, 131), torch.float32, "token_major", 2)
    apart = triton_gates.gated_product_backward(x["g"], x["r"], x["a"], x["s"], (True,) * 3)
    g = x["g"].clone()
    aliased = triton_gates.gated_product_backward(g, x["r"], x["a"], x["s"], (True,) * 3, g)
    return aliased[0] is g and all(torch.equal(t, e) for t, e in zip(aliased, apart))


def _gradchecks() -> dict[str, bool]:
    import torch

    from valfusion.layers._kernels.gated_residual import _GatedResidual

    def double(*shape: int) -> Any:
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    found = {}
    for layout, gemm in itertools.product(("token_major", "channel_major"),
                                          ("product", "product_and_gemm")):
        r, a, s = double(2, 3, 5), double(2, 3), double(2, 5)  # r: (B, C, N)
        t, w, b = ((double(2, 5, 4), double(3, 4), double(3)) if gemm == "product_and_gemm"
                   else (None, None, None))

        def residual(r: Any, a: Any, s: Any, t: Any, w: Any, b: Any, layout: str = layout) -> Any:
            reference = r.transpose(1, 2)
            reference = reference if layout == "channel_major" else reference.contiguous()
            return _GatedResidual.apply(reference, a, s, t, w, b, True)  # use_triton

        found[f"{layout}/{gemm}"] = torch.autograd.gradcheck(residual, (r, a, s, t, w, b))
    return found


def _layers() -> dict[str, Any]:
    """The layers with plans whose ``elementwise`` is ``"triton"``, against the reference by
    the property tests' own rule (``_assert_every_backend_equals_the_truth`` of
    ``test_layers_backends``, with :data:`BACKENDS` set to these plans)."""
    import torch
    from einops import rearrange
    from torch import nn

    sys.path.insert(0, str(Path(__file__).parent))
    import test_layers_backends as backends

    from valfusion.layers import CompositeTransformer, JointAttentionalPreservation, _kernels

    # Triton's elementwise part with both layouts of an NCHW map (transposed once; read in
    # place by per-sample GEMMs, which hands the kernels channel-major tensors).
    triton_plans = {
        "fused/triton": _kernels.Plan(per_sample_min_tokens=None, elementwise="triton"),
        "fused/per-sample/triton": _kernels.Plan(per_sample_min_tokens=1, elementwise="triton"),
    }
    backends.PLANS.update(triton_plans)
    backends.PLANS["fused/torch"] = _kernels.Plan(per_sample_min_tokens=None, elementwise="torch")
    backends.BACKENDS = tuple(triton_plans)
    image = torch.randn(2, 6, 3, 5, requires_grad=True)
    with backends.backend("fused/triton"):
        resolved = _kernels.plan(image)
    assert resolved is not None

    def failure(case: Any) -> str | None:
        try:
            backends._assert_every_backend_equals_the_truth(case)
        except AssertionError as error:
            return str(error)
        return None

    def composite(form: str, batch: int, training: bool, **options: Any) -> Any:
        torch.manual_seed(1)
        module = CompositeTransformer(6, 4, 2, w_sa_init=0.7, w_ja_init=0.9, **options)
        backends._randomise_batch_norm(module)
        module.train(training)
        return backends.Case(module, batch, 6, 3, 5, 4, form, 1 if form == "tokens" else 0,
                             lambda m, x, t, kw: m(x, t, **kw))

    def preservation(form: str) -> Any:
        torch.manual_seed(3)
        module = JointAttentionalPreservation(5, 3).train()

        def preserve(m: nn.Module, x: Any, t: Any, kw: dict[str, object]) -> Any:
            # the fused map comes from the text, so that the text gets a gradient
            fused = torch.tanh(t.sum(dim=1))[:, None, None, None] * torch.linspace(
                -2, 2, 5 * 3 * 7, dtype=t.dtype).reshape(1, 5, 3, 7)
            if "grid_size" in kw:
                fused = torch.cat([torch.zeros(2, 1, 5, dtype=t.dtype),
                                   rearrange(fused, "b c y x -> b (y x) c")], dim=1)
            elif form == "channels_last":
                fused = fused.contiguous(memory_format=torch.channels_last)
            return m(fused, x, **kw)

        return backends.Case(module, 2, 5, 3, 7, 4, form, 1 if form == "tokens" else 0,
                             preserve)

    ops: dict[str, list[str]] = {}
    block = JointAttentionalPreservation(6, 3).train()
    fused_map, reference_map = torch.randn(2, 6, 3, 5), torch.randn(2, 6, 3, 5, requires_grad=True)
    for name, backend in (("triton", "fused/triton"), ("torch", "fused/torch")):
        with backends.backend(backend), backends._RecordShapes() as recorder:
            block(fused_map, reference_map).sum().backward()
        ops[name] = sorted({op for op, shape in recorder.ops
                            if op == "aten.bmm" or (op.startswith("aten.mul")
                                                    and shape == (2, 15, 6))})

    bf16 = composite("nchw", 2, True)
    image, text = torch.randn(2, 6, 3, 5), torch.randn(2, 4)
    cotangent = torch.randn_like(image)
    ref32 = backends._run(bf16, "reference", torch.float32, image, text, cotangent, form="nchw")[0]
    ref16 = backends._run(bf16, "reference", torch.float32, image, text, cotangent, form="nchw",
                          autocast=True)[0]
    got = backends._run(bf16, "fused/triton", torch.float32, image, text, cotangent,
                        form="nchw", autocast=True)[0]
    return {
        "resolved": resolved.elementwise,
        "elementwise_ops": ops,
        "composite": {
            "nchw/train": failure(composite("nchw", 2, True)),
            "tokens/eval/batch1": failure(composite("tokens", 1, False, head_layout="full")),
            "channels_last/proj_norm": failure(
                composite("channels_last", 2, True, proj_norm_act=True, gate_norm_act=True)),
        },
        "preservation": {form: failure(preservation(form))
                         for form in ("nchw", "tokens", "channels_last")},
        "bf16_autocast": {
            "dtype": str(got.dtype),
            "error": (got.float() - ref32).abs().max().item(),
            # test_layers_backends' bf16 rule: as close as the bf16 reference, with a margin
            "bound": 2 * (ref16.float() - ref32).abs().max().item()
            + 8 * 2.0**-8 * ref32.abs().max().item(),
        },
    }


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run under TRITON_INTERPRET=1 (the tests above start this so)")
    print(json.dumps(_measure()))


_BROKEN_KERNEL = """
import json, warnings
import torch
from valfusion.layers import _kernels
from valfusion.layers._kernels import triton_gates

triton_gates.FORWARD_BLOCK_C = 100  # not a power of two: Triton refuses to build the kernel
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    plan = _kernels.runnable(_kernels.Plan(None, elementwise="triton"), torch.device("cpu"))
    again = triton_gates.supports(torch.device("cpu"))  # checked once: no second warning
print(json.dumps({"elementwise": plan.elementwise, "again": again,
                  "warnings": [str(w.message) for w in caught
                               if issubclass(w.category, RuntimeWarning)]}))
"""


def test_kernels_that_fail_their_first_check_fall_back_to_torch_with_one_warning() -> None:
    """A kernel that does not build (or computes wrong values) where it first runs costs a
    warning and torch's ops, not an error in a training step: kernels Triton cannot build
    are made here by a block size Triton refuses."""
    done = _python(["-c", _BROKEN_KERNEL], interpret=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["elementwise"] == "torch" and result["again"] is False
    assert len(result["warnings"]) == 1
    assert result["warnings"][0].startswith(
        "valfusion: the Triton gate kernels failed their check on cpu ("
    )
    assert result["warnings"][0].endswith("); torch's elementwise ops run there instead")
