"""make bench-infer names the CPU and the INT8 instructions it has, which decide how fast INT8 runs."""
from __future__ import annotations

from pathlib import Path

from benchmarks.infer import cpu_description  # scripts/ is on the tests' path


def test_the_model_and_the_int8_instructions_are_named(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    block = "processor\t: {n}\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni bmi2\n\n"
    cpuinfo.write_text(block.format(n=0) + block.format(n=1))
    assert cpu_description(cpuinfo) == "AMD EPYC (avx2 avx512f avx512_vnni)"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Old CPU\nflags\t\t: fpu sse2\n")
    assert cpu_description(cpuinfo) == "Old CPU (none of avx2, avx512f, avx512_vnni, avx_vnni, amx_int8)"
    assert cpu_description(tmp_path / "missing") == "unknown CPU"
