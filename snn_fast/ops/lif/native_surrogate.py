"""A user's surrogate compiled into the C++ backward walk, on the machine that runs it.

Why: the other ways to run a user's g′ on the CPU (custom_cpu.py) evaluate it before the walk into
[T, N] buffers that the walk then reads: with a learnable α, g′ and ∂g/∂α cost six passes of T·N
floats that a built-in surrogate never makes (D written by the forward and read back, g′ and ∂g/∂α
written and read). Compiled into the walk, a user's g′ is computed inline on the values in registers,
as a built-in's is: the same bytes as the built-in kernel.

How (the first backward that needs it, per surrogate and dtype):
  1. translate: ``dg`` (and ∂g/∂α: the surrogate's ``dg_dalpha``, or x·g′/α when derived) traced by
     make_fx in fake mode to aten ops; each op of a whitelist (_EMIT) becomes one C++ expression in the
     compute type (float; double for float64 data). exp, sigmoid and tanh use the vectorisable float
     functions the built-in surrogates use (csrc/include/snn_fast/surrogate.h), so the loops stay
     vector code. Anything else (an op outside the list, a reduction, a branch on a tensor's value, an
     integer tensor) is not translated: the compiled/eager path of custom_cpu.py runs instead, as before.
  2. build: one translation unit (the kernels header, the two functions as specialisations of
     sg_grad/sg_dalpha for kNativeSurrogate, an instantiation of lif_bwd_native_kernel for the dtype)
     compiled with setup.py's flags for this CPU (-march=native) into a shared library, ~10-20 s, and
     cached on disk ($SNN_FAST_CACHE_DIR, else ~/.cache/snn_fast) under a hash of everything that goes
     into it (source, headers, compiler, flags, torch, CPU): later processes load it in milliseconds.
  3. check: the library's g′ and ∂g/∂α on a grid of x (with ±0, ±inf, NaN, tiny and huge values) and
     two widths against the torch functions run eagerly in the same dtype; a disagreement beyond the
     tolerance (_TOL: exp_poly's few ulp, composed) is refused with a warning naming the worst point.
  4. run: ``snn_fast::lif_bwd_native`` with the library's kernel address.

The same for the fused batch norm + LIF op (``op="bn_lif"``): a library of its own per surrogate and
dtype, instantiating bn_lif_bwd_native_kernel (csrc/cpu/bn_lif_cpu_kernels_impl.h), run by
``snn_fast::bn_lif_bwd_native`` (snn_fast/ops/bn_lif/custom_cpu.py).

A function is translated once, at its first use: Python values it reads (closures, globals) are taken
as they are then. Off with register_surrogate(..., compile=False), SNN_FAST_COMPILE_SURROGATES=0 (both
also turn off torch.compile) or SNN_FAST_NATIVE_SURROGATES=0 (this step only). No noise mask (its
emitted value needs g itself) and the default firing and reset only (custom_cpu.py's limits).
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.utils._python_dispatch

from ... import _ext
from ... import surrogate as _sg

ENV_NATIVE = "SNN_FAST_NATIVE_SURROGATES"
ENV_COMPILE = "SNN_FAST_COMPILE_SURROGATES"
ENV_CACHE = "SNN_FAST_CACHE_DIR"

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
_CSRC = os.path.join(_ROOT, "csrc")
# The headers the generated unit includes (their text is part of the cache key).
_HEADERS = ("cpu/lif_cpu_kernels_impl.h", "cpu/lif_cpu_kernels.h", "include/snn_fast/lif_step.h",
            "include/snn_fast/surrogate.h")


@dataclass(frozen=True)
class _Op:
    """What the generated unit instantiates for one op: the header it includes (with the others it reads,
    for the cache key), the walk's function-pointer type, the walk and its ABI tag."""
    include: str
    headers: Tuple[str, ...]
    fn_type: str
    kernel: str
    abi: str


_OPS = {
    "lif": _Op("lif_cpu_kernels_impl.h", _HEADERS, "snn_fast::cpu_lif::NativeBwdFn",
               "snn_fast::cpu_lif::lif_bwd_native_kernel", "snn_fast::cpu_lif::native_abi_tag"),
    "bn_lif": _Op("bn_lif_cpu_kernels_impl.h", _HEADERS + ("cpu/bn_lif_cpu_kernels_impl.h", "cpu/bn_lif_cpu_kernels.h"),
                  "snn_fast::cpu_bn_lif::NativeBnBwdFn", "snn_fast::cpu_bn_lif::bn_lif_bwd_native_kernel",
                  "snn_fast::cpu_bn_lif::bn_native_abi_tag"),
}
# setup.py's kernel flags (same rounding: no contraction), for this CPU only, symbols hidden so two
# surrogates' libraries never resolve each other's template instances.
_CXXFLAGS = ("-std=c++20", "-O3", "-g0", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd",
             "-ffp-contract=off", "-fwrapv", "-fPIC", "-shared", "-march=native", "-fvisibility=hidden",
             "-DSNN_CPU_CLONES=", "-DNDEBUG")


