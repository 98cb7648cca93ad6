from types import SimpleNamespace

import pytest

from fslm import cpu


@pytest.fixture(autouse=True)
def no_thread_setting(monkeypatch):
    monkeypatch.setattr(cpu, "get_settings", lambda: SimpleNamespace(threads=0))


def test_jiffies_parse_a_proc_stat_line():
    busy, total = cpu.cpu_jiffies("cpu  100 5 50 800 20 0 5 0 0 0")
    assert (busy, total) == (160, 980)  # idle 800 + iowait 20 are not busy


def test_busy_cores_is_the_busy_share_of_the_sample_times_cores():
    samples = iter([(1000, 4000), (1150, 4200)])  # 150 of 200 jiffies busy
    assert cpu.busy_cores(2, sample_s=0, read=lambda: next(samples)) == 1.5


def test_busy_cores_without_proc_stat_is_unknown():
    assert cpu.busy_cores(2, sample_s=0, read=lambda: None) is None


def test_thread_choice_follows_other_processes(monkeypatch):
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpu, "busy_cores", lambda cores: 0.1)
    assert cpu.pick_threads() == 2
    monkeypatch.setattr(cpu, "busy_cores", lambda cores: 1.2)
    assert cpu.pick_threads() == 1
    monkeypatch.setattr(cpu, "busy_cores", lambda cores: 5.0)
    assert cpu.pick_threads() == 1  # never zero
    assert cpu.pick_threads(requested=2) == 2


def test_load_average_is_the_fallback(monkeypatch):
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpu, "busy_cores", lambda cores: None)
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (1.9, 1.0, 1.0))
    assert cpu.pick_threads() == 1
    assert cpu.pick_threads(own=2) == 2  # our own threads are not "others"


def test_bf16_is_fast_only_with_native_bf16_instructions():
    assert cpu.bf16_is_fast("flags : fpu sse avx2 avx512f avx512_bf16") is True
    assert cpu.bf16_is_fast("flags : fpu sse avx2 amx_tile amx_bf16") is True
    assert cpu.bf16_is_fast("flags : fpu sse avx2 fma") is False


def test_cpu_model_names_the_cpu_and_its_bf16_support():
    info = "processor : 0\nmodel name : Intel(R) Xeon(R) Processor\nflags : fpu avx2 amx_bf16\n\nprocessor : 1\nmodel name : Intel(R) Xeon(R) Processor\n"
    assert cpu.cpu_model(info) == "Intel(R) Xeon(R) Processor (native bf16)"
    assert cpu.cpu_model("flags : fpu avx2\n") == "unknown (no native bf16)"
    assert cpu.cpu_model()  # this machine: something, never an exception
