"""MLflow tracking and the model registry: one run per distinct encoder, and the challenger -> champion gate.

An encoder is registered once: its digest (architecture + weights, `encoder_sha256` tag on the version) is looked
up first, so re-running on unchanged inputs, or retrying a register stage that was killed or failed half-way,
never adds a duplicate version; a version that was created but never judged is judged now.

The gate: every new version gets alias `challenger`. The current champion is scored again in the same run, by
the same code (`score_encoder`), on the current data; the challenger takes `champion` only if its
`register.promote_metric` beats that by at least `register.min_improvement`. Both scores, the margin and the
decision are logged to the challenger's run and tagged on its version (`gate.*`). The alias is moved
compare-and-set style: if the champion changed while it was being scored, the gate is run again against the new
one. Versions are logged in the `pt2` format (torch.export), so loading `models:/ssl-encoder@champion` runs no
pickled code; the weights-only `encoder.pt` is logged beside it so the champion can be re-scored.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from flows.tracking import artifact_location, check_tracking_server, prepare_tracking
from ssl_components import layout
from ssl_components.config import Config
from ssl_components.errors import PipelineError
from ssl_components.io import read_json, write_json
from ssl_components.metrics import epoch_metrics, is_encoder_metric

log = logging.getLogger(__name__)
CHALLENGER, CHAMPION = "challenger", "champion"


def tracking_uri(cfg: Config) -> str:
    """register.tracking_uri, with a relative sqlite path made absolute (relative to the workspace): MLflow keeps
    one store per URI string, so a relative one would follow whichever folder first opened it."""
    uri = cfg.register_.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def _mlflow(cfg: Config):
    import mlflow

    uri = tracking_uri(cfg)
    prepare_tracking(uri)  # bounded HTTP retries; an http(s) server that does not answer is one clear line, now
    mlflow.set_tracking_uri(uri)
    return mlflow


def _client(cfg: Config):
    return _mlflow(cfg).MlflowClient()


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _experiment_id(cfg: Config) -> str:
    mlflow = _mlflow(cfg)
    reg = cfg.register_
    if cfg.register_.tracking_uri.startswith("sqlite:///"):
        Path(reg.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    exp = mlflow.get_experiment_by_name(reg.experiment)
    if exp is not None:
        return exp.experiment_id
    # artifact_location None: the server's default (mlflow-artifacts:/ when it runs with --serve-artifacts)
    return mlflow.create_experiment(reg.experiment, artifact_location=artifact_location(reg.artifact_root))


ENCODER_TAG = "encoder_sha256"
STATE_ARTIFACT = "encoder_state"  # run artifact folder holding the weights-only encoder.pt


class RegistryUnavailable(PipelineError):
    """The tracking server or database did not answer; worth retrying."""

    transient = True


def _vid(version) -> str | None:
    """A model version's number as a string (MLflow returns ints or strings depending on the store)."""
    return None if version is None else str(version.version)


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _version_of(client, name: str, digest: str):
    """The registered version holding exactly this encoder, if any (the oldest, should there be several)."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name='{name}' and tags.{ENCODER_TAG}='{digest}'")
    except MlflowException:
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def _end_orphaned_runs(client, experiment_id: str, name: str) -> None:
    """Runs this workspace left RUNNING (a register stage killed half-way): FINISHED if their version exists,
    else KILLED. Only called while holding the workspace lock, so none of them is live."""
    orphans = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.workspace = '{Path.cwd()}'")
    for run in orphans:
        versions = client.search_model_versions(f"name='{name}' and run_id='{run.info.run_id}'")
        client.set_terminated(run.info.run_id, "FINISHED" if versions else "KILLED")
        log.warning(
            "register: run %s was left running by an interrupted run; marked %s", run.info.run_id, "FINISHED" if versions else "KILLED"
        )


def _log_and_register(cfg: Config, experiment_id: str, encoder, metrics: dict, digest: str):
    """One MLflow run (params, per-epoch loss, metrics, plots, validation report, encoder in pt2 and weights-only
    form) and one new model version tagged with the encoder's digest."""
    from ssl_components.data.dataset import data_version

    mlflow = _mlflow(cfg)
    reg = cfg.register_
    meta = cast(dict[str, Any], encoder.meta)  # set by load_encoder
    history = read_json(cfg.paths.models / layout.HISTORY)
    tags = {
        "data_version": data_version(cfg.paths.data),
        "git_commit": git_commit(),
        "profile": cfg.profile,
        "method": meta["method"],
        "backbone": meta["backbone"],
        "workspace": str(Path.cwd()),
        ENCODER_TAG: digest,
    }
    run_name = f"{meta['method']}-{meta['backbone']}-{time.strftime('%Y%m%d-%H%M%S')}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags):
        mlflow.log_params({k: str(v)[:500] for k, v in cfg.flat().items()})
        for record in history:
            mlflow.log_metrics(epoch_metrics(record), step=record["epoch"])  # loss, lr, ..., the kNN monitor where checked
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(cfg.paths.reports / layout.PLOTS), artifact_path=layout.PLOTS)
        mlflow.log_artifact(str(cfg.paths.reports / layout.VALIDATION_MD))
        mlflow.log_artifact(str(cfg.paths.models / layout.ENCODER), artifact_path=STATE_ARTIFACT)
        size = meta["image_size"]
        example = np.zeros((2, meta["in_channels"], size, size), dtype=np.float32)
        info = mlflow.pytorch.log_model(encoder, name="encoder", input_example=example, metadata=meta)
        version_tags = {ENCODER_TAG: digest, "data_version": tags["data_version"], reg.promote_metric: str(metrics[reg.promote_metric])}
        return mlflow.register_model(info.model_uri, reg.model_name, tags=version_tags)


