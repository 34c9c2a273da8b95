"""Compile one Triton kernel for an NVIDIA architecture without a GPU, and read what the compiler made of it.

``triton.compile`` builds a real cubin on a CPU-only machine when the Triton wheel ships the NVIDIA backend
(``ptxas`` and ``cuobjdump`` in ``triton/backends/nvidia/bin/``). The kernel is specialised exactly as a launch
with the same arguments would be (Triton's own rules: pointers 16-byte aligned, ints equal to 1 become
constants, ints divisible by 16 get a divisibility hint, unless the kernel says ``do_not_specialize``); the
arguments may be ``meta`` tensors, which carry dtype, shape and strides but no memory.

Read from the cubin: registers per thread, stack bytes per thread (local memory: register spills), shared
memory, the tensor-core instruction kind (``wgmma`` on sm90, ``mma`` = ``mma.sync``) and the SASS instruction
count with its local stores / loads (``STL`` / ``LDL``).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import triton

__all__ = ["CompileResult", "ToolsMissing", "compile_kernel", "compile_key", "nvidia_tools"]


class ToolsMissing(RuntimeError):
    """The Triton wheel has no NVIDIA backend tools (``ptxas`` / ``cuobjdump``)."""


@dataclass
class CompileResult:
    registers: int = 0
    stack: int = 0  # bytes of local memory per thread; > 0 means register spills
    shared: int = 0  # bytes of shared memory per block
    tensor_cores: str = "-"  # "wgmma", "mma" or "-"
    sass: int = 0  # SASS instructions
    local_stores: int = 0  # STL instructions
    local_loads: int = 0  # LDL instructions
    error: str = ""  # first line of the compile error, empty when it compiled

    def as_dict(self) -> dict:
        return asdict(self)


def nvidia_tools() -> dict[str, str]:
    """Paths of ``cuobjdump`` and ``ptxas`` in the Triton wheel; raises :class:`ToolsMissing` naming the fix."""
    try:
        from triton.backends import nvidia
    except ImportError as exc:
        raise ToolsMissing(
            f"this Triton ({triton.__version__}) has no NVIDIA backend; install the regular Linux x86-64 or "
            "aarch64 wheel from PyPI (pip install triton), which ships ptxas and cuobjdump"
        ) from exc
    bin_dir = os.path.join(os.path.dirname(nvidia.__file__), "bin")
    tools = {name: os.path.join(bin_dir, name) for name in ("cuobjdump", "ptxas")}
    missing = [path for path in tools.values() if not (os.path.isfile(path) and os.access(path, os.X_OK))]
    if missing:
        raise ToolsMissing(
            f"the Triton wheel ({triton.__version__}) lacks the NVIDIA backend tools ({', '.join(missing)}); "
            "install the regular Linux wheel from PyPI (pip install triton), which ships them"
        )
    return tools


def _specialize(fn, args: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for ``fn`` called with ``args`` (every parameter by name)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    signature, constexprs, attrs = {}, {}, {}
    missing = [p.name for p in fn.params if p.name not in args]
    if missing:
        raise TypeError(f"{fn.__name__}: no value for {', '.join(missing)}")
    for i, param in enumerate(fn.params):
        value = args[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
            continue
        kind, attr = native_specialize_impl(BaseBackend, value, False, not param.do_not_specialize, True)
        signature[param.name] = kind
        if kind == "constexpr":
            constexprs[param.name] = attr
        elif attr == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def _jit_sources(fn, seen: dict | None = None) -> dict[str, str]:
    """Source text of ``fn`` and of every ``@triton.jit`` function it reaches through its module's globals (no
    line numbers: moving a kernel in its file does not change its key)."""
    seen = {} if seen is None else seen
    if fn.__name__ in seen:
        return seen
    seen[fn.__name__] = fn.src
    module_globals = fn.fn.__globals__
    for name in sorted(set(re.findall(r"[A-Za-z_]\w*", fn.src))):
        value = module_globals.get(name)
        if isinstance(value, triton.runtime.jit.JITFunction):
            _jit_sources(value, seen)
        elif name.isupper() and isinstance(value, (int, float, str)):
            seen[f"global {name}"] = repr(value)
    return seen


def compile_key(fn, args: dict, arch: int, num_warps: int, num_stages: int) -> str:
    """Hash of everything that decides the cubin: the kernel's and its helpers' source, the specialisation, the
    architecture, the launch options and the Triton version (which fixes ptxas)."""
    signature, constexprs, attrs = _specialize(fn, args)
    parts = [
        triton.__version__, f"sm{arch}", f"warps={num_warps}", f"stages={num_stages}",
        repr(sorted(_jit_sources(fn).items())), repr(signature), repr(sorted(constexprs.items())),
        repr(sorted(attrs.items())),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text, flags=re.MULTILINE))


def compile_kernel(fn, args: dict, arch: int, num_warps: int, num_stages: int) -> CompileResult:
    """Compile ``fn`` for ``sm{arch}`` (80 or 90) with ``args`` and read its resource use; a compile error is
    returned in ``error``, never raised. Raises :class:`ToolsMissing` when the wheel cannot build cubins."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    tools = nvidia_tools()
    signature, constexprs, attrs = _specialize(fn, args)
    target = GPUTarget("cuda", arch, 32)
    try:
        compiled = triton.compile(
            ASTSource(fn, signature, constexprs, attrs), target=target,
            options={"num_warps": num_warps, "num_stages": num_stages},
        )
    except Exception as exc:  # the compiler's own error, whatever its class
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        lines = [line.strip() for line in str(cause).splitlines() if line.strip().strip("^")]
        return CompileResult(error=f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:300])
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([tools["cuobjdump"], "--dump-resource-usage", cubin], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([tools["cuobjdump"], "-sass", cubin], capture_output=True, text=True,
                              check=True).stdout
    registers = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    tensor_cores = "wgmma" if "wgmma.mma_async" in ptx else "mma" if "mma.sync" in ptx else "-"
    return CompileResult(
        registers=int(registers.group(1)) if registers else -1,
        stack=int(stack.group(1)) if stack else -1,
        shared=int(compiled.metadata.shared),
        tensor_cores=tensor_cores,
        sass=_count(r"^\s+/\*[0-9a-f]{4,}\*/\s+\S", sass),
        local_stores=_count(r"\bSTL(\.\w+)*\s", sass),
        local_loads=_count(r"\bLDL(\.\w+)*\s", sass),
    )

