"""The bytes the fused batch norm + LIF moves, measured (``benchmarks/bytes_bn_lif.py``), against the
count of ``snn_fast/ops/bn_lif/memory.py``: the parsers of both tools' outputs, and on the CPU the
measurement itself, a cache simulation, so its counts do not depend on the machine's load.

The end-to-end test runs the C++ op under valgrind's callgrind at a size whose passes (16 MiB) are 16×
the simulated last-level cache (1 MiB, as this host's L2, which the CPU kernels' per-block scratches
are sized for): every pass then goes through memory and the fused op must move what the model counts,
within the issue's 15 %. A kernel that adds a pass over [T, N] (a scratch written and read back, a
copy) fails it.
"""
import os
import shutil
import sys

import pytest
import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snn_fast  # noqa: E402
from benchmarks import bytes_bn_lif as bb  # noqa: E402

# A callgrind output file as callgrind 3.19 wrote it here (its header and totals from a real run; one
# function's costs kept of the body).
CALLGRIND_OUT = """\
# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 10388
cmd:  python bytes_bn_lif.py cpu --child
part: 1

desc: I1 cache: 32768 B, 64 B, 8-way associative
desc: D1 cache: 32768 B, 64 B, 8-way associative
desc: LL cache: 262144 B, 64 B, 16-way associative

desc: Timerange: Basic block 0 - 13178640
desc: Trigger: Client Request: measured

positions: line
events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw ILdmr DLdmr DLdmw
summary: 15593082 4471683 6626787 24308 555766 305535 12712 298513 214620 3461 157470 124809

ob=(1) /work/main/snn_fast/_C.so
fl=(1) ???
fn=(1) run_moments
0 832512 144384 6144 11 32768 0 11 32768 0 1 539

totals: 15593082 4471683 6626787 24308 555766 305535 12712 298513 214620 3461 157470 124809
"""

# `ncu --csv --print-units base` (details page) with ncu's own lines before it, two kernels, one of
# them with the metrics in another unit and a thousands separator. Written from ncu's documented
# columns and public captures of them (the section "Command line profiler metrics", "2,816"-style
# values), not captured here (no GPU): the first GPU run of the stage checks the real format.
NCU_HEADER = ["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream", "Block Size",
              "Grid Size", "Device", "CC", "Section Name", "Metric Name", "Metric Unit", "Metric Value"]


def _ncu_row(kid, kernel, metric, unit, value):
    return [kid, "4242", "python3.12", "127.0.0.1", kernel, "1", "7", "(256, 1, 1)", "(64, 1, 1)", "0", "9.0",
            "Command line profiler metrics", metric, unit, value]


NCU_OUT = "\n".join([
    "==PROF== Connected to process 4242 (/usr/bin/python3.12)",
    '==PROF== Profiling "bn_lif_stats_kernel" - 0: 0%....50%....100% - 1 pass',
    "==PROF== Disconnected from process 4242",
] + [",".join(f'"{v}"' for v in r) for r in [
    NCU_HEADER,
    _ncu_row("0", "bn_lif_stats_kernel", "dram__bytes_read.sum", "byte", "102,760,448"),
    _ncu_row("0", "bn_lif_stats_kernel", "dram__bytes_write.sum", "byte", "4,096"),
    _ncu_row("0", "bn_lif_stats_kernel", "lts__t_sectors_srcunit_tex_op_write.sum", "sector", "128"),
    _ncu_row("1", "bn_lif_fwd_kernel", "dram__bytes_read.sum", "Mbyte", "102.76"),
    _ncu_row("1", "bn_lif_fwd_kernel", "dram__bytes_write.sum", "Mbyte", "90.5"),
    _ncu_row("1", "bn_lif_fwd_kernel", "lts__t_sectors_srcunit_tex_op_write.sum", "sector", "3,211,264"),
]]) + "\n"


def test_parse_callgrind():
    counts = bb.parse_callgrind(CALLGRIND_OUT)
    assert counts["DLmr"] == 298513 and counts["DLdmw"] == 124809 and counts["Ir"] == 15593082
    got = bb.callgrind_bytes(counts)
    assert got["read"] == 298513 * 64  # DLmr (data only: not ILmr)
    assert got["allocated"] == 214620 * 64  # DLmw
    assert got["written"] == (157470 + 124809) * 64  # DLdmr + DLdmw (not ILdmr)


