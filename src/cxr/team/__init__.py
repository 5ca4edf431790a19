"""A team's stack on one machine, to try it and to test it: PostgreSQL, an S3 store and ``mlflow server``.

    make team-up                    # python -m cxr.team up: start (or find running) the three, print where
    source .team/secrets/alice.env  # MLFLOW_TRACKING_URI + alice's MLflow credentials
    python -m cxr.team remote alice # in a clone: the DVC remote `team`, endpoint and keys in .dvc/config.local
    make team-down                  # python -m cxr.team down: end each process by its PID

:mod:`cxr.team.stack` starts and stops the processes (free loopback ports, PID files, state in
``$TEAM_DIR``, default ``.team/``); :mod:`cxr.team.access` makes the users, their S3 keys and MLflow
passwords, and what each may touch. docs/team.md says how a team does the same on the servers it has.
"""
