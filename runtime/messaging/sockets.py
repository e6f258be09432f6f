"""ZeroMQ helpers shared by the publisher, the control socket and their clients: address checks,
socket options and optional CURVE encryption/authentication.

CURVE keys are the files ``zmq.auth.create_certificates(dir, name)`` writes (``name.key`` holds the
public key, ``name.key_secret`` both keys); ``vlmedge keys DIR`` makes a server and a client pair.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq

from vlmedge.errors import BackendUnavailable, ConfigError, did_you_mean

log = logging.getLogger(__name__)

TRANSPORTS = ("tcp", "ipc", "inproc")
_TCP = re.compile(r"^tcp://(?P<host>\[[^\]]+\]|[^:/\[\]]+):(?P<port>\*|\d+)$")


def is_loopback_host(host: str) -> bool:
    """Whether a bind host is loopback in any spelling: ``localhost`` (any case), ``127.0.0.1``, ``127.1``
    (the shorthand inet_aton reads), ``::1``, ``::ffff:127.0.0.1`` (IPv4-mapped)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:  # shorthand IPv4 forms that the resolver accepts
            ip = ipaddress.ip_address(socket.inet_aton(host))
        except (OSError, ValueError):
            return False  # an interface name or a hostname: may be reachable from the network
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def check_address(address: str, *, purpose: str = "socket", bind: bool = True) -> str:
    """Validate a ZeroMQ endpoint. Binding to a non-loopback TCP address logs a warning that the
    socket is reachable from the network. ``tcp://host:0`` binds a random free port."""
    if not isinstance(address, str) or "://" not in address:
        raise ConfigError(f"{purpose} address {address!r} is not a ZeroMQ endpoint; "
                          "expected e.g. 'tcp://127.0.0.1:5555' or 'ipc:///tmp/vlmedge.sock'")
    transport = address.split("://", 1)[0]
    if transport not in TRANSPORTS:
        raise ConfigError(f"{purpose} address {address!r}: unknown transport {transport!r}; expected one of "
                          f"{list(TRANSPORTS)}" + did_you_mean(transport, TRANSPORTS))
    if transport == "tcp":
        m = _TCP.match(address)
        if not m:
            raise ConfigError(f"{purpose} address {address!r}: expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")
        port = m["port"]
        if port != "*" and not 0 <= int(port) <= 65535:
            raise ConfigError(f"{purpose} address {address!r}: port {port} is outside 0..65535")
        if bind and not is_loopback_host(m["host"]):
            log.warning("%s binds %s: it is reachable from the network; use CURVE keys (--curve-keys DIR, "
                        "from `vlmedge keys DIR`) or a firewall if the network is not trusted", purpose, address)
    return address


def last_endpoint(sock: zmq.Socket) -> str:
    """The endpoint a socket actually bound (resolves port 0 / '*')."""
    return sock.getsockopt(zmq.LAST_ENDPOINT).decode()


def bind(sock: zmq.Socket, address: str, purpose: str) -> str:
    """Bind with a readable error; return the actual endpoint."""
    check_address(address, purpose=purpose)
    if address.startswith("tcp://") and address.endswith(":0"):
        address = address[:-2] + ":*"
    try:
        sock.bind(address)
    except zmq.ZMQError as e:
        hint = " (another vlmedge running? pick another port)" if e.errno == zmq.EADDRINUSE else ""
        raise ConfigError(f"{purpose}: cannot bind {address!r}: {e}{hint}") from None
    return last_endpoint(sock)


# -------------------------------------------------------------------------------------------- CURVE

def require_curve() -> None:
    if not zmq.has("curve"):
        raise BackendUnavailable("CURVE security in libzmq",
                                 f"this libzmq {zmq.zmq_version()} was built without libsodium/CURVE; "
                                 "install pyzmq wheels from PyPI (they include it)")