class Untranslatable(Exception):
    """The function uses something the translator does not turn into C++ (the message says what)."""


# --- 1. translate -----------------------------------------------------------------------------------
def _ctype(acc: torch.dtype) -> str:
    return "double" if acc == torch.float64 else "float"


def _literal(v, ct: str) -> str:
    v = float(v)
    if math.isnan(v):
        return f"std::numeric_limits<{ct}>::quiet_NaN()"
    if math.isinf(v):
        return f"({'-' if v < 0 else ''}std::numeric_limits<{ct}>::infinity())"
    return f"{ct}({v.hex()})"  # exact: the double, rounded to the compute type as torch rounds a scalar


@dataclass
class _Val:
    expr: str
    kind: str  # "f": the compute type; "b": bool


def _emit_fn(fn: Callable, acc: torch.dtype) -> Tuple[List[str], str]:
    """C++ statements (one per op) computing fn(x, a) in the compute type, and the expression of the
    result. Traced at two lengths of x: a function that reads x's size (a constant in one trace)
    gives two different programs and is refused."""
    lines, result = _emit_once(fn, acc, 8)
    if (lines, result) != _emit_once(fn, acc, 13):
        raise Untranslatable("the function depends on the size of x")
    return lines, result


def _emit_once(fn: Callable, acc: torch.dtype, n: int) -> Tuple[List[str], str]:
    from torch.fx.experimental.proxy_tensor import make_fx

    ct = _ctype(acc)
    x = torch.linspace(-1.0, 1.0, n, dtype=acc)
    a = torch.tensor(1.5, dtype=acc)
    with torch.utils._python_dispatch._disable_current_modes():
        try:
            gm = make_fx(fn, tracing_mode="fake")(x, a)
        except Exception as e:  # a branch on a value, .item(), a Python error: not one graph of ops
            raise Untranslatable(f"tracing failed ({type(e).__name__}: {str(e).strip()[:200]})") from None
    env: Dict[str, _Val] = {}
    lines: List[str] = []
    placeholders = iter(("x", "a"))
    out = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node.name] = _Val(next(placeholders), "f")
            continue
        if node.op == "output":
            out = node.args[0]
            break
        if node.op == "get_attr":
            t = getattr(gm, node.target)
            if not isinstance(t, torch.Tensor) or t.numel() != 1 or type(t) is not torch.Tensor:
                raise Untranslatable(f"a constant that is not one number ({node.target})")
            env[node.name] = _Val(_literal(t.item(), ct), "b" if t.dtype == torch.bool else "f")
            continue
        if node.op != "call_function":
            raise Untranslatable(f"{node.op} {node.target}")
        val = node.meta.get("val")
        if node.target == torch.ops.aten.scalar_tensor.default and isinstance(val, torch.Tensor) \
                and val.dim() == 0 and val.dtype.is_floating_point:
            # a Python number wrapped for an op (torch.where(c, 1.0, x)): a 0-d tensor of the default
            # dtype, which does not promote x's; its value rounded to that dtype
            v = torch.tensor(float(node.args[0]), dtype=val.dtype).item()
            env[node.name] = _Val(_literal(v, ct), "f")
            continue
        if isinstance(val, torch.Tensor):
            if tuple(val.shape) not in ((), tuple(x.shape)):
                raise Untranslatable(f"{node.target} gives shape {tuple(val.shape)} (not elementwise)")
            # float32 values in a float64 function (torch.where(c, 1.0, 2.0): the default dtype): each
            # result rounded to float, which is float32 arithmetic for these operations
            narrow = val.dtype == torch.float32 and acc == torch.float64
            if val.dtype not in (acc, torch.bool) and not narrow:
                raise Untranslatable(f"{node.target} gives {val.dtype} (only {acc} and bool)")
        emit = _EMIT.get(node.target)
        if emit is None:
            raise Untranslatable(f"{node.target} is not one of the translated ops")

        def arg(v, node=node):
            if isinstance(v, torch.fx.Node):
                return env[v.name]
            if isinstance(v, bool):
                return _Val("true" if v else "false", "b")
            if isinstance(v, (int, float)):
                return _Val(_literal(v, ct), "f")
            raise Untranslatable(f"{node.target}: argument {v!r}")

        expr, kind = emit(node, arg, ct, acc)
        if isinstance(val, torch.Tensor) and val.dtype == torch.bool and kind == "f":
            # torch's bool result of an arithmetic op (True + True is True: a logical or; a bool fill)
            expr, kind = f"({expr} != {ct}(0))", "b"
        elif isinstance(val, torch.Tensor) and val.dtype == torch.float32 and acc == torch.float64 and kind == "f":
            expr = f"{ct}(float({expr}))"
        name = f"v{len(lines)}"
        lines.append(f"  const {'bool' if kind == 'b' else ct} {name} = {expr};")
        env[node.name] = _Val(name, kind)
    if not isinstance(out, torch.fx.Node) or out.name not in env:
        raise Untranslatable("the function does not return one tensor computed from x and a")
    oval = out.meta.get("val") if out.op == "call_function" else None
    if out.op == "call_function" and (not isinstance(oval, torch.Tensor) or tuple(oval.shape) != tuple(x.shape)):
        raise Untranslatable("the result is not shaped like x")
    if out.op == "placeholder" and out.name != gm.graph.find_nodes(op="placeholder")[0].name:
        raise Untranslatable("the result is α alone, not shaped like x")
    return lines, _f(env[out.name], ct)


