"""Typed settings read from params.yaml, with a profile's overrides merged in.

Each pipeline stage reads only its own section; unknown or invalid keys are a ConfigError whose first line
names the key and the fix.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ssl_components.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # settings that say how a stage runs, not what it makes: left out of its record key (flows/records.py), so
    # changing them neither makes the stage stale nor stops a checkpoint from being resumed
    EXECUTION: ClassVar[frozenset[str]] = frozenset()

    def identity(self) -> dict[str, Any]:
        """The settings that decide the stage's result (JSON values), without the EXECUTION ones."""
        return self.model_dump(mode="json", exclude=set(self.EXECUTION))


class PathsConfig(_Section):
    data: Path = Path("data")
    models: Path = Path("models")
    reports: Path = Path("reports")
    state: Path = Path(".sslpipe")  # the workspace lock, stage records and the hash cache


class IngestConfig(_Section):
    source: Literal["fashion_mnist", "folder", "manifest"] = "fashion_mnist"
    path: Path | None = None
    image_size: int = Field(default=28, ge=8, le=512)
    channels: Literal[1, 3] = 1
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    max_images_per_split: int | None = Field(default=None, ge=1)
    follow_links: bool = False  # read files reached through links that leave ingest.path (refused by default)

    @model_validator(mode="after")
    def _path_needed(self) -> IngestConfig:
        if self.source in ("folder", "manifest") and self.path is None:
            raise ValueError(f"ingest.source={self.source!r} needs ingest.path (the image folder or manifest file)")
        return self


class ValidateConfig(_Section):
    min_rows: int = Field(default=100, ge=1)
    max_rows: int = Field(default=5_000_000, ge=1)
    max_bad_fraction: float = Field(default=0.001, ge=0.0, le=1.0)
    allowed_modes: list[str] = ["L", "RGB", "RGBA", "P", "I", "I;16", "LA", "CMYK"]
    min_side: int = Field(default=8, ge=1)
    max_side: int = Field(default=8192, ge=1)
    expected_labels: list[int] | None = None


class CacheViewsConfig(_Section):
    EXECUTION = frozenset({"max_gib"})  # a guard on what is written, not part of what the views are
    mode: Literal["cached", "online"] = "cached"
    num_pairs: int = Field(default=8, ge=1, le=1000)
    crop_scale: tuple[float, float] = (0.3, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    flip_p: float = Field(default=0.5, ge=0.0, le=1.0)
    brightness: float = Field(default=0.4, ge=0.0, le=1.0)
    contrast: float = Field(default=0.4, ge=0.0, le=1.0)
    blur_p: float = Field(default=0.0, ge=0.0, le=1.0)
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    noise_std: float = Field(default=0.0, ge=0.0, le=1.0)
    batch_size: int = Field(default=4096, ge=1)
    max_gib: float = Field(default=16.0, gt=0)  # cached mode: a cache larger than this is refused before it is written
    # multi-crop (DINO, SwAV): small local views drawn per batch, besides the two global views
    local_crops: int = Field(default=6, ge=0, le=16)
    local_size: int = Field(default=12, ge=4)
    local_crop_scale: tuple[float, float] = (0.1, 0.4)

    @field_validator("crop_scale", "crop_ratio", "blur_sigma", "local_crop_scale")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"must be [low, high] with 0 < low <= high, got {list(v)}")
        return v