def _load_keys(path: Path, what: str, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: key file {str(path)!r} not found; make keys with `vlmedge keys DIR`")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as e:
        raise ConfigError(f"{what}: {str(path)!r} is not a ZeroMQ certificate file: {e}") from None
    if secret and secret_key is None:
        raise ConfigError(f"{what}: {str(path)!r} holds no secret key; pass the '.key_secret' file")
    return public, secret_key


@dataclass(frozen=True)
class CurveServerKeys:
    """Keys of a binding socket (Publisher, ControlServer).

    secret_file: the server's ``*.key_secret``. clients_dir: a folder of allowed clients' public
    ``*.key`` files; None accepts any client that knows the server's public key (encryption without
    client authentication)."""

    secret_file: Path
    clients_dir: Path | None = None

    def __post_init__(self):
        object.__setattr__(self, "secret_file", Path(self.secret_file))
        if self.clients_dir is not None:
            d = Path(self.clients_dir)
            if not d.is_dir():
                raise ConfigError(f"CURVE clients_dir {str(d)!r} is not a directory of client public keys")
            object.__setattr__(self, "clients_dir", d)


@dataclass(frozen=True)
class CurveClientKeys:
    """Keys of a connecting socket: its own ``*.key_secret`` and the server's public ``*.key``."""

    secret_file: Path
    server_public_file: Path

    def __post_init__(self):
        object.__setattr__(self, "secret_file", Path(self.secret_file))
        object.__setattr__(self, "server_public_file", Path(self.server_public_file))


def setup_curve_server(ctx: zmq.Context, sock: zmq.Socket, keys: CurveServerKeys):
    """Make ``sock`` a CURVE server; start a ThreadAuthenticator on ``ctx`` (one per context).
    Returns the authenticator (stop it when closing)."""
    from zmq.auth.thread import ThreadAuthenticator

    require_curve()
    public, secret = _load_keys(keys.secret_file, "CURVE server secret", secret=True)
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("vlmedge.zap"))
    auth.start()
    if keys.clients_dir is None:
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    else:
        if not any(keys.clients_dir.glob("*.key")):
            auth.stop()
            raise ConfigError(f"CURVE clients_dir {str(keys.clients_dir)!r} has no *.key public key files")
        auth.configure_curve(domain="*", location=str(keys.clients_dir))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


def shutdown(ctx: zmq.Context, sock: zmq.Socket, auth, *, linger_ms: int = 0) -> None:
    """Close ``sock`` (its pending messages dropped, or given ``linger_ms`` to leave), stop its CURVE
    authenticator (if any) and end ``ctx``."""
    if not sock.closed:
        sock.close(linger=linger_ms)
    if auth is not None:
        auth.stop()
    ctx.term()


REVOKE_POLL_S = 0.5  # how often a server re-reads its CURVE clients folder
REBIND_TIMEOUT_S = 5.0


def rebind(sock: zmq.Socket, endpoint: str, purpose: str) -> None:
    """Close every connection of a bound socket: unbind ``endpoint`` and bind it again. libzmq releases the
    port asynchronously, so the bind is retried until it succeeds (ConfigError after REBIND_TIMEOUT_S)."""
    sock.unbind(endpoint)
    deadline = time.monotonic() + REBIND_TIMEOUT_S
    while True:
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError as e:
            if e.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise ConfigError(f"{purpose}: cannot bind {endpoint!r} again after closing its connections: "
                                  f"{e}") from None
            time.sleep(0.005)


def _client_keys(folder: Path) -> dict[bytes, bool]:
    """The public keys of the ``*.key`` files in ``folder`` (as ``Authenticator.certs`` holds them); a file that
    cannot be read is left out with a warning (a key being written is read on the next look)."""
    import zmq.auth

    keys: dict[bytes, bool] = {}
    try:
        files = sorted(folder.glob("*.key"))
    except OSError as e:
        log.warning("CURVE clients folder %s cannot be read (%s): no client is accepted", folder, e)
        return keys
    for f in files:
        try:
            public, _ = zmq.auth.load_certificate(f)
        except (OSError, ValueError) as e:
            log.warning("CURVE client key %s skipped: %s", f, e)
            continue
        keys[public] = True
    return keys


