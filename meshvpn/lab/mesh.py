"""A meshvpn deployment inside a lab: keys, configs, coord, relays and daemons as real processes.

The lab tests, the demo and the benchmarks start meshvpn the way an operator would: key files
written by `meshvpn.keys`, YAML configs, `meshvpn coord|relay|daemon` run in namespaces with
`Namespace.popen` (so the lab kills them at teardown), and the pre-auth key from the
`meshvpn coord key create` admin verb. Every config, key, socket and log lives in one work
directory, named after the node it belongs to.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import yaml

from meshvpn import joinstring, keys
from meshvpn.lab.netns import LabError, Namespace, _child_env, python_command
from meshvpn.localsock import DaemonNotRunning, request

COORD_PORT = 7400
STUN_PORT = 3478
RELAY_PORT = 7500
RELAY_METRICS_PORT = 9475
START_TIMEOUT = 15.0
"""Seconds a process may take to answer on its socket after being started."""
POLL_SECONDS = 0.2
CLI_TIMEOUT = 30.0

T = TypeVar("T")


class MeshTimeout(LabError):
    """The mesh did not reach a state it was waited for in time."""


def wait_for(check: Callable[[], T], timeout: float, what: str, poll: float = POLL_SECONDS) -> T:
    """Poll `check` every `poll` seconds until it returns something truthy and return that; else
    raise MeshTimeout.

    A check that raises (a daemon not answering yet, a peer not listed yet) counts as not yet.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (DaemonNotRunning, OSError, ValueError, LookupError, subprocess.SubprocessError):
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise MeshTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


@dataclass
class Process:
    """One meshvpn process of the mesh and the files that belong to it."""

    name: str
    """Node, relay or `coord`; also the stem of its files in the work directory."""
    ns: Namespace
    """Namespace it runs in."""
    proc: subprocess.Popen
    """The running process; the lab kills it at teardown if nobody stopped it before."""
    config: Path
    log: Path
    """Its stderr (meshvpn logs there)."""


@dataclass(frozen=True)
class RelayPlace:
    """A relay as the coord's config names it."""

    name: str
    address: str
    public_key: str
    tls_port: int = 0


@dataclass(frozen=True)
class PathFound:
    """A path that came up between two nodes."""

    peer: dict
    """The peer's entry in the source node's `status --json` once the path was there."""
    seconds: float
    """Time from the start of waiting."""


def self_signed_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A throwaway certificate and key for `name` (openssl), as a relay's TLS listener needs."""
    cert, key = directory / f"{name}-tls.crt", directory / f"{name}-tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", f"/CN={name}.meshvpn.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=CLI_TIMEOUT)
    key.chmod(0o600)
    return cert, key


def _write_yaml(path: Path, document: dict) -> Path:
    """Write a config private to its owner: node and coord configs may hold secrets."""
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