def _champion_encoder(cfg: Config, client, champion):
    """The champion's encoder, rebuilt from its weights-only artifact (None for versions logged without one)."""
    import tempfile

    from mlflow.exceptions import MlflowException

    from ssl_components.backbones import load_encoder

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = _mlflow(cfg).artifacts.download_artifacts(
                run_id=champion.run_id, artifact_path=f"{STATE_ARTIFACT}/{layout.ENCODER}", dst_path=tmp
            )
        except (MlflowException, OSError):
            return None
        return load_encoder(path)


def _rescore(cfg: Config, client, champion) -> tuple[float, str]:
    """The champion's promote metric on the current data, by the same code as the challenger's. Returns
    (score, how it was obtained)."""
    from ssl_components.data import load_dataset
    from ssl_components.device import resolve_device
    from ssl_components.evaluation import score_encoder

    metric = cfg.register_.promote_metric
    encoder = _champion_encoder(cfg, client, champion)
    if encoder is None:  # registered before re-scoring existed: only its recorded number is there
        recorded = client.get_run(champion.run_id).data.metrics[metric]
        log.warning("register: champion v%s has no weights-only artifact; comparing with its recorded %s", champion.version, metric)
        return float(recorded), "recorded in its own run (no weights to re-score)"
    train, test = load_dataset(cfg.paths.data, "train"), load_dataset(cfg.paths.data, "test")
    log.info("register: scoring champion v%s again on the current data (%d test images)", champion.version, len(test))
    score = score_encoder(encoder, train, test, cfg.evaluate, [metric], cfg.seed, str(resolve_device("auto")))[metric]
    return score, "re-scored in this run on the current test split"


