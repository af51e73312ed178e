"""Choosing the interface Gloo/NCCL use: the configured one when it exists, else the one that
routes to the rendezvous host (SDK v3's local mode names `ethwe`, which containers lack)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ssd_detector.errors import JobFailed
from ssd_detector.training import interfaces


def test_an_existing_interface_is_kept():
    assert interfaces.choose_interface("lo", "127.0.0.1") == "lo"


def test_a_missing_interface_is_replaced_by_the_one_reaching_the_peer(caplog):
    with caplog.at_level(logging.WARNING):
        assert interfaces.choose_interface("ethwe", "127.0.0.1") == "lo"
    message = caplog.records[-1].getMessage()
    assert "'ethwe'" in message and "using 'lo'" in message and "127.0.0.1" in message


def test_a_missing_interface_without_a_route_is_a_clear_failure(monkeypatch):
    monkeypatch.setattr(interfaces, "interface_address", lambda name: None)
    monkeypatch.setattr(interfaces, "route_interface", lambda peer: None)
    with pytest.raises(JobFailed) as info:
        interfaces.choose_interface("ethwe", "127.0.0.1")
    assert "'ethwe'" in info.value.reason and "127.0.0.1" in info.value.reason and info.value.exit_code == 1


def test_route_table_longest_prefix(tmp_path: Path):
    table = tmp_path / "route"
    # Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT (little-endian hex)
    table.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth1\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n")
    assert interfaces.route_interface("172.17.0.5", table) == "eth1"
    assert interfaces.route_interface("10.0.0.1", table) == "eth0"
    assert interfaces.route_interface("10.0.0.1", tmp_path / "absent") is None


def test_the_launcher_gives_workers_an_interface_this_host_has(tmp_path: Path, monkeypatch):
    from ssd_detector.sagemaker_env import Paths, ResourceConfig
    from ssd_detector.training import launcher

    resources = ResourceConfig(current_host="algo-1", hosts=("algo-1",), network_interface_name="ethwe")
    job = launcher.Launcher(Paths(tmp_path), resources, per_host=2, environ={})
    seen = {}

    def start(slots, address, scratch, shared_pipes):  # stands in for Launcher._start
        seen["interface"] = job.interface
    monkeypatch.setattr(job, "_start", start)
    monkeypatch.setattr(job, "_watch", lambda deadline: None)
    monkeypatch.setattr(launcher.distributed, "Rendezvous", lambda port, slots: type(
        "R", (), {"stop": lambda self: None})())
    job.run()
    assert seen["interface"] == "lo"


def test_a_taken_rendezvous_port_names_the_setting(tmp_path: Path):
    import socket

    from ssd_detector.sagemaker_env import Paths, ResourceConfig
    from ssd_detector.training import launcher

    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        resources = ResourceConfig(current_host="algo-1", hosts=("algo-1",), network_interface_name="lo")
        job = launcher.Launcher(Paths(tmp_path), resources, per_host=2, environ={"SSD_RENDEZVOUS_PORT": str(port)})
        with pytest.raises(JobFailed) as info:
            job.run()
    assert f"port {port}" in info.value.reason and "SSD_RENDEZVOUS_PORT" in info.value.reason
    assert info.value.exit_code == 1
