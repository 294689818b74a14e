"""Private MQTT brokers for a run, and parsing of broker URLs.

``run`` without ``--broker`` starts Mosquitto with a config generated from
``broker/mosquitto.conf`` on a free loopback port, or, when ``mosquitto`` is not
installed, the pure-Python amqtt broker in a subprocess. The broker is ready
when it answers an MQTT CONNECT, and it is always stopped: on a normal end, on
an error, on Ctrl-C, and (through the parent-death signal) if we are killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import pwd
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from gridsim.exceptions import BrokerError, ConfigError
from gridsim.lifetime import die_with_parent

log = logging.getLogger(__name__)

CONFIG_TEMPLATE = Path(__file__).resolve().parents[2] / "broker" / "mosquitto.conf"


@dataclasses.dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        auth = ""
        if self.username is not None:
            auth = urllib.parse.quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + urllib.parse.quote(self.password, safe="")
            auth += "@"
        return f"{scheme}://{auth}{self.host}:{self.port}"

    @property
    def redacted_url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        auth = f"{self.username}:***@" if self.username is not None else ""
        return f"{scheme}://{auth}{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt[s]://[user[:pass]@]host[:port]`` to an address; ConfigError if malformed."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"broker URL {url!r} must start with mqtt:// or mqtts://")
    if not parsed.hostname:
        raise ConfigError(f"broker URL {url!r} has no host")
    tls = parsed.scheme == "mqtts"
    try:
        port = parsed.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r}: {exc}") from None
    user = urllib.parse.unquote(parsed.username) if parsed.username is not None else None
    password = urllib.parse.unquote(parsed.password) if parsed.password is not None else None
    return BrokerAddress(parsed.hostname, port, user, password, tls)


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to the hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


# MQTT 3.1.1 CONNECT with a clean session, keepalive 10 s and an empty client id.
_CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 10, 0, 0])


def mqtt_ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when an MQTT broker at host:port accepts a CONNECT (CONNACK return code 0)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(_CONNECT)
            ack = s.recv(4)
            with contextlib.suppress(OSError):
                s.sendall(bytes([0xE0, 0]))  # DISCONNECT
            return len(ack) == 4 and ack[0] == 0x20 and ack[3] == 0
    except OSError:
        return False


BROKER_USER = "mosquitto"
"""Who a private Mosquitto started by root runs as (the Debian package's user)."""


def _unprivileged_user() -> tuple[int, int] | None:
    """(uid, gid) a private broker should run as: :data:`BROKER_USER` when we are
    root and that user exists, else None (run as we are)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(BROKER_USER)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _broker_preexec(parent: int, user: tuple[int, int] | None) -> None:
    # Started by root, Mosquitto switches to its own user itself, and Linux then
    # clears the parent-death signal: a killed run left its broker running. So we
    # switch first, and Mosquitto, no longer root, keeps the signal.
    if user is not None:
        os.setgroups([])
        os.setgid(user[1])
        os.setuid(user[0])
    die_with_parent(parent)  # SIGTERM to the broker if the run is killed
    raise_open_file_limit()


def mosquitto_config(port: int, template: Path = CONFIG_TEMPLATE) -> str:
    """The shipped config with its listener moved to ``127.0.0.1:port``."""
    try:
        lines = template.read_text().splitlines()
    except OSError as exc:
        raise BrokerError(f"cannot read the broker config {template}: {exc}") from None
    out = [f"listener {port} 127.0.0.1" if ln.startswith("listener ") else ln for ln in lines]
    if not any(ln.startswith("listener ") for ln in lines):
        out.insert(0, f"listener {port} 127.0.0.1")
    return "\n".join(out) + "\n"


class BrokerProcess:
    """A broker subprocess on a loopback port; use as a context manager."""

    def __init__(self, kind: str = "auto", port: int | None = None, workdir: Path | None = None):
        if kind == "auto":
            kind = "mosquitto" if shutil.which("mosquitto") else "amqtt"
        if kind not in ("mosquitto", "amqtt"):
            raise ConfigError(f"unknown broker kind {kind!r} (mosquitto, amqtt or auto)")
        self.kind = kind
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="gridsim-broker-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = BrokerAddress("127.0.0.1", self.port)

    def start(self, timeout: float = 15.0) -> BrokerAddress:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / f"{self.kind}.log"
        if self.kind == "mosquitto":
            exe = shutil.which("mosquitto")
            if exe is None:
                raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(mosquitto_config(self.port))
            # In a folder of our own, which the broker may then read as that user.
            user = _unprivileged_user() if self._own_dir else None
            if user is not None:
                self.workdir.chmod(0o755)
                conf.chmod(0o644)
            cmd = [exe, "-c", str(conf)]
        else:
            user = None
            try:
                import amqtt  # noqa: F401
            except ImportError:
                raise BrokerError(
                    "no broker available: install mosquitto, or amqtt (pip install amqtt)"
                ) from None
            cmd = [sys.executable, "-m", "gridsim.transport.amqtt_broker", str(self.port)]
        with log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=functools.partial(_broker_preexec, os.getpid(), user),
                start_new_session=True,  # Ctrl-C reaches us; we stop the broker last
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-800:]
                self.proc = None
                raise BrokerError(f"{self.kind} exited at start: {tail.strip()}")
            if mqtt_ping("127.0.0.1", self.port, timeout=0.5):
                log.info("%s broker ready on 127.0.0.1:%d", self.kind, self.port)
                return self.address
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"{self.kind} did not accept connections within {timeout:.0f} s")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> BrokerAddress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def broker_for_run(url: str | None, kind: str = "auto") -> Iterator[BrokerAddress]:
    """The given broker, or a private one for the duration of the block."""
    if url is not None:
        address = parse_broker_url(url)
        try:
            socket.create_connection((address.host, address.port), timeout=5).close()
        except OSError as exc:
            raise BrokerError(f"cannot reach the broker at {address.redacted_url}: {exc}") from None
        yield address
        return
    with BrokerProcess(kind) as address:
        yield address
