"""``python -m cxr.team up|down|status|remote USER``: the team stack on this machine (``make team-up`` / ``team-down``).

python -m cxr.team up [--users "alice bob"]   # TEAM_USERS, default alice and bob
python -m cxr.team remote alice               # in a clone: DVC remote `team`, alice's keys in config.local
python -m cxr.team down
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from cxr.team import access, stack


def _names() -> tuple[str, str]:
    """params.yaml's mlflow.experiment and mlflow.registered_model (the pipeline's names)."""
    from cxr.run_context import project_root

    try:
        cfg = yaml.safe_load((project_root() / "params.yaml").read_text()).get("mlflow", {})
    except (OSError, AttributeError, yaml.YAMLError):
        cfg = {}
    return cfg.get("experiment", "chest-xray-pneumonia"), cfg.get("registered_model", "cxr-pneumonia")


def _report(lay: stack.Layout, st: dict, users: list[str]) -> str:
    env = lay.secrets / f"{users[0]}.env" if users else lay.secrets
    return "\n".join(
        [
            f"tracking URI   {st['tracking_uri']}   (basic-auth; anonymous requests get 401)",
            f"S3 endpoint    {st['s3_endpoint']}   DVC remote {st['dvc_remote']}, MLflow artifacts {st['artifacts']}",
            f"credentials    {lay.secrets}/  (0700, git-ignored): <user>.env for {', '.join(users)}; admin.env",
            f"PID files      {lay.root / 'pids'}/   logs {lay.root / 'logs'}/",
            f"use it         source {env} && python -m cxr.team remote {users[0] if users else 'USER'}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr.team", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start the stack (or report the running one)")
    start.add_argument("--users", default=os.environ.get("TEAM_USERS") or " ".join(access.DEFAULT_USERS))
    sub.add_parser("down", help="end each process by its PID")
    sub.add_parser("status", help="what runs, on which ports")
    remote = sub.add_parser("remote", help="configure the DVC remote `team` in a clone for USER")
    remote.add_argument("user")
    remote.add_argument("--repo", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    lay = stack.Layout(stack.team_dir())
    if args.command == "up":
        users = args.users.split()
        st = stack.up(lay, users, *_names())
        print(_report(lay, st, users))
    elif args.command == "down":
        ended = stack.down(lay)
        left = stack.open_ports(lay)
        print(f"stopped: {', '.join(ended) or 'nothing was running'}; ports still open: {left or 'none'}")
        return 1 if left else 0
    elif args.command == "status":
        live = stack.running(lay)
        print(f"running: {live or 'nothing'}; listening: {stack.open_ports(lay)}")
        return 0 if len(live) == len(stack.SERVICES) else 3
    else:
        st = stack.state(lay)
        if not st:
            print(f"team: error: no stack state in {lay.root}; start it with make team-up", file=sys.stderr)
            return 1
        secrets = access.load_secrets(lay.secrets, [])
        for cmd in access.configure_remote(args.repo, args.user, st, secrets):
            print(" ".join(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