def test_parse_callgrind_refuses_other_files():
    with pytest.raises(ValueError, match="not a callgrind output"):
        bb.parse_callgrind("events: Ir\n")
    no_cache = CALLGRIND_OUT.replace("events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw ILdmr DLdmr DLdmw",
                                     "events: Ir")
    with pytest.raises(ValueError, match="cache-sim"):
        bb.callgrind_bytes(bb.parse_callgrind(no_cache))


def test_parse_ncu_csv():
    got = bb.parse_ncu_csv(NCU_OUT)
    assert got["read"] == 102_760_448 + 102_760_000
    assert got["written"] == (128 + 3_211_264) * 32  # the stores reaching L2, in 32-byte sectors
    assert got["dram_written"] == 4_096 + 90_500_000
    assert got["kernels"] == ["bn_lif_stats_kernel", "bn_lif_fwd_kernel"]


def test_parse_ncu_csv_without_units():
    """An ncu that leaves the unit column empty: each metric in its own unit (a sector count stays
    sectors), and ncu's closing line after the CSV is no row."""
    bare = NCU_OUT.replace('"byte"', '""').replace('"Mbyte","102.76"', '"","102,760,000"')
    bare = bare.replace('"Mbyte","90.5"', '"","90,500,000"').replace('"sector"', '""')
    assert not any(f'"{u}"' in bare for u in ("sector", "byte", "Mbyte"))
    got = bb.parse_ncu_csv(bare + "==PROF== Disconnected from process 4242\n")
    assert got == bb.parse_ncu_csv(NCU_OUT)


@pytest.mark.parametrize("bad, match", [
    ("==PROF== No kernels were profiled.\n", "no CSV header"),
    (NCU_OUT.replace('"102.76"', '"n/a"'), "not a number"),
    (NCU_OUT.replace('"Mbyte"', '"furlong"'), "unknown unit"),
    (NCU_OUT.replace("dram__bytes", "lts__t_bytes"), "no dram__bytes_read.sum"),
    (NCU_OUT.replace("lts__t_sectors_srcunit_tex_op_write", "lts__t_other"), "no lts__t_sectors_srcunit"),
])
def test_parse_ncu_csv_refuses(bad, match):
    with pytest.raises(ValueError, match=match):
        bb.parse_ncu_csv(bad)


def test_model_passes_are_memory_py():
    from snn_fast.ops.bn_lif import memory

    assert (memory.STATE_ROWS, memory.UNIFORM_START_ROWS) == (4, 1)
    for T in (1, 4, 16):  # the benchmark's steps start from v0=None: both ops' v0 is [1]
        shape = (T, 8, 16, 128, 64)  # by channel (runs of 8192), 3 MiB a channel at T = 4: over half of 1 MiB
        for dev, ll in (("cpu", 1 << 20), ("cuda", None)):
            assert bb.model_passes("snn_fast-bn_lif", shape, dev, ll) == sum(memory.FUSED_PASSES.values()) + 1 / T
            assert bb.model_passes(bb.UNFUSED, shape, dev, ll) == sum(memory.UNFUSED_PASSES.values()) + 1 / T
        # the CPU kernel's backward channel by channel, a channel held in the cache: 3 backward passes,
        # not 6 (never on a GPU); at T = 16 a channel is 12 MiB, over the 8 MiB it goes by channel within
        assert bb.model_passes("snn_fast-bn_lif", shape, "cpu", 32 << 20) == (6 if T < 16 else 9) + 1 / T
        assert bb.model_passes("snn_fast-bn_lif", shape, "cuda", 32 << 20) == 9 + 1 / T
    assert memory.fused_bytes(4, 10, torch.float32, uniform_start=False) == (9 * 4 + 4) * 10 * 4
    assert memory.fused_bytes(4, 10, torch.float32, by_channel=True) == (6 * 4 + 1) * 10 * 4
    assert memory.fused_bytes(4, 10, torch.float32, training=False, by_channel=True) == (5 * 4 + 1) * 10 * 4
    assert memory.unfused_bytes(4, 10, torch.float32, uniform_start=False) == (13 * 4 + 4) * 10 * 4


