"""Who may do what on the team stack: generated secrets, S3 identities, MLflow users and their grants.

    secrets = load_secrets(Path(".team/secrets"), ["alice", "bob"])   # made once, 0600, then reused
    setup_users(layout, state, ["alice", "bob"], "chest-xray-pneumonia", "cxr-pneumonia")
    configure_remote(Path("."), "alice", state, secrets)               # dvc remote add + modify --local

Each user has an S3 key pair of their own, allowed on the DVC bucket only (the MLflow server has its own,
allowed on the artifact bucket only: users reach artifacts through the server), and an MLflow login with
a generated password. MLflow's basic-auth gives everyone READ on what they did not create
(``default_permission``); the shared experiment and registered model are made by the admin and the
team's users are granted EDIT on both, so each user's own experiments stay theirs.
"""

from __future__ import annotations

import json
import os
import secrets as _random
import subprocess
from pathlib import Path
from typing import Any

import requests

DVC_BUCKET = "cxr-dvc"
DVC_URL = f"s3://{DVC_BUCKET}/cxr"
ARTIFACT_BUCKET = "cxr-mlflow"
ARTIFACT_ROOT = f"s3://{ARTIFACT_BUCKET}/artifacts"
ADMIN = "admin"
REMOTE = "team"
DEFAULT_USERS = ("alice", "bob")
TEAM_PERMISSION = "EDIT"  # log runs, register versions and move aliases; MANAGE would also delete and grant


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path``, readable by its owner only (created so: never world-readable in between)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)


def _token() -> str:
    return _random.token_urlsafe(24)


def load_secrets(folder: Path, users: list[str]) -> dict:
    """The stack's secrets (folder/secrets.json): generated the first time, extended with new users, else
    reused, so a restarted stack keeps its passwords. MLflow's admin password is generated too."""
    path = folder / "secrets.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for key in ("postgres", "flask", "admin", "s3_admin"):
        data.setdefault(key, _token())
    data.setdefault("s3", {}).setdefault("mlflow", [f"mlflow-{_random.token_hex(6)}", _token()])
    data.setdefault("users", {})
    for user in users:
        data["users"].setdefault(user, _token())
        data["s3"].setdefault(user, [f"{user}-{_random.token_hex(6)}", _token()])
    write_private(path, json.dumps(data, indent=2) + "\n")
    return data


def s3_identities(secrets: dict) -> dict:
    """SeaweedFS's -s3.config: the server on the artifact bucket, each user on the DVC bucket."""

    def identity(name: str, bucket: str) -> dict:
        key, secret = secrets["s3"][name]
        actions = [f"{a}:{bucket}" for a in ("Read", "Write", "List", "Tagging")]
        return {"name": name, "credentials": [{"accessKey": key, "secretKey": secret}], "actions": actions}

    users = [identity(u, DVC_BUCKET) for u in secrets["s3"] if u != "mlflow"]
    return {"identities": [identity("mlflow", ARTIFACT_BUCKET), *users]}


def database_uri(secrets: dict, port: int, database: str) -> str:
    # +psycopg2: a bare postgresql:// makes SQLAlchemy 2.1 look for psycopg 3
    return f"postgresql+psycopg2://mlflow:{secrets['postgres']}@127.0.0.1:{port}/{database}"


def auth_ini(secrets: dict, pg_port: int) -> str:
    """MLflow's basic-auth configuration: users and permissions in PostgreSQL, a generated admin password."""
    return (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri(secrets, pg_port, 'mlflow_auth')}\n"
        f"admin_username = {ADMIN}\n"
        f"admin_password = {secrets['admin']}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Each request otherwise re-hashes the password (PBKDF2, a CPU-second under load): a poller and two
        # clients saturated a 2-core machine. Cached a minute per (user, password), in each worker.
        "auth_cache_ttl_seconds = 60\n"
    )


def bucket_ready(endpoint: str, secrets: dict) -> bool:
    """Whether the S3 store answers a signed request for the artifact bucket."""
    import boto3
    import botocore.exceptions

    key, secret = secrets["s3"]["mlflow"]
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1"
    )
    try:
        s3.head_bucket(Bucket=ARTIFACT_BUCKET)
        return True
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False


