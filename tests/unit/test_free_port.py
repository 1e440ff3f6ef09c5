"""``free_port`` hands out ports that a Ray head's own processes cannot be given in the moment
before the port's owner binds it: they bind port 0, i.e. the OS's ephemeral range (CI once failed
when a head's dashboard lost its port that way)."""

from __future__ import annotations

import socket

from vsearch.runtime import cluster


def test_free_ports_are_free_and_outside_the_ephemeral_range() -> None:
    low, high = cluster._ephemeral_ports()
    ports = [cluster.free_port() for _ in range(20)]
    for port in ports:
        assert not low <= port <= high, port
        assert port >= cluster._ABOVE_RAY_WORKERS
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_no_port_is_handed_out_twice(monkeypatch) -> None:
    # A band of 1,000 ports: 200 draws without the memory would repeat one almost surely.
    monkeypatch.setattr(cluster, "_ABOVE_RAY_WORKERS", 21000)
    monkeypatch.setattr(cluster, "_ephemeral_ports", lambda: (22000, 60999))
    monkeypatch.setattr(cluster, "_HANDED_OUT", cluster.collections.deque(maxlen=256))
    ports = [cluster.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_a_taken_port_is_not_handed_out(monkeypatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        draws = iter([port, port, port + 1])

        class Draws:
            def randrange(self, start: int, stop: int) -> int:
                return next(draws)

        monkeypatch.setattr(cluster.random, "SystemRandom", Draws)
        monkeypatch.setattr(cluster, "_ABOVE_RAY_WORKERS", port - 1000)
        monkeypatch.setattr(cluster, "_ephemeral_ports", lambda: (port + 1000, port + 2000))
        assert cluster.free_port() == port + 1


def test_without_a_band_it_falls_back_to_an_ephemeral_port(monkeypatch) -> None:
    monkeypatch.setattr(cluster, "_ephemeral_ports", lambda: (20100, 60999))
    port = cluster.free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