class PretrainConfig(_Section):
    # the global batch, data order and updates are the same for any number of processes or threads, up to float
    # rounding and the pretext methods' per-rank random draws (tests/test_distributed.py): a run killed under 2
    # processes resumes under 1
    EXECUTION = frozenset({"devices", "num_threads"})

    method: str = "simclr"
    backbone: Literal["small_cnn", "resnet18", "vit_tiny"] = "small_cnn"
    width: int = Field(default=64, ge=8, le=1024)
    pool: list[int] = Field(default=[1, 2, 4], min_length=1)  # small_cnn: grids the last map is averaged to, concatenated
    epochs: int = Field(default=8, ge=1)
    batch_size: int = Field(default=256, ge=2)
    # an epoch of at most this many steps, each epoch a fresh random order of the whole split (null: the whole split)
    max_steps_per_epoch: int | None = Field(default=None, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=0.002, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup_epochs: int = Field(default=1, ge=0)
    temperature: float = Field(default=0.2, gt=0)
    proj_dim: int = Field(default=128, ge=2)
    proj_hidden: int = Field(default=512, ge=2)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True
    collapse_std: float = Field(default=1e-4, ge=0)
    num_threads: int | None = Field(default=None, ge=1)
    # data-parallel processes (torchrun; one per GPU, or CPU processes with gloo); batch_size is the global batch
    devices: int = Field(default=1, ge=1, le=64)
    channels_last: bool = True  # NHWC memory format for the model and its inputs (faster convolutions on CPU and GPU)
    # watched while it trains: weighted kNN of the current encoder on a fixed labelled part of the train split
    monitor_every: int = Field(default=1, ge=0)  # check every N epochs and after the last; 0: no monitor
    monitor_images: int = Field(default=2000, ge=2)  # stratified, seeded; half the kNN bank, half the queries
    monitor_knn_k: int = Field(default=20, ge=1)  # neighbours of the monitor's kNN (cosine of standardised features, T=0.1)
    early_stop_patience: int = Field(default=0, ge=0)  # stop after N checks without a better kNN, keep the best encoder; 0: off

    @field_validator("pool")
    @classmethod
    def _pool(cls, v: list[int]) -> list[int]:
        if any(p < 1 or p > 16 for p in v) or len(set(v)) != len(v):
            raise ValueError(f"pretrain.pool lists distinct grid sizes from 1 to 16 (1: global average, 2: 2x2, ...), got {v}")
        return v

    @model_validator(mode="after")
    def _early_stop_needs_monitor(self) -> PretrainConfig:
        if self.early_stop_patience and not self.monitor_every:
            raise ValueError("pretrain.early_stop_patience needs the kNN monitor: set pretrain.monitor_every >= 1, or patience 0")
        return self

    # method-specific settings; each method reads only the ones it names
    ema_momentum: float = Field(default=0.99, ge=0.0, lt=1.0)  # BYOL / MoCo target encoder (cosine-annealed to 1)
    queue_size: int = Field(default=4096, ge=0)  # MoCo: negatives kept from earlier batches
    pred_hidden: int = Field(default=512, ge=2)  # BYOL / SimSiam predictor width
    barlow_lambda: float = Field(default=0.005, gt=0)  # Barlow Twins: off-diagonal weight
    vicreg_weights: tuple[float, float, float] = (25.0, 25.0, 1.0)  # VICReg: invariance, variance, covariance
    num_prototypes: int = Field(default=64, ge=2)  # SwAV prototypes; DINO output dimension
    teacher_temp: float = Field(default=0.04, gt=0)  # DINO teacher sharpening (the student uses `temperature`)
    center_momentum: float = Field(default=0.9, ge=0.0, lt=1.0)  # DINO centering
    sinkhorn_iters: int = Field(default=3, ge=1)  # SwAV
    sinkhorn_epsilon: float = Field(default=0.05, gt=0)  # SwAV
    patch_size: int = Field(default=4, ge=1)  # MAE / ViT patches (28x28 -> 7x7 patches of 4x4)
    mask_ratio: float = Field(default=0.75, gt=0.0, lt=1.0)  # MAE
    denoise_std: float = Field(default=0.2, ge=0.0)  # denoising autoencoder: Gaussian noise added to its input
    jigsaw_grid: int = Field(default=2, ge=2, le=4)  # jigsaw: grid x grid tiles
    jigsaw_permutations: int = Field(default=24, ge=2)  # jigsaw: size of the fixed permutation set (classes)
    vae_latent_dim: int = Field(default=16, ge=1)  # VAE: dimension of the Gaussian latent the decoder reads
    vae_beta: float = Field(default=0.5, ge=0.0)  # VAE: KL weight; loss = per-image summed squared error + beta * KL
    inpaint_fraction: float = Field(default=0.5, gt=0.0, lt=1.0)  # inpainting: share of the image area masked (one square)
    inpaint_region: Literal["random", "center"] = "random"  # inpainting: the square at a random place per image, or central


class EvaluateConfig(_Section):
    knn_k: int = Field(default=200, ge=1)
    knn_t: float = Field(default=0.02, gt=0)  # vote weight exp(sim / t); chosen on validation (docs/benchmarks.md)
    knn_standardize: bool = True  # z-score each feature on the kNN bank before the cosine (false: plain cosine, DINO's)
    probe_epochs: int = Field(default=30, ge=1)
    probe_lr: float = Field(default=0.01, gt=0)
    label_fractions: list[float] = [0.01, 0.1]
    finetune_epochs: int = Field(default=15, ge=1)
    finetune_lr: float = Field(default=1e-3, gt=0)
    finetune_min_steps: int = Field(default=400, ge=0)
    finetune_mixup: float = Field(default=0.4, ge=0)  # mixup's Beta(a, a) parameter while fine-tuning (0: off)
    finetune_flip: bool = True  # flips while fine-tuning and a flipped copy averaged in at test (false where left/right carries the label)
    finetune_head_init: Literal["random", "probe"] = "random"  # probe: start the head from a linear probe (LP-FT)
    finetune_probe_min_images: int = Field(default=3000, ge=0)  # ...when the label subset has at least this many images
    embedding_points: int = Field(default=2000, ge=10)
    # bounds on memory and time for large data sets (stratified, seeded subsets of the labelled rows beyond them):
    max_feature_images: int = Field(default=100_000, ge=1)  # train images whose frozen features kNN and the probe use
    max_test_images: int = Field(default=20_000, ge=1)  # test images every metric is measured on

    @field_validator("label_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in v):
            raise ValueError(f"every label fraction must be in (0, 1], got {v}")
        return v


def is_uri(text: str) -> bool:
    """Whether `text` is a URI with a scheme (`s3://b`, `mlflow-artifacts:/x`, `file:///x`), not a local path."""
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", text) is not None


class RegisterConfig(_Section):
    tracking_uri: str = "sqlite:///mlflow/mlflow.db"
    # where a new experiment keeps its artifacts: a local path (made absolute), a URI (s3://, gs://, file:///,
    # mlflow-artifacts:/ of a server started with --serve-artifacts), or empty/null for the tracking server's default
    artifact_root: str | None = "mlflow/artifacts"
    experiment: str = "ssl-pipeline"
    model_name: str = Field(default="ssl-encoder", min_length=1)
    promote_metric: str = "linear_probe_acc"
    # the challenger must beat the champion (re-scored in the same run) by this much to be promoted
    min_improvement: float = Field(default=0.005, ge=0.0, le=1.0)

    @field_validator("artifact_root")
    @classmethod
    def _artifact_root(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None  # the tracking server's default
        return v if is_uri(v) else str(Path(v))

    @model_validator(mode="after")
    def _served_artifacts_need_a_server(self) -> RegisterConfig:
        if (self.artifact_root or "").startswith("mlflow-artifacts:") and not self.tracking_uri.startswith(("http://", "https://")):
            raise ValueError(
                f"artifact_root {self.artifact_root!r} is served by an MLflow tracking server, but tracking_uri is "
                f"{self.tracking_uri!r}; set tracking_uri to the server's http(s) address, or artifact_root to a folder"
            )
        return self


class Config(_Section):
    seed: int = 0
    profile: str = "quick"
    paths: PathsConfig = PathsConfig()
    ingest: IngestConfig = IngestConfig()
    validate_: ValidateConfig = Field(default=ValidateConfig(), alias="validate")
    cache_views: CacheViewsConfig = CacheViewsConfig()
    pretrain: PretrainConfig = PretrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(default=RegisterConfig(), alias="register")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def section(self, name: str) -> _Section:
        """A section by its params.yaml name (`validate` and `register` are stored as `validate_`, `register_`)."""
        return getattr(self, {"validate": "validate_", "register": "register_"}.get(name, name))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, e.g. {'pretrain.lr': 0.002}, for logging as run parameters."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE; write e.g. pretrain.epochs=2")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def build_config(raw: dict[str, Any], profile: str | None = None, overrides: Sequence[str] = (), source: str = "params.yaml") -> Config:
    """Validate a raw params dict: pick the profile, merge its overrides and the KEY=VALUE overrides."""
    raw = copy.deepcopy(raw or {})
    profiles = raw.pop("profiles", {}) or {}
    name = profile or raw.get("profile", "quick")
    if name not in profiles and name != "quick":
        raise ConfigError(
            f"{source}: profile {name!r} is not defined; use one of {sorted(profiles) or ['quick']} or add it under profiles:"
        )
    merged = _merge(raw, profiles.get(name) or {})
    merged["profile"] = name
    for text in overrides:
        keys, value = _parse_override(text)
        node = merged
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    try:
        cfg = Config.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        where = where.replace("validate_", "validate").replace("register_", "register")
        if err["type"] == "extra_forbidden":
            msg = f"{source}: unknown key {where!r}; remove it or check its spelling"
        else:
            msg = f"{source}: {where}: {err['msg']} (got {err.get('input')!r}); fix this value"
        if len(exc.errors()) > 1:
            msg += f" [and {len(exc.errors()) - 1} more problem(s)]"
        raise ConfigError(msg) from None
    from ssl_components.metrics import encoder_metric_names

    allowed = encoder_metric_names(cfg.evaluate.label_fractions)
    if cfg.register_.promote_metric not in allowed:
        raise ConfigError(
            f"{source}: register.promote_metric: {cfg.register_.promote_metric!r} is not a metric of the encoder; use one of {allowed}"
        )
    return cfg


def load_config(path: str | Path = "params.yaml", profile: str | None = None, overrides: Sequence[str] = ()) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: settings file not found; run from the project folder or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return build_config(raw, profile=profile, overrides=overrides, source=str(path))