def _can_simulate():
    if not snn_fast.HAS_C:
        return "needs the C++ extension"
    if shutil.which("valgrind") is None:
        return "needs valgrind"
    if not os.path.exists("/usr/include/valgrind/callgrind.h"):
        return "needs valgrind's callgrind.h"
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return "needs a C compiler (the client-request library)"
    return None


@pytest.mark.skipif(_can_simulate() is not None, reason=str(_can_simulate()))
def test_cpu_fused_op_moves_the_counted_passes():
    """The measurement end to end on the CPU (callgrind, 1 MiB last level, [4, 8, 16, 128, 64]: 16 MiB
    a pass): the fused op within 5 % of the model (9.25 passes; before v0=None became a [1] start,
    10.17–10.26 of 10 with the instruction misses) and within the issue's 15 % of 9 passes. Batch norm + the
    LIF op is left out here (another child under valgrind, ~50 s): the benchmark measures it."""
    shape = (4, 8, 16, 128, 64)
    (row,) = bb.run("cpu", [shape], ll=1 << 20, only=["snn_fast-bn_lif"])
    assert row["model_passes"] == 9.25 and row["target_passes"] == 9
    assert abs(row["vs_model"] - 1) <= 0.05, row  # the model, rows of N included (heap layout: ±0.1 pass)
    assert row["vs_target"] <= 1 + bb.TOLERANCE, row  # the issue's: within 15 % of 9 passes
    assert row["allocated_bytes"] > 0 and row["written_bytes"] > 0, row


@pytest.mark.skipif(_can_simulate() is not None, reason=str(_can_simulate()))
def test_cpu_by_channel_moves_six_passes():
    """The CPU kernel's training backward channel by channel, measured: at [4, 4, 64, 42, 50] (8.6 MB a
    pass, 8× the simulated 1 MiB last level; runs of 2100) a channel's x, ∂L/∂S and ∂L/∂x are 403 KB,
    so its batch-statistics pass finds them in the cache: the model's 6.25 passes (memory.py
    fused_bytes(by_channel=True)), within 5 % (measured 6.35). By blocks of the row (the walk, then the
    pass over all of [T, N]) it moves 9.25 and fails. Runs of a power of two (2048, with 64 channels)
    measured 8.12 here: a channel's 48 runs then start 512 KiB apart and all fall into the same 128 sets of
    the 16-way simulated cache, which keeps 16 of them, a conflict of the layout, not of the kernel."""
    shape = (4, 4, 64, 42, 50)
    (row,) = bb.run("cpu", [shape], ll=1 << 20, only=["snn_fast-bn_lif"])
    assert row["model_passes"] == 6.25, row
    assert abs(row["vs_model"] - 1) <= 0.05, row


def test_strict_fails_over_the_target(monkeypatch, capsys):
    """--strict exits 1 where a fused row moves more than 15 % over 9 passes (the GPU check's stage uses
    it), not for batch norm + LIF's rows, and not for fewer bytes (a cache keeping a small shape)."""
    def rows(passes, provider="snn_fast-bn_lif"):
        return [dict(provider=provider, shape="4x2x2x2x2", read_bytes=1, written_bytes=1, allocated_bytes=None,
                     passes=passes, model_passes=10.0, vs_model=passes / 10, target_passes=9.0,
                     vs_target=passes / 9, tool="fake")]

    for got, rc in ((rows(10.3), 0), (rows(12.0, bb.UNFUSED) + rows(6.0), 0), (rows(10.4), 1)):
        monkeypatch.setattr(bb, "run", lambda *a, got=got, **k: got)
        assert bb.main(["cuda", "--strict"]) == rc, got
        assert bb.main(["cuda"]) == 0
    assert "more than 15% over 9" in capsys.readouterr().out


def test_unknown_provider_is_refused(capsys):
    assert bb.main(["cpu", "--provider", "snn_fast-bn_lif-trition"]) == 2
    assert "unknown provider(s) ['snn_fast-bn_lif-trition']" in capsys.readouterr().err