def _f(v: _Val, ct: str) -> str:
    return v.expr if v.kind == "f" else f"{ct}({v.expr})"


def _binary(op: str):
    def emit(node, arg, ct, acc):
        a, b = arg(node.args[0]), arg(node.args[1])
        alpha = node.kwargs.get("alpha", 1)
        if alpha != 1:
            if op not in "+-":
                raise Untranslatable(f"{node.target} with alpha")
            return f"({_f(a, ct)} {op} {_literal(alpha, ct)} * {_f(b, ct)})", "f"
        return f"({_f(a, ct)} {op} {_f(b, ct)})", "f"
    return emit


def _unary(fmt: str):
    def emit(node, arg, ct, acc):
        if len(node.args) != 1 or node.kwargs:
            raise Untranslatable(f"{node.target} with extra arguments")
        return fmt.format(x=_f(arg(node.args[0]), ct), ct=ct), "f"
    return emit


def _compare(op: str):
    def emit(node, arg, ct, acc):
        return f"({_f(arg(node.args[0]), ct)} {op} {_f(arg(node.args[1]), ct)})", "b"
    return emit


def _logical(op: str):
    def emit(node, arg, ct, acc):
        a, b = arg(node.args[0]), arg(node.args[1])
        if a.kind != "b" or b.kind != "b":
            raise Untranslatable(f"{node.target} of non-bool values")
        return f"({a.expr} {op} {b.expr})", "b"
    return emit


def _not(node, arg, ct, acc):
    a = arg(node.args[0])
    if a.kind != "b":
        raise Untranslatable(f"{node.target} of a non-bool value")
    return f"(!{a.expr})", "b"


def _where(node, arg, ct, acc):
    c, a, b = (arg(v) for v in node.args)
    cond = c.expr if c.kind == "b" else f"({c.expr} != {ct}(0))"
    return f"({cond} ? {_f(a, ct)} : {_f(b, ct)})", "f"


def _clamp(node, arg, ct, acc, lo=None, hi=None):
    x = _f(arg(node.args[0]), ct)
    if node.target in (torch.ops.aten.clamp.default, torch.ops.aten.clamp.Tensor):
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
    # NaN passes, as torch.clamp: both comparisons are false for it
    if lo is not None:
        x = f"({x} < {_f(arg(lo), ct)} ? {_f(arg(lo), ct)} : {x})"
    if hi is not None:
        x = f"({x} > {_f(arg(hi), ct)} ? {_f(arg(hi), ct)} : {x})"
    return x, "f"


def _extreme(op: str):
    def emit(node, arg, ct, acc):  # torch.maximum/minimum propagate NaN from either side
        a, b = _f(arg(node.args[0]), ct), _f(arg(node.args[1]), ct)
        return f"(({a} {op} {b} || {a} != {a}) ? {a} : {b})", "f"
    return emit


def _pow(node, arg, ct, acc):
    x, e = _f(arg(node.args[0]), ct), node.args[1]
    if isinstance(e, torch.fx.Node) or not isinstance(e, (int, float)):
        raise Untranslatable("pow with a tensor exponent")
    e = float(e)
    # torch's own special cases of a scalar exponent (the same operations)
    forms = {0.0: f"{ct}(1)", 1.0: f"{x}", 2.0: f"({x} * {x})", 3.0: f"({x} * {x} * {x})", 0.5: f"std::sqrt({x})",
             -1.0: f"({ct}(1) / {x})", -2.0: f"({ct}(1) / ({x} * {x}))", -0.5: f"({ct}(1) / std::sqrt({x}))"}
    if e not in forms:
        raise Untranslatable(f"pow with exponent {e}")
    return forms[e], "f"


