"""The Nsight Compute wrapper: its plan names every (kernel, shape) it profiles, and ncu's CSV becomes one record per
profiled launch with its metrics by section (numbers as floats, thousands separators dropped)."""

from __future__ import annotations

from benchmarks import gpu_profile

CSV = '''==PROF== Connected to process 123
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","123","python","h","_tc_gemm_kernel","1","7","(128, 1, 1)","(3072, 1, 1)","0","9.0","GPU Speed Of Light Throughput","Duration","us","213.50"
"0","123","python","h","_tc_gemm_kernel","1","7","(128, 1, 1)","(3072, 1, 1)","0","9.0","GPU Speed Of Light Throughput","L2 Cache Throughput","%","61.2"
"1","123","python","h","_gluon_gemm_kernel","1","7","(256, 1, 1)","(1536, 1, 1)","0","9.0","GPU Speed Of Light Throughput","Duration","us","1,120.00"
"1","123","python","h","_gluon_gemm_kernel","1","7","(256, 1, 1)","(1536, 1, 1)","0","9.0","Warp State Statistics","Stall Reason","","wgmma"
'''


def test_parse_ncu_csv() -> None:
    recs = gpu_profile.parse_ncu_csv(CSV)
    assert [r["kernel"] for r in recs] == ["_tc_gemm_kernel", "_gluon_gemm_kernel"]
    sol = recs[0]["metrics"]["GPU Speed Of Light Throughput"]
    assert sol["Duration"] == {"value": 213.5, "unit": "us"} and sol["L2 Cache Throughput"]["value"] == 61.2
    assert recs[1]["metrics"]["GPU Speed Of Light Throughput"]["Duration"]["value"] == 1120.0
    assert recs[1]["metrics"]["Warp State Statistics"]["Stall Reason"]["value"] == "wgmma"
    assert recs[1]["grid"] == "(1536, 1, 1)" and gpu_profile.parse_ncu_csv("no profile") == []


def test_plan_lists_both_kernels(capsys) -> None:
    assert gpu_profile.main(["--plan"]) == 0
    out = capsys.readouterr().out
    assert "tc GEMM W4A4 wan-1.3b attn 32760x1536x1536" in out and "gluon GEMM W4A4 wan-14b ffn_up" in out
    assert "gluon GEMM W4A4 wan-14b ffn_up m256" not in out  # small M: the Gluon kernel does not run there