class Admin:
    """MLflow's REST API as the admin."""

    def __init__(self, uri: str, password: str):
        self.uri, self.auth = uri, (ADMIN, password)

    def call(self, method: str, path: str, ok_codes: tuple[str, ...] = (), **kwargs) -> dict:
        r = requests.request(method, f"{self.uri}/api/{path}", auth=self.auth, timeout=30, **kwargs)
        if r.status_code == 200:
            return r.json()
        try:
            code = r.json().get("error_code", "")
        except ValueError:
            code = ""
        if code in ok_codes:
            return {}
        raise RuntimeError(f"MLflow {method} {path} answered {r.status_code}: {r.text[:300]}")

    def create_user(self, user: str, password: str) -> None:
        self.call(
            "POST",
            "2.0/mlflow/users/create",
            ("RESOURCE_ALREADY_EXISTS",),
            json={"username": user, "password": password},
        )

    def experiment_id(self, name: str) -> str:
        from cxr.tracking import EXPERIMENT_TAGS  # tagged as the pipeline tags the experiments it makes

        tags = [{"key": k, "value": v} for k, v in EXPERIMENT_TAGS.items()]
        self.call(
            "POST", "2.0/mlflow/experiments/create", ("RESOURCE_ALREADY_EXISTS",), json={"name": name, "tags": tags}
        )
        got = self.call("GET", "2.0/mlflow/experiments/get-by-name", params={"experiment_name": name})
        return got["experiment"]["experiment_id"]

    def create_registered_model(self, name: str) -> None:
        self.call("POST", "2.0/mlflow/registered-models/create", ("RESOURCE_ALREADY_EXISTS",), json={"name": name})

    def grant(self, user: str, resource_type: str, resource_id: str, permission: str) -> None:
        body = {"username": user, "resource_type": resource_type, "resource_id": resource_id, "permission": permission}
        self.call("POST", "3.0/mlflow/users/permissions/grant", ("RESOURCE_ALREADY_EXISTS",), json=body)


def setup_users(lay, state: dict, users: list[str], experiment: str, registered_model: str) -> None:
    """The MLflow users (idempotent), the shared experiment and registered model with EDIT for each user,
    and ``secrets/<user>.env`` (and ``admin.env``) with the tracking URI and that user's credentials."""
    secrets = load_secrets(lay.secrets, users)
    admin = Admin(state["tracking_uri"], secrets["admin"])
    exp_id = admin.experiment_id(experiment)
    admin.create_registered_model(registered_model)
    for user in users:
        admin.create_user(user, secrets["users"][user])
        admin.grant(user, "experiment", exp_id, TEAM_PERMISSION)
        admin.grant(user, "registered_model", registered_model, TEAM_PERMISSION)
    for user, password in [(ADMIN, secrets["admin"]), *((u, secrets["users"][u]) for u in users)]:
        write_private(lay.secrets / f"{user}.env", user_env(state["tracking_uri"], user, password))


def user_env(uri: str, user: str, password: str) -> str:
    return (
        f"# {user} on the team stack (python -m cxr.team): `source` this file; never commit it.\n"
        f"export MLFLOW_TRACKING_URI={uri}\n"
        f"export MLFLOW_TRACKING_USERNAME={user}\n"
        f"export MLFLOW_TRACKING_PASSWORD={password}\n"
    )


def configure_remote(repo: Path, user: str, state: dict, secrets: dict) -> list[list[str]]:
    """The DVC remote ``team`` in ``repo`` the DVC way: ``dvc remote add -d`` (in .dvc/config, to commit)
    when the repository has no such remote yet, then the endpoint and ``user``'s keys with ``--local``
    (.dvc/config.local, git-ignored by DVC). The commands run (secrets masked)."""
    if user not in secrets["s3"] or user == "mlflow":
        raise KeyError(f"no S3 keys for user {user!r}; the stack's users: {sorted(secrets['users'])}")
    key, secret = secrets["s3"][user]
    listed = subprocess.run(["dvc", "remote", "list"], cwd=repo, capture_output=True, text=True, check=True).stdout
    cmds = (
        []
        if any(line.split()[:1] == [REMOTE] for line in listed.splitlines())
        else [["dvc", "remote", "add", "-d", REMOTE, DVC_URL]]
    )
    for option, value in (("endpointurl", state["s3_endpoint"]), ("access_key_id", key), ("secret_access_key", secret)):
        cmds.append(["dvc", "remote", "modify", "--local", REMOTE, option, value])
    for cmd in cmds:
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True)
    return [[("***" if a == secret else a) for a in cmd] for cmd in cmds]
