"""Shared test fixtures: where the real-city scenarios are, and small generated networks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import sumo

from urbanbrain.network import read_network

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = Path(os.environ.get("URBANBRAIN_SCENARIOS", ROOT.parent / "shared" / "scenarios"))


def scenario_cfg(folder: str) -> Path:
    """The .sumocfg of a shared real-city scenario, or skip with the reason."""
    configs = sorted((SCENARIOS / folder).glob("*.sumocfg"))
    if not configs:
        pytest.skip(f"real-city scenario {folder!r} not found under {SCENARIOS} (set URBANBRAIN_SCENARIOS)")
    return configs[0]


def netgenerate(out: Path, *args: str) -> Path:
    binary = Path(sumo.SUMO_HOME) / "bin" / "netgenerate"
    subprocess.run([str(binary), *args, "--output-file", str(out), "--seed", "1"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def grid_net(tmp_path_factory) -> Path:
    """A 2x2 signalised grid with fringe roads, made by SUMO's netgenerate."""
    out = tmp_path_factory.mktemp("grid") / "grid.net.xml"
    return netgenerate(out, "--grid", "--grid.number", "2", "--grid.length", "150", "--grid.attach-length", "150",
                       "--tls.guess", "--default.lanenumber", "2", "--no-turnarounds")


@pytest.fixture(scope="session")
def one_lane_grid_net(tmp_path_factory) -> Path:
    """The same grid with one lane per road (where no vehicle can overtake another)."""
    out = tmp_path_factory.mktemp("grid1") / "grid1.net.xml"
    return netgenerate(out, "--grid", "--grid.number", "2", "--grid.length", "150", "--grid.attach-length", "150",
                       "--default-junction-type", "traffic_light", "--default.lanenumber", "1", "--no-turnarounds")


@pytest.fixture(scope="session")
def grid_city(tmp_path_factory, grid_net: Path) -> Path:
    """Random trips across the 2x2 grid (SUMO's randomTrips-like demand from sumolib routes)."""
    import random

    net = read_network(grid_net)
    entries = sorted({a.edge for i in net.intersections.values() for a in i.approaches if a.from_intersection is None})
    import sumolib

    snet = sumolib.net.readNet(str(grid_net))
    exits = sorted(e.getID() for e in snet.getEdges() if e.getToNode().getType() == "dead_end")
    rng = random.Random(7)
    lines = ["<routes>"]
    for k in range(600):
        while True:
            path, _ = snet.getShortestPath(snet.getEdge(rng.choice(entries)), snet.getEdge(rng.choice(exits)))
            if path and len(path) > 1:
                break
        lines.append(f'<vehicle id="v{k}" depart="{k * 0.9:.1f}"><route edges="{" ".join(e.getID() for e in path)}"/></vehicle>')
    lines.append("</routes>")
    folder = tmp_path_factory.mktemp("city")
    (folder / "city.rou.xml").write_text("\n".join(lines))
    cfg = folder / "city.sumocfg"
    cfg.write_text(f'<configuration><input><net-file value="{grid_net}"/><route-files value="city.rou.xml"/></input>'
                   '<time><begin value="0"/></time></configuration>')
    return cfg


def _pg_bin(name: str) -> Path | None:
    found = shutil.which(name)
    if found:
        return Path(found)
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL server for the session (Debian's postgresql; `.ci/run`
    installs it). Run as the `postgres` user when the tests run as root, since the
    server refuses to run as root. Yields a function making a fresh database URL."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl) not found: install Debian's postgresql")
    folder = tmp_path_factory.mktemp("pg")
    data, sockets = folder / "data", folder / "run"
    sockets.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
        shutil.chown(sockets, "postgres")
        folder.parent.chmod(0o755)
        folder.parent.parent.chmod(0o755)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run([*prefix, str(initdb), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run([*prefix, str(pg_ctl), "-D", str(data), "-w", "-l", str(folder / "log"), "-o",
                    f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    import psycopg

    counter = iter(range(1_000_000))

    def new_database() -> str:
        name = f"ub_test_{next(counter)}"
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    yield new_database
    subprocess.run([*prefix, str(pg_ctl), "-D", str(data), "-m", "fast", "stop"], capture_output=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path) -> str:
    """Each store test runs on SQLite and on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite+pysqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_server")()


@pytest.fixture
def city(store_url: str, grid_net: Path):
    """A brain service over the grid (tests/service_city.py), on SQLite and on PostgreSQL."""
    from service_city import City

    city = City(store_url, grid_net)
    yield city
    city.client.close()
    city.store.close()