def _folder_signature(folder: Path) -> tuple:
    try:
        return tuple(sorted((p.name, st.st_mtime_ns, st.st_size, st.st_ino)
                            for p in folder.glob("*.key") for st in (p.stat(),)))
    except OSError:  # gone, or a file removed while listed: look again next time
        return ("unreadable", time.monotonic())


class ClientKeysWatch:
    """Keeps a CURVE server's allowed clients equal to its clients folder, re-read every ``interval_s``:
    a key added is accepted from its next connection on; a key removed (or replaced) is revoked at once:
    the authenticator forgets it and ``on_revoke`` closes the connections already made (CURVE
    authenticates a connection once, at its handshake), which the clients still allowed make again."""

    def __init__(self, auth, folder: Path, on_revoke: Callable[[], None], what: str,
                 interval_s: float = REVOKE_POLL_S):
        self.auth, self.folder, self.on_revoke, self.what = auth, Path(folder), on_revoke, what
        self.interval_s = float(interval_s)
        self.revocations = 0
        self._signature = _folder_signature(self.folder)
        self._keys = _client_keys(self.folder)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"vlmedge-keys-{what}", daemon=True)
        self._thread.start()

    def check(self) -> bool:
        """Re-read the folder if it changed; True when a key was revoked."""
        signature = _folder_signature(self.folder)
        if signature == self._signature:
            return False
        self._signature = signature
        keys = _client_keys(self.folder)
        self.auth.certs["*"] = keys  # what configure_curve(domain="*") sets; read by the authenticator thread
        revoked = set(self._keys) - set(keys)
        added = set(keys) - set(self._keys)
        self._keys = keys
        if added:
            log.info("%s: %d CURVE client key(s) added", self.what, len(added))
        if revoked:
            self.revocations += 1
            log.warning("%s: %d CURVE client key(s) revoked; closing their connections", self.what, len(revoked))
            self.on_revoke()
        return bool(revoked)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # the watch must outlive a bug or an odd file system
                log.exception("%s: checking the CURVE clients folder failed", self.what)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)


def watch_clients(auth, keys: CurveServerKeys, on_revoke: Callable[[], None], what: str) -> ClientKeysWatch | None:
    """A ``ClientKeysWatch`` for a server with a clients folder (None without one: any client is accepted)."""
    if keys.clients_dir is None or auth is None:
        return None
    return ClientKeysWatch(auth, keys.clients_dir, on_revoke, what)


def setup_curve_client(sock: zmq.Socket, keys: CurveClientKeys) -> None:
    """Make ``sock`` a CURVE client (call before connect)."""
    require_curve()
    public, secret = _load_keys(keys.secret_file, "CURVE client secret", secret=True)
    server_public, _ = _load_keys(keys.server_public_file, "CURVE server public key", secret=False)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


def create_keys(out_dir: str | Path, *, server: str = "server", clients: tuple[str, ...] = ("client",)) -> dict:
    """Write a server pair and client pairs: ``out/server.key[_secret]``, ``out/clients/<name>.key``
    (public, the folder to pass as clients_dir) and ``out/<name>.key_secret``. Returns the paths."""
    import shutil

    import zmq.auth

    require_curve()
    out = Path(out_dir)
    (out / "clients").mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for name in (server, *clients):
        for suffix in (".key", ".key_secret"):
            if (out / f"{name}{suffix}").exists():
                raise ConfigError(f"{out / (name + suffix)} exists; refusing to overwrite keys")
    pub, sec = zmq.auth.create_certificates(out, server)
    paths["server_public"], paths["server_secret"] = pub, sec
    for name in clients:
        pub, sec = zmq.auth.create_certificates(out, name)
        shutil.move(pub, out / "clients" / f"{name}.key")
        paths[f"{name}_secret"] = sec
    paths["clients_dir"] = str(out / "clients")
    for p in Path(out).glob("*.key_secret"):
        p.chmod(0o600)
    return paths
