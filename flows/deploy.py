"""`sslpipe deploy`: the flow as a deployment on a Prefect work pool, run by a worker (`prefect worker start`).

`sslpipe serve` runs scheduled flow runs in its own process; a work pool hands them to whatever worker polls it:
a process worker on this machine, or a Docker worker that starts each run in a container (a GPU machine).

Two ways a run finds the workspace (params.yaml, data/, models/, the MLflow database):

- a pool that runs processes (`process`): the deployment's source is the workspace folder, a local path (no code is
  built or pushed); its pull step makes that folder the flow run's working directory, so a run reads and writes
  exactly what `sslpipe run` in that folder would.
- a pool that runs images (`docker`, needs `--image`): the image has the package installed and its working directory
  is `/workspace`; for a `docker` pool the workspace folder is mounted there (job variable `volumes`).

Either way the entrypoint is the module path `flows.pipeline.ssl_pipeline`: the code is the installed package (as for
`sslpipe serve` and in the image), so the workspace need not be a checkout of this repository.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ssl_components.errors import PipelineError

ENTRYPOINT = "flows.pipeline.ssl_pipeline"
CONTAINER_WORKDIR = "/workspace"  # the Dockerfile's WORKDIR


@dataclass
class Deployed:
    deployment_id: str
    pool: str
    pool_type: str
    created_pool: bool
    lines: list[str] = field(default_factory=list)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_cron(cron: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise PipelineError(f"--cron {cron!r} is not a valid cron expression ({reason})") from None


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise PipelineError(
            "sslpipe deploy needs a Prefect server: start one with `prefect server start` and point PREFECT_API_URL at it "
            "(e.g. `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`)"
        )
    return url


def _pool(client: Any, name: str, image: str | None) -> tuple[Any, bool]:
    """The work pool, created as a `process` pool when it does not exist and no image is asked for."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        return client.read_work_pool(name), False
    except ObjectNotFound:
        pass
    if image:
        raise PipelineError(
            f"work pool {name!r} does not exist; create it with `prefect work-pool create {name} --type docker` "
            "(needs `pip install prefect-docker`) and give it the GPU job variables, then deploy again"
        ) from None
    template = ProcessWorker.get_default_base_job_template()
    try:
        return client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template)), True
    except ObjectAlreadyExists:  # created by someone else in the meantime
        return client.read_work_pool(name), False


def _job_variables(pool: Any, image: str | None, project: Path) -> dict[str, Any]:
    """Checks that the pool runs what is asked (a process, or an image) and returns the deployment's job variables."""
    variables = (pool.base_job_template or {}).get("variables", {}).get("properties", {})
    runs_images = "image" in variables
    if image and not runs_images:
        raise PipelineError(
            f"work pool {pool.name!r} is a {pool.type} pool, which runs no images; leave out --image, "
            f"or use a docker pool (`prefect work-pool create gpu-pool --type docker`)"
        )
    if runs_images and not image:
        raise PipelineError(f"work pool {pool.name!r} is a {pool.type} pool, which runs flow runs in containers; pass --image IMAGE")
    if image and pool.type == "docker":  # the workspace, where the image's working directory is
        keep = variables.get("volumes", {}).get("default") or []
        return {"volumes": [*keep, f"{project}:{CONTAINER_WORKDIR}"]}
    return {}


def deploy(
    pool: str,
    name: str,
    cron: str,
    parameters: dict[str, Any],
    work_queue: str | None = None,
    image: str | None = None,
    project: Path | None = None,
) -> Deployed:
    """Create or update deployment `ssl-pipeline/<name>` on work pool `pool`: one run at a time (later runs wait),
    on the cron schedule, with `parameters` (settings already checked by the caller).

    A missing pool is created as a `process` pool; with `image`, a missing pool is an error (a container pool needs
    prefect-docker and GPU settings the user chooses).
    """
    import httpx
    from prefect import Flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.types.entrypoint import EntrypointType

    from flows.pipeline import ssl_pipeline

    project = (project or Path.cwd()).resolve()
    _check_cron(cron)
    url = _api_url()
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    options: dict[str, Any] = dict(
        name=name,
        work_pool_name=pool,
        work_queue_name=work_queue,
        cron=cron,
        concurrency_limit=one_at_a_time,
        parameters=parameters,
        build=False,  # nothing to build or push: the code is installed (here, or in the image)
        push=False,
        print_next_steps=False,
        ignore_warnings=True,  # Prefect's hint to use `serve` for process pools
    )
    try:
        with get_client(sync_client=True) as client:
            work_pool, created = _pool(client, pool, image)
        job_variables = _job_variables(work_pool, image, project)
        if image:  # the image holds the code; its working directory holds the workspace
            deployment_id = ssl_pipeline.deploy(
                image=image, job_variables=job_variables, entrypoint_type=EntrypointType.MODULE_PATH, **options
            )
        else:  # the workspace folder is the deployment's source: its pull step makes it the working directory
            source = cast(Flow, ssl_pipeline.from_source(source=str(project), entrypoint=ENTRYPOINT))  # sync: called outside a loop
            deployment_id = source.deploy(job_variables=job_variables, **options)
    except httpx.TransportError as exc:  # refused, timed out: not an answer from the server
        raise PipelineError(f"cannot reach the Prefect server at {url} ({_first_line(exc)}); is `prefect server start` running?") from None
    except ValueError as exc:  # Prefect's own checks: a name with a banned character, a pool it cannot deploy to
        raise PipelineError(f"cannot deploy ssl-pipeline/{name} to work pool {pool!r}: {_first_line(exc)}") from None

    if not image:
        where = f"workspace {project}"
    elif job_variables:
        where = f"image {image}, workspace {project} mounted at {CONTAINER_WORKDIR}"
    else:
        where = f"image {image}; mount the workspace at {CONTAINER_WORKDIR}, the image's working directory"
    lines = []
    if created:
        lines.append(f"work pool {pool!r} did not exist: created it (type process)")
    lines += [
        f"deployed ssl-pipeline/{name} to work pool {pool!r} ({work_pool.type}), deployment {deployment_id}",
        f"schedule: cron {cron!r}; one run at a time (later runs wait); {where}",
        f"run it now: prefect deployment run 'ssl-pipeline/{name}'; runs need a worker: prefect worker start --pool {pool}",
    ]
    return Deployed(str(deployment_id), pool, work_pool.type, created, lines)
