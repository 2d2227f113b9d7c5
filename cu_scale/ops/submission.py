"""`cu-scale submit`: a run (or one stage) as a Ray job on a cluster, through Ray's `JobSubmissionClient`.

What it submits is what `ray job submit` would: the entrypoint ``python -m jobs.run`` (or ``jobs.stage``)
with the working directory uploaded as the job's runtime environment. Before anything is uploaded, the
config is loaded and validated here with its overrides and --root, so a typo fails in a second on the
laptop, not minutes later in the cluster's log.

Ray 2.60 clusters require token authentication by default: the client reads the token the documented way,
from RAY_AUTH_TOKEN, or from the file named by RAY_AUTH_TOKEN_PATH (default ~/.ray/auth_token), with
RAY_AUTH_MODE=token. A refused request is reported with what to set.
"""

from __future__ import annotations

import asyncio
import pathlib
import shlex
import time

from cu_scale.config import ConfigError, load_config, resolve_paths

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Never uploaded with the working directory (Ray also skips what .gitignore lists), as gitignore patterns.
EXCLUDES = [".git", ".venv", "runs", "stores", "__pycache__", "*.egg-info", ".pytest_cache"]
# Nor any file that holds a credential: a job's working directory is readable by every job on the cluster
# and stays in its object store. The job gets credentials from the cluster's own environment instead.
CREDENTIAL_EXCLUDES = [
    ".env", ".env.*", "*.env",  # dotenv files
    ".aws/", "credentials", "credentials.*", "*credentials*.json", "*service-account*.json",  # AWS and GCP keys
    ".ray/", "auth_token", "*.token",  # Ray's cluster token
    ".ssh/", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks",  # keys and certificates
    ".kube/", "kubeconfig", "*.kubeconfig", ".docker/config.json",  # cluster and registry logins
    ".netrc", ".git-credentials", ".pgpass", ".pypirc",  # other tools' passwords
]
TOKEN_HELP = (
    "the cluster requires a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=FILE (or RAY_AUTH_TOKEN), "
    "with the token of the cluster (`ray get-auth-token` on the head prints it)"
)


class SubmissionError(RuntimeError):
    pass


def job_entrypoint(config: str, overrides: list[str], root: str | None, stage: str | None = None, start_from: str | None = None, quiet: bool = False) -> str:
    """The shell command the job runs, as `ray job submit -- ...` would be given it."""
    command = ["python", "-m", "jobs.stage", stage] if stage else ["python", "-m", "jobs.run"]
    command += ["--config", config]
    for item in overrides:
        command += ["--set", item]
    if root:
        command += ["--root", root]
    if start_from:
        command += ["--from", start_from]
    if quiet:
        command.append("--quiet")
    return shlex.join(command)


def prepare_submission(config_path: str, overrides: dict, root: str | None, working_dir: str) -> tuple[str, dict]:
    """Validate the config as the job will see it; returns (config path inside the working directory, runtime env)."""
    config = pathlib.Path(config_path).resolve()
    working = pathlib.Path(working_dir).resolve()
    if not config.is_relative_to(working):
        raise ConfigError(f"{config_path}: the config must lie inside the uploaded working directory {working} (--working-dir)")
    resolve_paths(load_config(config, overrides), root)  # the job would refuse it: refuse it now
    if not (working / "jobs" / "run.py").is_file():
        raise ConfigError(f"{working}: not a cu-scale checkout (no jobs/run.py); --working-dir must be the repository root")
    runtime_env = {"working_dir": str(working), "excludes": EXCLUDES + CREDENTIAL_EXCLUDES, "env_vars": {"PYTHONUNBUFFERED": "1"}}
    return str(config.relative_to(working)), runtime_env


def client_for(address: str):
    import logging

    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    logging.getLogger("ray").setLevel(logging.WARNING)  # not a line per file skipped while packaging the upload
    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise SubmissionError(f"{address}: {TOKEN_HELP}") from None
    except (ConnectionError, RuntimeError) as error:
        raise SubmissionError(_explain(address, error)) from None


def _explain(address: str, error: Exception) -> str:
    text = str(error)
    if "401" in text or "Unauthorized" in text or "authentication" in text.lower():
        return f"{address}: {TOKEN_HELP}"
    return f"{address}: {text.splitlines()[0] if text else type(error).__name__}"


def submit(client, entrypoint: str, runtime_env: dict, retry_s: float = 60.0) -> str:
    """Submit; a head whose job agent is still starting answers 'No available agent': retry for `retry_s`."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise SubmissionError(_explain(client.get_address(), error)) from None
            time.sleep(2.0)


def follow(client, job_id: str, say=print) -> str:
    """Stream the job's log until it ends; returns its final status (SUCCEEDED, FAILED or STOPPED)."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            say(lines, end="", flush=True)

    asyncio.run(tail())
    while (status := str(client.get_job_status(job_id).value)) not in TERMINAL:
        time.sleep(1.0)  # the log closes a moment before the status is final
    return status