def _to_copy(node, arg, ct, acc):
    v = arg(node.args[0])
    dtype = node.kwargs.get("dtype")
    if dtype not in (None, acc):
        raise Untranslatable(f"a conversion to {dtype}")
    if any(k not in ("dtype", "layout", "device", "memory_format") for k in node.kwargs):
        raise Untranslatable("_to_copy with unusual arguments")
    return _f(v, ct), "f"


def _fill(node, arg, ct, acc):  # zeros_like, ones_like, full_like, scalar_tensor
    t = node.target
    if t == torch.ops.aten.zeros_like.default:
        return f"{ct}(0)", "f"
    if t == torch.ops.aten.ones_like.default:
        return f"{ct}(1)", "f"
    return _f(arg(node.args[1] if t == torch.ops.aten.full_like.default else node.args[0]), ct), "f"


def _identity(node, arg, ct, acc):
    v = arg(node.args[0])
    return v.expr, v.kind


def _sign(node, arg, ct, acc):  # torch: 0 for ±0 and NaN
    x = _f(arg(node.args[0]), ct)
    return f"({x} > {ct}(0) ? {ct}(1) : ({x} < {ct}(0) ? {ct}(-1) : {ct}(0)))", "f"


def _rsub(node, arg, ct, acc):
    a, b = arg(node.args[0]), arg(node.args[1])
    alpha = node.kwargs.get("alpha", 1)
    scaled = _f(a, ct) if alpha == 1 else f"{_literal(alpha, ct)} * {_f(a, ct)}"
    return f"({_f(b, ct)} - {scaled})", "f"


_aten = torch.ops.aten
_EMIT = {
    _aten.add.Tensor: _binary("+"), _aten.add.Scalar: _binary("+"),
    _aten.sub.Tensor: _binary("-"), _aten.sub.Scalar: _binary("-"),
    _aten.mul.Tensor: _binary("*"), _aten.mul.Scalar: _binary("*"),
    _aten.div.Tensor: _binary("/"), _aten.div.Scalar: _binary("/"),
    _aten.rsub.Scalar: _rsub, _aten.rsub.Tensor: _rsub,
    _aten.neg.default: _unary("(-{x})"),
    _aten.abs.default: _unary("detail::vabs({x})"),
    _aten.exp.default: _unary("detail::vexp({x})"),
    _aten.sigmoid.default: _unary("({ct}(1) / ({ct}(1) + detail::vexp(-{x})))"),
    _aten.tanh.default: _unary("native_tanh({x})"),
    _aten.reciprocal.default: _unary("({ct}(1) / {x})"),
    _aten.sqrt.default: _unary("std::sqrt({x})"),
    _aten.rsqrt.default: _unary("({ct}(1) / std::sqrt({x}))"),
    _aten.square.default: _unary("({x} * {x})"),
    _aten.relu.default: _unary("({x} < {ct}(0) ? {ct}(0) : {x})"),
    _aten.sign.default: _sign,
    _aten.pow.Tensor_Scalar: _pow,
    _aten.clamp.default: _clamp, _aten.clamp.Tensor: _clamp,
    _aten.clamp_min.default: lambda n, arg, ct, acc: _clamp(n, arg, ct, acc, lo=n.args[1]),
    _aten.clamp_max.default: lambda n, arg, ct, acc: _clamp(n, arg, ct, acc, hi=n.args[1]),
    _aten.maximum.default: _extreme(">"), _aten.minimum.default: _extreme("<"),
    _aten.where.self: _where, _aten.where.ScalarSelf: _where, _aten.where.ScalarOther: _where,
    _aten.where.Scalar: _where,
    _aten.gt.Tensor: _compare(">"), _aten.gt.Scalar: _compare(">"),
    _aten.lt.Tensor: _compare("<"), _aten.lt.Scalar: _compare("<"),
    _aten.ge.Tensor: _compare(">="), _aten.ge.Scalar: _compare(">="),
    _aten.le.Tensor: _compare("<="), _aten.le.Scalar: _compare("<="),
    _aten.eq.Tensor: _compare("=="), _aten.eq.Scalar: _compare("=="),
    _aten.ne.Tensor: _compare("!="), _aten.ne.Scalar: _compare("!="),
    _aten.logical_and.default: _logical("&&"), _aten.logical_or.default: _logical("||"),
    _aten.bitwise_and.Tensor: _logical("&&"), _aten.bitwise_or.Tensor: _logical("||"),
    _aten.logical_not.default: _not, _aten.bitwise_not.default: _not,
    _aten._to_copy.default: _to_copy,
    _aten.zeros_like.default: _fill, _aten.ones_like.default: _fill, _aten.full_like.default: _fill,
    _aten.scalar_tensor.default: _fill,
    _aten.detach.default: _identity, _aten.alias.default: _identity, _aten.clone.default: _identity,
    _aten.lift_fresh_copy.default: _identity,
}