class Mesh:
    """The coord, relays and daemons of one network in a lab, with helpers to drive and inspect them.

    Relays must be started before the coord, whose config lists every relay started so far.
    """

    def __init__(self, workdir: Path, coord_ns: Namespace, coord_address: str, network: str = "lab",
                 cidr: str = "100.80.0.0/24", log_level: str = "debug", coord_port: int = COORD_PORT) -> None:
        self.dir = workdir
        self.coord_ns = coord_ns
        self.coord_address = coord_address
        self.coord_port = coord_port
        self.coord_tls_port = 0
        """With a port, set before `start_coord`: the coord also listens with TLS there (a
        self-signed certificate) and nodes know it as their `coord.tls_port`."""
        self.network = network
        self.cidr = cidr
        self.log_level = log_level
        self.admin_socket = workdir / "coord-admin.sock"
        self.coord: Process | None = None
        self.relays: dict[str, Process] = {}
        self.nodes: dict[str, Process] = {}
        self._relay_places: list[RelayPlace] = []
        self._roots: dict[str, Path] = {}
        """Root directories of the nodes started with `join_node`."""
        self.turn_servers: list[dict] = []
        """Entries of the coord config's `turn` list (name, address, secret), set before `start_coord`."""
        self.console: dict = {}
        """The coord config's `console` section (enabled, listen, password_file), set before `start_coord`."""
        self.database: str | None = None
        """A PostgreSQL URI every coord instance shares, set before `start_coord`; None: a SQLite file."""
        self.instances: dict[str, Process] = {}
        """Coord instances besides `coord` (`start_coord_instance`), by name."""
        self.access: dict = {}
        """The network's access policy (`networks[0].access`), set before `start_coord` or `reload_coord`."""
        self.coord_ipv6: str | None = None
        """The coord's IPv6 address on a dual-stack lab, set before `start_coord`: its control
        channel and STUN service then listen on the wildcard address of both families, and nodes
        know the coord there too (their STUN server over IPv6)."""
        self.coord_public = self._new_key("coord")

    def _new_key(self, name: str) -> str:
        return keys.encode_key(keys.public_key(keys.write_private_key(self.dir / f"{name}.key")))

    def _spawn(self, name: str, ns: Namespace, role: str, config: Path, env: dict[str, str] | None = None) -> Process:
        log = self.dir / f"{name}.log"
        with log.open("ab") as out:
            proc = ns.popen(python_command("meshvpn", role, "-c", str(config)), env=_child_env(env),
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        return Process(name, ns, proc, config, log)

    # ---- servers

    def start_relay(self, name: str, ns: Namespace, address: str, announce: str | None = None,
                    tls_port: int = 0, dual: bool = False) -> Process:
        """Start `meshvpn relay` at `address` (UDP and TCP port RELAY_PORT), trusting this mesh's coord;
        the coord announces it as `announce` (a host, e.g. a DNS name or `[IPv6]`) when given, else
        as `address`. With `tls_port` it also listens with TLS there, on a self-signed certificate.
        With `dual` (a dual-stack lab) it listens on the wildcard address of both families."""
        public = self._new_key(name)
        document = {
            "private_key_file": str(self.dir / f"{name}.key"),
            "state_dir": str(self.dir / f"{name}-state"),
            "listen": f"{'0.0.0.0' if dual else address}:{RELAY_PORT}",
            "coord": {"public_key": self.coord_public},
            "metrics": {"listen": f"{address}:{RELAY_METRICS_PORT}"},
            "log": {"level": self.log_level},
        }
        if tls_port:
            cert, key = self_signed_certificate(self.dir, name)
            document["tls"] = {"listen": f"{address}:{tls_port}", "cert_file": str(cert), "key_file": str(key)}
        config = _write_yaml(self.dir / f"{name}.yaml", document)
        self._relay_places.append(RelayPlace(name, f"{announce or address}:{RELAY_PORT}", public, tls_port))
        self.relays[name] = self._spawn(name, ns, "relay", config)
        return self.relays[name]

    def relay_metrics(self, name: str) -> dict[str, float]:
        """Relay `name`'s Prometheus samples by name (``meshvpn_relay_runs_total`` ...), labelled ones
        with their labels (``meshvpn_relay_drops_total{reason="..."}``)."""
        relay = self.relays[name]
        url = f"http://{yaml.safe_load(relay.config.read_text())['metrics']['listen']}/metrics"
        fetch = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=2).read().decode())"
        text = relay.ns.run([sys.executable, "-c", fetch], timeout=CLI_TIMEOUT).stdout
        samples = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
        return {words[0]: float(words[1]) for words in samples if len(words) == 2}

    def restart_relay(self, name: str) -> Process:
        """Stop relay `name` (SIGTERM) and start it again with the same key and config."""
        old = self.relays[name]
        old.ns.stop(old.proc)
        self.relays[name] = self._spawn(name, old.ns, "relay", old.config)
        return self.relays[name]

    def start_coord(self) -> Process:
        """Start (or restart) `meshvpn coord` and wait for its admin socket."""
        self.coord = self._start_coord("coord", self.coord_ns, self.coord_address, self.admin_socket)
        return self.coord

    def reload_coord(self) -> None:
        """Write the coord's config again (e.g. a new `access`) and send the coord SIGHUP."""
        self._write_coord_config("coord", self.coord_address, self.admin_socket)
        self.coord.proc.send_signal(signal.SIGHUP)

    def start_coord_instance(self, name: str, ns: Namespace, address: str) -> Process:
        """Start another instance of the coord (same key, the shared `database`) at `address`."""
        if self.database is None:
            raise LabError("several coord instances need a shared PostgreSQL `database`")
        self.instances[name] = self._start_coord(name, ns, address, self.dir / f"{name}-admin.sock")
        return self.instances[name]

    def kill_coord(self, name: str = "coord") -> None:
        """End coord instance `name` with SIGKILL, as a crash would: it closes nothing itself."""
        if name == "coord":
            process, self.coord = self.coord, None
        else:
            process = self.instances.pop(name)
        process.proc.kill()
        process.ns.stop(process.proc)

    def _start_coord(self, name: str, ns: Namespace, address: str, admin_socket: Path) -> Process:
        config = self._write_coord_config(name, address, admin_socket)
        admin_socket.unlink(missing_ok=True)
        process = self._spawn(name, ns, "coord", config)
        wait_for(admin_socket.exists, START_TIMEOUT, f"{name}'s admin socket")
        return process

    def _write_coord_config(self, name: str, address: str, admin_socket: Path) -> Path:
        network = {"name": self.network, "cidr": self.cidr, **({"access": self.access} if self.access else {})}
        bound = "0.0.0.0" if self.coord_ipv6 else address  # the wildcard listens on both families
        tls = {}
        if self.coord_tls_port:
            cert, key = self_signed_certificate(self.dir, name)
            tls = {"listen": f"{address}:{self.coord_tls_port}", "cert_file": str(cert), "key_file": str(key)}
        return _write_yaml(self.dir / f"{name}.yaml", {
            "private_key_file": str(self.dir / "coord.key"),
            "database": self.database or str(self.dir / "coord.db"),
            "listen": f"{bound}:{self.coord_port}",
            "tls": tls,
            "stun_listen": f"{bound}:{STUN_PORT}",
            **({"public_address": f"{address}:{self.coord_port}"} if bound != address else {}),
            "admin_socket": str(admin_socket),
            "networks": [network],
            "relays": [{"name": r.name, "address": r.address, "public_key": r.public_key, "tls_port": r.tls_port}
                       for r in self._relay_places],
            "turn": self.turn_servers,
            "console": self.console,
            "log": {"level": self.log_level},
        })

    def stop_coord(self) -> None:
        """Stop the coord (SIGTERM); nodes and relays keep running."""
        if self.coord is not None:
            self.coord_ns.stop(self.coord.proc)
            self.coord = None

    def admin_command(self, *args: str) -> list[str]:
        """The argv of `meshvpn coord ARGS` against this mesh's admin socket."""
        return python_command("meshvpn", "coord", *args, "--socket", str(self.admin_socket))

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an admin verb, e.g. `admin("nodes", "list")`, in the coord's namespace."""
        return self.coord_ns.run(self.admin_command(*args), check=check, timeout=CLI_TIMEOUT)

    def create_join_string(self) -> tuple[str, subprocess.CompletedProcess[str]]:
        """A reusable join string for the network, and what `meshvpn coord key create` printed."""
        done = self.admin("key", "create", "--network", self.network, "--reusable")
        words = done.stdout.split()
        if not words or not words[-1].startswith("mvk-"):
            raise LabError(f"`meshvpn coord key create` printed no join string: {done.stdout}")
        return words[-1], done

    def create_auth_key(self) -> tuple[str, subprocess.CompletedProcess[str]]:
        """A reusable pre-auth key (the token inside a join string), and what `key create` printed."""
        join, done = self.create_join_string()
        return joinstring.decode(join).auth_key, done

    # ---- nodes

    def start_registered(self, hosts: dict[str, Namespace]) -> None:
        """Start a node per `hosts` entry (name: namespace) with one fresh pre-auth key, and wait
        until all of them registered and learnt their peers."""
        key, _ = self.create_auth_key()
        for name, ns in hosts.items():
            self.start_node(name, ns, key)
        self.wait_registered(hosts)

    def control_socket(self, name: str) -> Path:
        if name in self._roots:
            return self._roots[name] / "run/meshvpn/meshvpn.sock"
        return self.dir / f"{name}.sock"

    def start_node(self, name: str, ns: Namespace, auth_key: str, listen: str | None = None,
                   tun: str = "mvtun0", coords: Iterable[str] = (), sections: dict | None = None,
                   env: dict[str, str] | None = None) -> Process:
        """Start `meshvpn daemon` in `ns` as `name`, joining with `auth_key`.

        `listen` is `address:port` of the node's UDP socket (the config's default if None);
        `coords` the addresses of the coord instances it knows, in order (default: the coord's);
        `sections` adds config sections (e.g. `{"portmap": {"protocols": ["upnp"]}}`); `env` adds
        to the daemon's environment (e.g. `{"MESHVPN_PURE_PYTHON": "1"}`).
        """
        known = list(coords) or [self.coord_address] + ([f"[{self.coord_ipv6}]"] if self.coord_ipv6 else [])
        first, *others = [f"{address}:{self.coord_port}" for address in known]
        self._new_key(name)
        document = {
            "private_key_file": str(self.dir / f"{name}.key"),
            "hostname": name,
            "state_dir": str(self.dir / f"{name}-state"),
            "control_socket": str(self.control_socket(name)),
            "coord": {"address": first, "public_key": self.coord_public,
                      "auth_key": auth_key, "stun_port": STUN_PORT, "other_addresses": others,
                      "tls_port": self.coord_tls_port},
            "tun": {"name": tun},
            # resolved, where the machine runs it, serves the root namespace: a lab node must not
            # register its link there (the same index names another link in the root namespace).
            "lan": {"dns": {"resolved": False}},
            "log": {"level": self.log_level},
        }
        if listen is not None:
            address, port = listen.rsplit(":", 1)
            document["listen"] = {"address": address, "port": int(port)}
        document.update(sections or {})
        config = _write_yaml(self.dir / f"{name}.yaml", document)
        self.nodes[name] = self._spawn(name, ns, "daemon", config, env)
        return self.nodes[name]

    def join_node(self, name: str, ns: Namespace, join: str) -> subprocess.CompletedProcess[str]:
        """`meshvpn join` in `ns` as `name` (its files under `<workdir>/<name>-root`), then the daemon
        started the way join said to; returns what join printed."""
        root = self.dir / f"{name}-root"
        done = self.join_again(name, ns, join)
        started = re.search(r"start the daemon with: meshvpn (daemon -c \S+)", done.stdout)
        if started is None:
            raise LabError(f"`meshvpn join` did not say how to start the daemon: {done.stdout}")
        config = Path(started.group(1).split()[-1])
        self._roots[name] = root
        self.nodes[name] = self._spawn(name, ns, "daemon", config)
        return done

    def join_again(self, name: str, ns: Namespace, join: str) -> subprocess.CompletedProcess[str]:
        """Only run `meshvpn join` for `name` (again), as its owner would."""
        return ns.run(python_command("meshvpn", "join", "--root", str(self.dir / f"{name}-root"), "--key", join,
                                     "--name", name), timeout=CLI_TIMEOUT)

    def leave_node(self, name: str) -> subprocess.CompletedProcess[str]:
        """Stop node `name`'s daemon, then `meshvpn leave` there; returns what leave printed."""
        node = self.nodes[name]
        node.ns.stop(node.proc)
        return node.ns.run(python_command("meshvpn", "leave", "--root", str(self._roots[name])), timeout=CLI_TIMEOUT)

    def stop_nodes(self) -> None:
        """Stop every daemon (SIGTERM, then SIGKILL after the lab's grace period)."""
        for node in self.nodes.values():
            node.ns.stop(node.proc)

    def cli_command(self, name: str, *args: str) -> list[str]:
        """The argv of a client verb (`status`, `peers`, `ping PEER`) against node `name`."""
        return python_command("meshvpn", *args, "--socket", str(self.control_socket(name)))

    def cli(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a client verb in node `name`'s namespace, as a user on that machine would."""
        return self.nodes[name].ns.run(self.cli_command(name, *args), check=check, timeout=CLI_TIMEOUT)

    def status(self, name: str) -> dict:
        """What `meshvpn status --json` prints, asked straight over the control socket."""
        answer = list(request(str(self.control_socket(name)), {"cmd": "status"}, timeout=2.0))[-1]
        if "error" in answer:
            raise LabError(f"{name}: status: {answer['error']}")
        return answer

    def overlay(self, name: str) -> str:
        """Node `name`'s mesh address (without prefix length)."""
        return self.status(name)["self"]["overlay"].split("/")[0]

    def peer(self, name: str, other: str) -> dict:
        """Node `other` as node `name`'s status lists it; KeyError while it is not listed."""
        for peer in self.status(name)["peers"]:
            if peer["name"] == other:
                return peer
        raise KeyError(other)

    def peer_overlay(self, name: str, other: str) -> str:
        """Node `other`'s mesh address as node `name`'s status lists it; "" while it has none."""
        return (self.peer(name, other).get("overlay") or "").split("/")[0]

    def nudge(self, src: str, dst: str, timeout: float = 1.0) -> bool:
        """Send one ICMP echo from `src`'s namespace to `dst`'s mesh address; whether it was answered.

        Paths are made on demand, so this is also what starts hole punching between the two.
        """
        return self.nodes[src].ns.ping(self.overlay(dst), timeout=timeout)

    def wait_registered(self, names: Iterable[str] | None = None, timeout: float = 20.0) -> None:
        """Wait until every named node (all by default) has its address and lists all the others."""
        names = list(self.nodes if names is None else names)

        def registered(name: str) -> bool:
            status = self.status(name)
            return bool(status["self"]["overlay"]) and len(status["peers"]) >= len(names) - 1

        for name in names:
            wait_for(lambda: registered(name), timeout, f"{name} to register and learn its peers")

    def wait_for_paths(self, wanted: dict[tuple[str, str], tuple[str, ...]], timeout: float = 15.0,
                       on_found: Callable[[str, str, PathFound], None] | None = None) -> dict[tuple[str, str], PathFound]:
        """Nudge every `(src, dst)` pair until `src`'s status shows a path of one of its kinds.

        Returns the pairs that got one by `timeout` (the others are missing), calling
        `on_found` as each arrives. One thread nudges the pairs in turn, so an interrupt stops
        it at once.
        """
        started = time.monotonic()
        found: dict[tuple[str, str], PathFound] = {}
        while len(found) < len(wanted) and time.monotonic() - started < timeout:
            for (src, dst), kinds in wanted.items():
                if (src, dst) in found:
                    continue
                try:
                    peer = self.peer(src, dst)
                    if peer["path"] not in kinds:
                        self.nudge(src, dst, timeout=0.3)  # asks `dst` its address: it may be as slow
                        continue
                except (DaemonNotRunning, OSError, ValueError, KeyError, subprocess.SubprocessError):
                    continue  # a daemon slow to answer (a busy loop on a loaded machine) is not there yet
                found[src, dst] = PathFound(peer, time.monotonic() - started)
                if on_found is not None:
                    on_found(src, dst, found[src, dst])
        return found

    def logs(self, tail: int = 3000) -> str:
        """The end of every process's log, for a failure message."""
        return "\n".join(f"--- {log.stem}\n{log.read_text(errors='replace')[-tail:]}"
                         for log in sorted(self.dir.glob("*.log")))