def _gate(cfg: Config, client, version, score: float) -> dict:
    """Decide whether `version` (with `score` on the current data) becomes champion; move aliases; record why."""
    from mlflow.entities import Metric

    reg = cfg.register_
    name, metric, margin = reg.model_name, reg.promote_metric, reg.min_improvement
    client.set_registered_model_alias(name, CHALLENGER, _vid(version))
    for _ in range(3):
        champion = _champion(client, name)
        champion_score, how, compared = None, "no champion yet", None
        if champion is None:
            promote = True
        elif _vid(champion) == _vid(version):
            promote, how = False, "already the champion"
        else:
            compared = _vid(champion)
            champion_score, how = _rescore(cfg, client, champion)
            promote = score - champion_score >= margin
        current = _champion(client, name)  # compare-and-set: judged against the champion that is still there?
        if _vid(current) != _vid(champion):
            log.warning(
                "register: the champion moved to v%s while v%s was being judged; judging again",
                _vid(current),
                _vid(version),
            )
            continue
        if promote:
            client.set_registered_model_alias(name, CHAMPION, _vid(version))
        decision = "promoted" if promote else ("already champion" if how == "already the champion" else "kept as challenger")
        gate = {
            "gate.decision": decision,
            "gate.metric": metric,
            "gate.challenger_score": f"{score:.6f}",
            "gate.champion_version": compared or "",
            "gate.champion_score": "" if champion_score is None else f"{champion_score:.6f}",
            "gate.champion_score_source": how,
            "gate.min_improvement": str(margin),
            "gate.time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        for key, value in gate.items():
            client.set_model_version_tag(name, _vid(version), key, value)
        now = int(time.time() * 1000)
        logged = [
            Metric(f"gate_challenger_{metric}", score, now, 0),
            Metric("gate_min_improvement", margin, now, 0),
            Metric("gate_promoted", float(promote), now, 0),
        ]
        if champion_score is not None:
            logged.append(Metric(f"gate_champion_{metric}", champion_score, now, 0))
        client.log_batch(version.run_id, metrics=logged, tags=[], params=[])
        for key, value in gate.items():
            client.set_tag(version.run_id, key, value)
        return {
            "promoted": promote,
            "decision": decision,
            "champion_version": _vid(version) if promote else _vid(champion),
            "previous_champion": _vid(champion),
            "champion_score": champion_score,
            "compared_with": compared,
        }
    raise RegistryUnavailable(f"the champion of {name!r} kept changing while v{_vid(version)} was judged; run register again")


def register_run(cfg: Config) -> dict:
    """Register the evaluated encoder once, judge it against the champion, write reports/registry.json."""
    from mlflow.exceptions import MlflowException

    try:
        return _register(cfg)
    except MlflowException as exc:
        check_tracking_server(tracking_uri(cfg), again=True)  # a server that went away: say so in one line
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise RegistryUnavailable(
            f"MLflow at {cfg.register_.tracking_uri} failed ({first}); check that the tracking server or database is reachable, "
            "then run again (nothing is registered twice)"
        ) from exc


def _register(cfg: Config) -> dict:
    from ssl_components.backbones import encoder_digest, load_encoder

    reg = cfg.register_
    client = _client(cfg)
    metrics = read_json(cfg.paths.reports / layout.METRICS)
    encoder = load_encoder(cfg.paths.models / layout.ENCODER)
    digest = encoder_digest(encoder, cast(dict[str, Any], encoder.meta))
    experiment_id = _experiment_id(cfg)
    _end_orphaned_runs(client, experiment_id, reg.model_name)
    score = float(metrics[reg.promote_metric])
    version = _version_of(client, reg.model_name, digest)
    result: dict[str, Any] = {
        "model_name": reg.model_name,
        "metric": reg.promote_metric,
        "score": score,
        "margin": reg.min_improvement,
        "encoder_sha256": digest,
    }
    if version is not None and version.tags.get("gate.decision"):
        champion = _champion(client, reg.model_name)
        log.info("register: this encoder is identical to v%s (already registered and judged); not registered again", _vid(version))
        result.update(
            version=_vid(version),
            run_id=version.run_id,
            registered=False,
            identical_to=_vid(version),
            promoted=False,
            decision=f"identical to v{_vid(version)}: not registered again",
            champion_version=_vid(champion),
            previous_champion=_vid(champion),
            champion_score=None,
            compared_with=None,
        )
    else:
        registered = version is None
        if version is None:
            version = _log_and_register(cfg, experiment_id, encoder, metrics, digest)
            log.info("register: registered %s v%s", reg.model_name, _vid(version))
        else:
            log.info("register: v%s holds this encoder but was never judged (an interrupted run); judging it now", _vid(version))
        result.update(version=_vid(version), run_id=version.run_id, registered=registered, identical_to=None)
        gate = _gate(cfg, client, version, score)
        result.update(gate)
        gain = "" if gate["champion_score"] is None else f" ({100 * (score - gate['champion_score']):+.2f} points)"
        log.info("register: v%s %s%s", _vid(version), result["decision"], gain)
    write_json(cfg.paths.reports / layout.REGISTRY, result)
    return result


def promote_by_hand(cfg: Config, version: str) -> None:
    """Make `version` the champion, recording on it that a person decided (`gate.decision`)."""
    from mlflow.exceptions import MlflowException

    from ssl_components.errors import ConfigError

    client = _client(cfg)
    name = cfg.register_.model_name
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise ConfigError(f"{name!r} has no version {version} in {tracking_uri(cfg)}; see `sslpipe registry`") from None
    previous = _vid(_champion(client, name))
    client.set_registered_model_alias(name, CHAMPION, version)
    for key, value in {
        "gate.decision": "promoted by hand",
        "gate.champion_version": previous or "",
        "gate.time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }.items():
        client.set_model_version_tag(name, version, key, value)


def tag_version(cfg: Config, version: str, tags: dict[str, str]) -> None:
    """Set tags on one version of the model (say, where its data and outputs were pushed)."""
    client = _client(cfg)
    for key, value in tags.items():
        client.set_model_version_tag(cfg.register_.model_name, version, key, value)


def load_registered_encoder(cfg: Config, alias: str = CHAMPION):
    """The encoder behind `models:/<model_name>@<alias>`, as a callable torch module (no unpickling)."""
    return load_registered_model(cfg, alias).module


@dataclass(frozen=True)
class RegisteredEncoder:
    """One registered encoder version, loaded, and where it came from."""

    module: Any  # a torch module in inference mode (a torch.export graph for pt2 versions: `.eval()` is refused)
    model_name: str
    version: str  # the version number the reference resolved to when it was loaded
    ref: str  # what was asked for: an alias or a version number
    tracking_uri: str
    meta: dict  # logged with the model: backbone, width, in_channels, image_size, out_dim, method


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def _not_found(client, name: str, ref: str, uri: str) -> str:
    """Why `ref` is not in the registry at `uri`, with what is there instead (one line)."""
    from mlflow.exceptions import MlflowException

    what = f"version {ref}" if ref.isdigit() else f"alias {ref!r}"
    try:
        aliases = client.get_registered_model(name).aliases
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    except MlflowException:
        return (
            f"no model {name!r} is registered in {uri}; run `sslpipe run` to register one, or check register.model_name "
            "and the tracking URI (`sslpipe registry` lists what is there)"
        )
    there = f"versions {', '.join(map(str, versions)) or 'none'}" + (f", aliases {', '.join(sorted(aliases))}" if aliases else "")
    return f"{name!r} has no {what} in {uri} (it has {there}); pass one of those (`sslpipe registry` lists them)"


def resolve_version(cfg: Config, ref: str = CHAMPION) -> str:
    """The version number that `ref` (an alias, or a version number when all digits) names now.

    Raises ConfigError when the registry has no such alias or version (naming the tracking URI and what it
    has), RegistryUnavailable when the tracking server or database does not answer."""
    from mlflow.exceptions import MlflowException

    from ssl_components.errors import ConfigError

    uri, name = tracking_uri(cfg), cfg.register_.model_name
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():  # MLflow would create an empty one
        raise ConfigError(
            f"no MLflow database at {uri.removeprefix('sqlite:///')} (tracking URI {uri}); run `sslpipe run` to create one, "
            "or point register.tracking_uri / --tracking-uri at your registry"
        )
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a model is a few small files
    client = _client(cfg)  # an http(s) server that does not answer is one line here (flows.tracking)
    try:
        version = client.get_model_version(name, ref) if ref.isdigit() else client.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ConfigError(_not_found(client, name, ref, uri)) from None
        raise RegistryUnavailable(
            f"MLflow at {uri} did not answer ({_first_line(exc)}); check that the tracking server is running and reachable, "
            "or pass another --tracking-uri"
        ) from None
    return str(version.version)


def load_registered_model(cfg: Config, ref: str = CHAMPION, device: str = "cpu") -> RegisteredEncoder:
    """The encoder version `ref` names (`models:/<model_name>@<alias>`, or `models:/<model_name>/<version>` when
    `ref` is all digits) from the registry at register.tracking_uri, on `device`.

    The alias is resolved to a version first and that version is loaded, so the version reported is the one
    whose weights were loaded even if the alias moves meanwhile. MLflow checks that the pt2 archive holds no
    pickled code before loading it; on a GPU the exported program is moved there with torch.export's own pass
    (an exported graph can have its device baked into some ops, which `module.to()` would not change)."""
    import tempfile

    import torch
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    uri, name = tracking_uri(cfg), cfg.register_.model_name
    version = resolve_version(cfg, ref)
    mlflow = _mlflow(cfg)
    with tempfile.TemporaryDirectory(prefix="sslpipe-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
            conf = Model.load(local)
            module = mlflow.pytorch.load_model(local)
        except (MlflowException, OSError) as exc:
            raise RegistryUnavailable(
                f"{name} v{version} could not be loaded from {uri} ({_first_line(exc)}); check that its artifact store is reachable"
            ) from None
        target = torch.device(device)
        if target.type != "cpu":
            pt2 = Path(local) / conf.flavors["pytorch"]["model_data"] / "model.pt2"
            if pt2.is_file():
                from torch.export.passes import move_to_device_pass

                module = move_to_device_pass(torch.export.load(str(pt2)), target).module()  # the archive just checked
            else:
                module = module.to(target)
    return RegisteredEncoder(module, name, version, ref, uri, dict(conf.metadata or {}))


def _gate_note(tags: dict[str, str]) -> str:
    """'promoted', or 'kept as challenger (+0.12 vs v3)' from a version's gate tags."""
    decision = tags.get("gate.decision", "")
    if tags.get("gate.champion_version") and tags.get("gate.champion_score"):
        gain = 100 * (float(tags["gate.challenger_score"]) - float(tags["gate.champion_score"]))
        decision += f" ({gain:+.2f} vs v{tags['gate.champion_version']})"
    return decision


def registry_rows(cfg: Config) -> list[dict]:
    """Every version of the registered model, newest first, with aliases and the promotion metric."""
    from mlflow.exceptions import MlflowException

    client = _client(cfg)
    name = cfg.register_.model_name
    try:
        versions = client.search_model_versions(f"name='{name}'")
        aliases = client.get_registered_model(name).aliases  # alias -> version
    except MlflowException:
        return []
    rows = []
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        run = client.get_run(mv.run_id)
        rows.append(
            {
                "version": str(mv.version),
                "aliases": ",".join(sorted(a for a, v in aliases.items() if str(v) == str(mv.version))),
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(mv.creation_timestamp / 1000)),
                "run_id": mv.run_id,
                "data_version": run.data.tags.get("data_version", "")[:10],
                "gate": _gate_note(mv.tags),
                # the encoder's own accuracies; baselines stay in the run
                **{k: round(v, 4) for k, v in sorted(run.data.metrics.items()) if is_encoder_metric(k)},
            }
        )
    return rows