def translate(sg: _sg.Surrogate, acc: torch.dtype) -> str:
    """C++ specialisations of sg_grad and sg_dalpha for kNativeSurrogate in the compute type ``acc``.
    Raises Untranslatable."""
    ct = _ctype(acc)
    lines, result = _emit_fn(sg.dg, acc)
    grad = lines + [f"  return {result};"]
    kind = _sg.dalpha_kind(sg)
    if kind == _sg.DALPHA_ZERO:
        dalpha = [f"  return {ct}(0);"]
    elif kind == _sg.DALPHA_SCALED:  # x·g′/α from g′ in the compute type, as custom_cpu._scaled
        dalpha = lines + [f"  const {ct} gp = {result};", "  return x * gp / a;"]
    else:
        lines, result = _emit_fn(sg.dg_dalpha, acc)
        dalpha = lines + [f"  return {result};"]
    sig = "{ct} {name}<cpu_lif::kNativeSurrogate, {ct}>({ct} x, {ct} a)"
    inl = "SNN_NATIVE_INLINE "
    return "\n".join(
        [f"// surrogate {sg.name!r}: g′ and ∂g/∂α, translated from its torch functions",
         "template <>", inl + sig.format(ct=ct, name="sg_grad") + " {", "  using namespace detail;",
         "  (void)x; (void)a;"] + grad + ["}", "template <>", inl + sig.format(ct=ct, name="sg_dalpha") + " {",
                                          "  using namespace detail;", "  (void)x; (void)a;"] + dalpha + ["}"])


# tanh without libm (a libm call keeps the loop scalar): Cephes' tanhf, an odd polynomial below 0.625
# and ±(1 − 2/(e^{2|x|} + 1)) above (exp's core: the argument is in its range), one select. NaN passes
# (the polynomial's side). More selects (exp_poly's clamps, a NaN test) left GCC's if-conversion
# short on the two-step walk with parameter gradients: scalar (test_generated_walk_vectorises).
# |rel err| ~ 2 ulp. double: std::tanh.
_PRELUDE = r"""
// Inlined whatever GCC's unit-growth budget says: a call left in the walk's loop keeps it scalar (the
// budget ran out for native_tanh once the kernels' header grew: tests/test_native_surrogate.py).
#define SNN_NATIVE_INLINE __attribute__((always_inline)) inline
namespace snn_fast {
SNN_NATIVE_INLINE float native_tanh(float x) {
  const float ax = detail::vabs(x);
  const float z = x * x;
  const float p = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z +
                    1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
  const float e = detail::exp_poly_core(2.0f * (ax > 44.0f ? 44.0f : ax));
  const float big = std::copysign(1.0f - 2.0f / (e + 1.0f), x);
  return ax >= 0.625f ? big : p;
}
SNN_NATIVE_INLINE double native_tanh(double x) { return std::tanh(x); }
"""

_SCALARS = {torch.float32: ("float", "float"), torch.float64: ("double", "double"),
            torch.float16: ("c10::Half", "float"), torch.bfloat16: ("c10::BFloat16", "float")}


def source(sg: _sg.Surrogate, dtype: torch.dtype, op: str = "lif") -> str:
    """The translation unit for ``sg``, storage dtype ``dtype`` and ``op`` ("lif" or "bn_lif"). Raises
    Untranslatable."""
    scalar, acc = _SCALARS[dtype]
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    o = _OPS[op]
    return "\n".join([
        f"// Generated by snn_fast/ops/lif/native_surrogate.py: a user's surrogate in the C++ backward walk ({op}).",
        "#include <cmath>", "#include <limits>", f'#include "{o.include}"', _PRELUDE,
        translate(sg, acc_dtype), "}  // namespace snn_fast", "",
        '#define SNN_EXPORT extern "C" __attribute__((visibility("default")))',
        f"SNN_EXPORT int64_t snn_fast_native_abi() {{ return {o.abi}<{scalar}, {acc}>(); }}",
        "SNN_EXPORT void* snn_fast_native_bwd() {",
        f"  {o.fn_type}<{scalar}, {acc}> f =",
        f"      &{o.kernel}<{scalar}, {acc}>;",
        "  return reinterpret_cast<void*>(f);", "}",
        f"SNN_EXPORT void snn_fast_native_eval(const {acc}* x, {acc} a, {acc}* gp, {acc}* dga, int64_t n) {{",
        "  for (int64_t i = 0; i < n; ++i) {",
        "    gp[i] = snn_fast::sg_grad<snn_fast::cpu_lif::kNativeSurrogate>(x[i], a);",
        "    dga[i] = snn_fast::sg_dalpha<snn_fast::cpu_lif::kNativeSurrogate>(x[i], a);", "  }", "}", ""])


