"""snn_fast.autotable: the GPU backend order read from a table of measured times (the LIF op's
table, ``snn_fast/ops/lif/autotable.json``, as the op's backend table names it).

Only shapes and dtypes matter to the lookup, so these run on CPU tensors with temporary tables.
"""
from __future__ import annotations

import json

import pytest
import torch

from snn_fast.autotable import DEFAULT
from snn_fast.ops.lif.function import BACKENDS

autotable = BACKENDS.autotable


@pytest.fixture(autouse=True)
def _fresh_cache():
    autotable.clear_cache()
    yield
    autotable.clear_cache()


def _write(tmp_path, entries, name="table.json"):
    p = tmp_path / name
    p.write_text(json.dumps({"version": 1, "entries": entries}))
    return str(p)


def _entry(dtype, T, N, cuda_ms, triton_ms, device=None):
    e = dict(dtype=dtype, T=T, N=N, cuda_ms=cuda_ms, triton_ms=triton_ms)
    if device:
        e["device"] = device
    return e


def test_checked_in_table_is_valid_and_not_invented():
    with open(autotable.path) as f:
        data = json.load(f)
    assert data["version"] == 1
    for e in data["entries"]:  # measured entries, if any, are complete
        assert {"dtype", "T", "N", "cuda_ms", "triton_ms", "device"} <= e.keys()
    if not data["entries"]:
        assert "not measured" in data.get("note", "").lower()


def test_missing_or_empty_table_gives_default(tmp_path, monkeypatch):
    monkeypatch.setenv(autotable.env_var, str(tmp_path / "absent.json"))
    assert autotable.preference(torch.empty(8, 100)) == DEFAULT
    monkeypatch.setenv(autotable.env_var, _write(tmp_path, []))
    assert autotable.preference(torch.empty(8, 100)) == DEFAULT


def test_malformed_table_warns_and_gives_default(tmp_path, monkeypatch):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    monkeypatch.setenv(autotable.env_var, str(p))
    with pytest.warns(UserWarning, match="autotable"):
        assert autotable.preference(torch.empty(4, 10)) == DEFAULT


def test_faster_backend_comes_first(tmp_path, monkeypatch):
    monkeypatch.setenv(autotable.env_var, _write(tmp_path, [
        _entry("float32", 8, 1 << 20, cuda_ms=2.0, triton_ms=1.0),
        _entry("bfloat16", 8, 1 << 20, cuda_ms=1.0, triton_ms=2.0),
    ]))
    assert autotable.preference(torch.empty(8, 1 << 20)) == ("triton", "cuda")
    assert autotable.preference(torch.empty(8, 1 << 20, dtype=torch.bfloat16)) == ("cuda", "triton")
    # no float16 entry: the default, not another dtype's measurement
    assert autotable.preference(torch.empty(8, 1 << 20, dtype=torch.float16)) == DEFAULT


def test_nearest_bucket_in_log_space(tmp_path, monkeypatch):
    monkeypatch.setenv(autotable.env_var, _write(tmp_path, [
        _entry("float32", 4, 1 << 14, cuda_ms=1.0, triton_ms=2.0),   # small: cuda faster
        _entry("float32", 64, 1 << 22, cuda_ms=3.0, triton_ms=2.0),  # large: triton faster
    ]))
    assert autotable.preference(torch.empty(2, 1000)) == ("cuda", "triton")
    assert autotable.preference(torch.empty(32, 64, 32768)) == ("triton", "cuda")  # N = x[0].numel()


def test_same_gpu_entries_win(tmp_path, monkeypatch):
    monkeypatch.setenv(autotable.env_var, _write(tmp_path, [
        _entry("float32", 8, 4096, cuda_ms=1.0, triton_ms=2.0, device="GPU A"),
        _entry("float32", 8, 4096, cuda_ms=2.0, triton_ms=1.0, device="GPU B"),
    ]))
    entries = autotable.load()
    assert autotable.order_for(entries, "float32", 8, 4096, device="GPU A") == ("cuda", "triton")
    assert autotable.order_for(entries, "float32", 8, 4096, device="GPU B") == ("triton", "cuda")


def test_missing_measurement_puts_the_measured_backend_first(tmp_path):
    entries = [_entry("float32", 8, 4096, cuda_ms=float("nan"), triton_ms=1.0)]
    assert autotable.order_for(entries, "float32", 8, 4096) == ("triton", "cuda")


def test_backends_select_uses_the_table(tmp_path, monkeypatch):
    """The op's gpu_preference consults its table (CUDA tensors only; called directly here)."""
    monkeypatch.setenv(autotable.env_var, _write(tmp_path, [_entry("float32", 8, 64, cuda_ms=9.0, triton_ms=1.0)]))
    assert BACKENDS.gpu_preference(torch.empty(8, 64)) == ("triton", "cuda")


def test_an_op_without_a_table_uses_the_default_order(tmp_path, monkeypatch):
    """The chooser is generic: Tempotron has no measured table, so the default GPU order stands."""
    from snn_fast.ops.tempotron.function import BACKENDS as TEMPOTRON

    monkeypatch.setenv(autotable.env_var, _write(tmp_path, [_entry("float32", 8, 64, cuda_ms=9.0, triton_ms=1.0)]))
    assert TEMPOTRON.autotable is None
    assert TEMPOTRON.gpu_preference(torch.empty(8, 64)) == DEFAULT


def test_table_of_other_backends(tmp_path):
    """Any op may name its own backends: ``<name>_ms`` per backend, fastest first."""
    from snn_fast.autotable import AutoTable

    p = tmp_path / "t.json"
    p.write_text(json.dumps({"version": 1, "entries": [dict(dtype="float32", T=4, N=64, a_ms=3.0, b_ms=1.0, c_ms=2.0),
                                                       dict(dtype="float32", T=4, N=64, a_ms=1.0)]}))
    t = AutoTable(str(p), backends=("a", "b", "c"))
    assert len(t.load()) == 1  # the incomplete entry is left out
    assert t.preference(torch.empty(4, 64)) == ("b", "c", "a")
