from pathlib import Path

import pytest
import torch
from torch import nn

from core.runtime import HostCopy, check_finite, compile_if_requested


def test_host_copy_of_a_cpu_tensor_is_the_tensor_itself():
    values = torch.arange(6.0).reshape(2, 3)
    assert HostCopy(values).wait() is values


def test_check_finite_names_what_and_the_epoch():
    check_finite(torch.tensor(3.5), "MMDC", 1)
    with pytest.raises(FloatingPointError, match="IMC loss became non-finite during epoch 7"):
        check_finite(torch.tensor(float("inf")), "IMC", 7)


def test_compile_is_off_unless_the_environment_names_a_mode(monkeypatch):
    monkeypatch.delenv("CORRAL_TORCH_COMPILE", raising=False)
    eager = compile_if_requested(nn.Linear(2, 2))
    assert eager._compiled_call_impl is None
    monkeypatch.setenv("CORRAL_TORCH_COMPILE", "default")
    compiled = compile_if_requested(nn.Linear(2, 2))
    assert compiled._compiled_call_impl is not None
    assert set(compiled.state_dict()) == {"weight", "bias"}  # checkpoints keep the eager keys


def test_auto_precision_is_bf16_exactly_on_cpus_that_compute_it_natively():
    from core.runtime import native_bf16_cpu, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "fp32") == "fp32" and resolve_precision(cpu, "bf16") == "bf16"
    flags = Path("/proc/cpuinfo").read_text().split()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert native_bf16_cpu() is native
    assert resolve_precision(cpu, "auto") == ("bf16" if native else "fp32")