# --- 2. build ---------------------------------------------------------------------------------------
def _cache_dir() -> str:
    base = os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "snn_fast")
    return os.path.join(base, "native_surrogates")


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        keys = ("model name", "flags", "Features", "CPU implementer", "CPU architecture", "CPU part")
        keep = dict.fromkeys(ln.split(":")[0].strip() + ":" + ln.split(":", 1)[-1].strip()
                             for ln in info.splitlines() if ln.startswith(keys))
        return platform.machine() + "\n" + "\n".join(keep)
    except OSError:
        return platform.machine() + (platform.processor() or "")


def _compiler() -> Optional[str]:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def _command(cxx: str, src: str, out: str) -> List[str]:
    from torch.utils import cpp_extension

    incs = [os.path.join(_CSRC, "include"), os.path.join(_CSRC, "cpu")] + cpp_extension.include_paths()
    libs = cpp_extension.library_paths()
    return ([cxx, *_CXXFLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
            + [f"-I{i}" for i in incs] + [src, "-o", out] + [f"-L{p}" for p in libs]
            + [f"-Wl,-rpath,{p}" for p in libs] + ["-ltorch_cpu", "-lc10"])


def _key(src: str, cmd: List[str], headers: Tuple[str, ...] = _HEADERS) -> str:
    h = hashlib.sha256()
    for part in (src, " ".join(cmd[:len(_CXXFLAGS) + 2]), torch.__version__, _cpu_id(), sys.platform):
        h.update(part.encode())
    for rel in headers:
        with open(os.path.join(_CSRC, rel), "rb") as f:
            h.update(f.read())
    try:
        h.update(subprocess.run([cmd[0], "--version"], capture_output=True, timeout=30).stdout)
    except (OSError, subprocess.SubprocessError):
        pass
    return h.hexdigest()[:24]


def unavailable(op: str = "lif") -> Optional[str]:
    """Why nothing can be compiled here for ``op`` (no C++ compiler; the kernel headers not beside the
    package, as in an install that is not editable: the C++ sources are not installed), or None."""
    if _compiler() is None:
        return "no C++ compiler found ($CXX, c++, g++)"
    missing = [h for h in _OPS[op].headers if not os.path.exists(os.path.join(_CSRC, h))]
    if missing:
        return f"the kernel headers are not beside the package ({_CSRC}: {missing[0]} missing)"
    return None


# A library runs in this process: the cache must hold only what this user wrote. POSIX only (elsewhere
# no check). The directory: another user's is refused; our own that others could write is made writable
# by us only. A library another user owns, or that others could have written, is built again.
def _private_dir(path: str) -> None:
    if not hasattr(os, "getuid"):
        return
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise RuntimeError(f"{path} belongs to another user (uid {st.st_uid}), so a library loaded from it could "
                           f"run their code; set ${ENV_CACHE} to a directory of your own")
    if st.st_mode & 0o022:
        os.chmod(path, st.st_mode & ~0o022)


def _trusted(lib: str) -> bool:
    if not hasattr(os, "getuid"):
        return True
    st = os.stat(lib)
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _build(src: str, headers: Tuple[str, ...] = _HEADERS) -> str:
    """The path of the library for ``src``: from the cache, else compiled into it. Raises RuntimeError."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++)")
    cache = _cache_dir()
    probe = _command(cxx, "src.cpp", "lib.so")
    key = _key(src, probe, headers)
    lib = os.path.join(cache, f"{key}.so")
    os.makedirs(cache, mode=0o700, exist_ok=True)
    _private_dir(cache)
    if os.path.exists(lib):
        if _trusted(lib):
            return lib
        os.remove(lib)
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".{key}-") as tmp:
        cpp, out = os.path.join(tmp, "src.cpp"), os.path.join(tmp, "lib.so")
        with open(cpp, "w") as f:
            f.write(src)
        r = subprocess.run(_command(cxx, cpp, out), capture_output=True, text=True)
        if r.returncode != 0:
            err = [ln for ln in r.stderr.splitlines() if "error" in ln] or r.stderr.splitlines()[-3:]
            raise RuntimeError(f"the C++ compiler failed: {' | '.join(err[:3])[:400]}")
        shutil.copy(cpp, os.path.join(cache, f"{key}.cpp"))  # beside the library, to read
        os.chmod(out, 0o755)  # whatever the umask: writable by us only (_trusted)
        os.replace(out, lib)  # atomic: a concurrent builder of the same key writes the same bytes
    return lib


# --- 3. check ---------------------------------------------------------------------------------------
# Library vs the torch functions run eagerly in the same dtype, |Δ| ≤ rtol·|ref| + atol·max|ref|. Both
# round: a formula that cancels (the sigmoid's 1 − σ where σ → 1) turns one ulp of σ into 1e-4 of the
# result in float32, on either side; a translation error is off by O(1).
_TOL = {torch.float32: (1e-3, 1e-5), torch.float64: (1e-9, 1e-11)}


def _probe_points(acc: torch.dtype) -> torch.Tensor:
    big = torch.finfo(acc).max
    special = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e-30, -1e-30, 1e30, -1e30, big, -big, 0.5, -0.5]
    return torch.cat([torch.linspace(-12, 12, 4801, dtype=acc), torch.tensor(special, dtype=acc)])


def _evaluate(lib: ctypes.CDLL, x: torch.Tensor, alpha: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(g′, ∂g/∂α) at x (1-D, contiguous, the compute dtype) from the library, as its walk computes them."""
    cty = ctypes.c_double if x.dtype == torch.float64 else ctypes.c_float
    gp, dga = torch.empty_like(x), torch.empty_like(x)
    lib.snn_fast_native_eval(ctypes.c_void_p(x.data_ptr()), cty(alpha), ctypes.c_void_p(gp.data_ptr()),
                             ctypes.c_void_p(dga.data_ptr()), ctypes.c_int64(x.numel()))
    return gp, dga


def _check(sg: _sg.Surrogate, lib: ctypes.CDLL, acc: torch.dtype) -> None:
    x = _probe_points(acc)
    kind = _sg.dalpha_kind(sg)
    base = sg.alpha if sg.alpha is not None else 1.0
    rtol, atol = _TOL[acc]
    for alpha in (base, 2.0 * base + 0.25):
        a = torch.tensor(alpha, dtype=acc)
        gp, dga = _evaluate(lib, x, alpha)
        with torch.no_grad():
            want_gp = sg.dg(x, a).to(acc).expand_as(x)
            if kind == _sg.DALPHA_ZERO:
                want_da = torch.zeros_like(x)
            elif kind == _sg.DALPHA_SCALED:
                want_da = x * want_gp / a
            else:
                want_da = sg.dg_dalpha(x, a).to(acc).expand_as(x)
        for what, got, want in (("g′", gp, want_gp), ("∂g/∂α", dga, want_da)):
            fin = want[torch.isfinite(want) & (x.abs() <= 12)]  # the scale of the values where they matter
            scale = float(fin.abs().max()) if fin.numel() else 1.0
            same = (got == want) | (got.isnan() & want.isnan())
            err = (got - want).abs()
            ok = same | (torch.isfinite(want) & (err <= rtol * want.abs() + atol * scale))
            if not bool(ok.all()):
                bad = (~ok).nonzero()[0].item()
                raise RuntimeError(f"its C++ {what} at x = {x[bad].item():.6g}, α = {alpha}: {got[bad].item():.9g}, "
                                   f"torch {want[bad].item():.9g}")


# --- the entry ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Native:
    """A loaded library: ``address`` of its walk (of one op) for one storage dtype, ``abi`` its ABI tag."""
    address: int
    abi: int
    lib: ctypes.CDLL
    path: str

    def evaluate(self, x: torch.Tensor, alpha: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """(g′, ∂g/∂α) at x (1-D, contiguous, the compute dtype) as the walk computes them."""
        return _evaluate(self.lib, x, alpha)


# (surrogate id, storage dtype) for the LIF op, (id, dtype, op) for another -> Native, or the reason
# there is none (a str)
_LOADED: Dict[tuple, object] = {}


def _loaded_key(sg: _sg.Surrogate, dtype: torch.dtype, op: str) -> tuple:
    return (sg.id, dtype) if op == "lif" else (sg.id, dtype, op)
_LOCK = threading.Lock()


def enabled(sg: _sg.Surrogate) -> bool:
    """register_surrogate(compile=True), $SNN_FAST_COMPILE_SURROGATES and $SNN_FAST_NATIVE_SURROGATES not
    "0" (read at each call), and the C++ extension built."""
    return (sg.compile and _ext.HAS_C and os.environ.get(ENV_COMPILE, "").strip() != "0"
            and os.environ.get(ENV_NATIVE, "").strip() != "0")


# surrogate id -> whether its functions translate (translatable's trace, once per surrogate)
_TRANSLATES: Dict[int, bool] = {}


def translatable(sg: _sg.Surrogate) -> bool:
    """Whether ``sg`` would get bn_lif's compiled walk here, short of building it: on, the op in this
    build, a compiler and the headers, and its functions translate (traced once per surrogate, not
    compiled; the check against torch comes at the build)."""
    if not enabled(sg) or not _ext.has_kernel("bn_lif_bwd_native", "CPU") or unavailable("bn_lif") is not None:
        return False
    ok = _TRANSLATES.get(sg.id)
    if ok is None:
        with torch._guards.tracing(None), torch.utils._python_dispatch._disable_current_modes(), torch.no_grad():
            try:
                translate(sg, torch.float32)
                ok = True
            except Untranslatable:
                ok = False
        _TRANSLATES[sg.id] = ok
    return ok


def why_not(sg: _sg.Surrogate, dtype: torch.dtype, op: str = "lif") -> Optional[str]:
    """Why ``sg`` has no compiled walk of ``op`` for ``dtype`` (after a lookup), None if it has one or was
    not tried."""
    r = _LOADED.get(_loaded_key(sg, dtype, op))
    return r if isinstance(r, str) else None


def lookup(sg: _sg.Surrogate, dtype: torch.dtype, op: str = "lif") -> Optional[Native]:
    """The compiled walk of ``sg`` for storage ``dtype`` and ``op`` ("lif", "bn_lif"): built (or loaded from
    the disk cache) at the first call, then kept for the process; None when it is off, or cannot be (the
    reason: ``why_not``)."""
    if not enabled(sg) or dtype not in _SCALARS:
        return None
    key = _loaded_key(sg, dtype, op)
    r = _LOADED.get(key)
    if r is None:
        with _LOCK:
            r = _LOADED.get(key)
            if r is None:
                r = _LOADED[key] = _make(sg, dtype, op)
    return r if isinstance(r, Native) else None


def _make(sg: _sg.Surrogate, dtype: torch.dtype, op: str = "lif"):
    """Native, or the reason there is none. Outside the caller's dispatch modes and Dynamo tracing
    context (the first use may come from inside torch.compile tracing the forward, under its fake
    mode: the translation's own trace must not add symbols or guards to the user's graph, and the
    probe runs real torch ops). Not on a thread of its own: torch 2.11's make_fx crashed there."""
    with torch._guards.tracing(None), torch.utils._python_dispatch._disable_current_modes():
        result, failed = _make_here(sg, dtype, op)
    if failed:  # warned here, on the caller's thread (and at the caller's line)
        warnings.warn(f"snn_fast: the surrogate {sg.name!r} could not be compiled into the C++ backward "
                      f"({op}, {dtype}): {result}; the torch.compile'd or eager path runs it instead. "
                      f"{ENV_NATIVE}=0 skips the attempt.", _sg.SurrogateCompileWarning, stacklevel=4)
    return result


def _load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    lib.snn_fast_native_abi.restype = ctypes.c_int64
    lib.snn_fast_native_bwd.restype = ctypes.c_void_p
    lib.snn_fast_native_eval.restype = None
    return lib


def _make_here(sg: _sg.Surrogate, dtype: torch.dtype, op: str = "lif"):
    """(Native or the reason there is none, whether that reason deserves a warning)."""
    with torch.no_grad():
        try:
            src = source(sg, dtype, op)
        except Untranslatable as e:
            return f"not translated: {e}", False
        why = unavailable(op)  # not a warning: the machine, not the surrogate (the torch.compile path warns)
        if why is not None:
            return why, False
        headers = _OPS[op].headers
        try:
            path = _build(src, headers)
            try:
                lib = _load(path)
            except OSError:  # a damaged file in the cache: built again, once
                os.remove(path)
                lib = _load(_build(src, headers))
            _check(sg, lib, torch.float64 if dtype == torch.float64 else torch.float32)
        except Exception as e:  # anything: the other paths run the surrogate
            return f"{type(e).__name__ + ': ' if not isinstance(e, RuntimeError) else ''}{e}", True
        return Native(int(lib.snn_fast_native_bwd()), int(lib.snn_fast_native_abi()), lib, path), False
