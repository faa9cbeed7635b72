"""Sandboxed execution of untrusted (model-generated) Python code; see docs/sandbox.md."""

from t2ray.sandbox.runner import (
    VERDICTS,
    SandboxLimits,
    SandboxPool,
    SandboxResult,
    run_python,
    sandbox_capabilities,
)

__all__ = [
    "VERDICTS",
    "SandboxLimits",
    "SandboxPool",
    "SandboxResult",
    "run_python",
    "sandbox_capabilities",
]
