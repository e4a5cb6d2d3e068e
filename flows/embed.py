"""`sslpipe embed` and `sslpipe similar`: a registered encoder used outside the pipeline.

`embed SOURCE --out FILE.parquet` loads one version from the MLflow registry (`--model`: an alias, default
`champion`, or a version number) and writes one row per image of SOURCE (an image file, a folder walked
recursively, or a CSV/Parquet manifest with a `path` column, as ingest reads them):

- `id`: the image's path within the folder (posix), as ingest names images, so an image keeps its id when the
  folder grows or moves; for a manifest the path as written in it, for a single file its name;
- `path`: the file's absolute path; `sha256`: of the file's bytes (`similar` finds a query in the index by it);
- `vector`: the encoder's features, list<float32>, not normalised.

The Parquet schema metadata `sslpipe` (JSON, `read_embeddings`) records the model name, the version the
reference resolved to, the tracking URI, the image geometry and the source. Each image is decoded by ingest's
own `decode_file` at the image size and channels logged with the model (the ingest settings it was trained
with), scaled to [-1, 1] by `backbones.normalize`, and encoded in batches (the GPU when one is visible). Files
that cannot be read are listed on stderr and in `<out>.errors.csv` (id, path, reason) and do not stop the
others; only when no image at all could be embedded is it an error. Both files are written atomically.

`similar IMAGE --in FILE.parquet -k K` prints the K rows most cosine-similar to IMAGE. An image whose bytes are
in the index uses its stored vector; any other is embedded with the version that made the index (or `--model`).
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flows.registry import CHAMPION, RegisteredEncoder, load_registered_model
from ssl_components.config import Config
from ssl_components.errors import ConfigError, DataError

META_KEY = b"sslpipe"
ERRORS_SUFFIX = ".errors.csv"
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
_SHOWN_ERRORS = 20  # unreadable files listed on stderr; the sidecar lists all


@dataclass(frozen=True)
class ImageRef:
    id: str
    path: Path
    refused: str | None = None  # why the file is not opened (a link leaving the folder), else None


def with_registry(cfg: Config, tracking_uri: str | None = None, model_name: str | None = None) -> Config:
    """`cfg` with register.tracking_uri / register.model_name replaced where given."""
    update = {k: v for k, v in (("tracking_uri", tracking_uri), ("model_name", model_name)) if v}
    return cfg.model_copy(update={"register_": cfg.register_.model_copy(update=update)}) if update else cfg


def list_images(source: Path, follow_links: bool = False) -> tuple[list[ImageRef], list[str]]:
    """The images SOURCE names, sorted by id, and the files skipped for not being images (folders only)."""
    from ssl_components.data import sources

    if not source.exists():
        raise DataError(
            f"{source}: no such file or folder; pass an image file, a folder of images, or a CSV/Parquet manifest with a path column"
        )
    if source.is_dir():
        root = source.absolute()
        files, refused = sources._walk(root, follow_links)  # ingest's walk: hidden files skipped, links leaving it refused
        images = [p for p in files if p.suffix.lower() in sources.IMAGE_EXTENSIONS]
        refs = [ImageRef(p.relative_to(root).as_posix(), p) for p in images]
        refs += [ImageRef(p.relative_to(root).as_posix(), p, reason) for p, reason in refused]
        if not refs:
            raise DataError(
                f"{source}: no image files found (looked for {', '.join(sorted(sources.IMAGE_EXTENSIONS))}); pass a folder of images"
            )
        skipped = [str(p) for p in files if p.suffix.lower() not in sources.IMAGE_EXTENSIONS]
        return sorted(refs, key=lambda r: r.id), skipped
    if source.suffix.lower() in MANIFEST_SUFFIXES:
        rows = sources.manifest_file(source.absolute()).rows
        return [ImageRef(str(i), Path(p)) for i, p in zip(rows["id"], rows["path"])], []
    return [ImageRef(source.name, source.absolute())], []


def _geometry(cfg: Config, meta: dict) -> tuple[int, int]:
    """(image_size, channels) the model was trained with: logged with it; ingest's settings for older versions."""
    return int(meta.get("image_size", cfg.ingest.image_size)), int(meta.get("in_channels", cfg.ingest.channels))


def _decode_batch(refs: list[ImageRef], size: int, channels: int) -> list[tuple[np.ndarray | None, str | None, str | None]]:
    """(C,H,W uint8 array or None, sha256, reason it failed) per image, decoded exactly as ingest decodes."""
    from ssl_components.decode import decode_file

    out: list[tuple[np.ndarray | None, str | None, str | None]] = []
    for ref in refs:
        if ref.refused:
            out.append((None, None, ref.refused))
            continue
        arr, info = decode_file(str(ref.path), size, channels)
        out.append((arr, info["sha256"], info["decode_error"]))
    return out


@dataclass
class EmbedResult:
    out: Path
    model: RegisteredEncoder
    embedded: int
    failed: list[tuple[str, str, str]]  # id, path, reason
    errors_csv: Path | None
    skipped_non_images: int
    seconds: float  # decoding and encoding, model loading excluded
    threads: int
    device: str

    @property
    def images_per_second(self) -> float:
        return (self.embedded + len(self.failed)) / max(self.seconds, 1e-9)

    def summary(self) -> str:
        total = self.embedded + len(self.failed)
        line = f"embedded {self.embedded} of {total} images with {self.model.model_name} v{self.model.version}"
        line += f" ({self.model.ref})" if self.model.ref != self.model.version else ""
        line += f" -> {self.out}"
        if self.failed:
            line += f"; {len(self.failed)} unreadable, listed in {self.errors_csv}"
        if self.skipped_non_images:
            line += f"; ignored {self.skipped_non_images} file(s) without an image extension"
        return line + f"; {self.images_per_second:,.0f} images/s on {self.device}, {self.threads} threads"


def _vector_column(vectors: np.ndarray):
    """(N, D) float32 -> an Arrow list<float32> column (large_list past 2**31 values)."""
    import pyarrow as pa

    n, d = vectors.shape
    values = pa.array(vectors.reshape(-1), type=pa.float32())
    if n * d < 2**31:
        return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * d), values)
    return pa.LargeListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int64) * d), values)


def _write_errors(path: Path, failed: list[tuple[str, str, str]]) -> Path | None:
    """`<out>.errors.csv` listing every unreadable file; a stale one from an earlier run is removed."""
    from ssl_components.io import write_text

    if not failed:
        path.unlink(missing_ok=True)
        return None
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "path", "reason"])
    writer.writerows(failed)
    return write_text(path, buf.getvalue())


def default_threads() -> int:
    """Torch CPU threads for `embed`: one core fewer than torch's default (one per core), since one thread decodes
    the next batch meanwhile. On this project's 2-core machine (shared, busy) 2 torch threads beside the decoder
    embedded 666-1,456 images/s, 1 thread 2,569-3,080 (scripts/bench_embed.py, 10,000 and 70,000 images)."""
    import torch

    return max(1, torch.get_num_threads() - 1)


def embed(
    cfg: Config, source: str | Path, out: str | Path, model: str = CHAMPION, batch_size: int = 256, threads: int | None = None
) -> EmbedResult:
    """Embed every image SOURCE names with the registered version `model`; write `out` (Parquet).

    `threads`: torch CPU threads (default: `default_threads()`); the process keeps the setting."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from tqdm.auto import tqdm

    from ssl_components.device import resolve_device
    from ssl_components.embedding import encode_uint8
    from ssl_components.io import atomic_path

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {batch_size})")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1 (got {threads})")
    source, out = Path(source), Path(out)
    refs, skipped = list_images(source, cfg.ingest.follow_links)  # a missing SOURCE fails before the model loads
    device = resolve_device("auto")
    encoder = load_registered_model(cfg, model, device=str(device))
    size, channels = _geometry(cfg, encoder.meta)
    torch.set_num_threads(threads or default_threads())

    ids: list[str] = []
    paths: list[str] = []
    shas: list[str] = []
    vectors: list[np.ndarray] = []
    failed: list[tuple[str, str, str]] = []
    batches = [refs[i : i + batch_size] for i in range(0, len(refs), batch_size)]
    start = time.perf_counter()
    # one thread decodes the next batch while this one encodes (torch releases the GIL while it computes)
    with ThreadPoolExecutor(max_workers=1) as pool, tqdm(total=len(refs), desc="embed", unit="img", mininterval=1, file=sys.stderr) as bar:
        pending = pool.submit(_decode_batch, batches[0], size, channels) if batches else None
        for b, batch in enumerate(batches):
            assert pending is not None
            decoded = pending.result()
            pending = pool.submit(_decode_batch, batches[b + 1], size, channels) if b + 1 < len(batches) else None
            good = [(ref, arr, sha) for ref, (arr, sha, _) in zip(batch, decoded) if arr is not None]
            failed += [(ref.id, str(ref.path), reason or "unknown") for ref, (arr, _, reason) in zip(batch, decoded) if arr is None]
            if good:
                vectors.append(encode_uint8(encoder.module, np.stack([arr for _, arr, _ in good]), device))
                ids += [ref.id for ref, _, _ in good]
                paths += [str(ref.path) for ref, _, _ in good]
                shas += [str(sha) for _, _, sha in good]
            bar.update(len(batch))
    seconds = time.perf_counter() - start

    for i, (_, path, reason) in enumerate(failed):
        if i == _SHOWN_ERRORS:
            print(f"... and {len(failed) - _SHOWN_ERRORS} more unreadable files", file=sys.stderr)
            break
        print(f"skipped {path}: {reason}", file=sys.stderr)
    errors_csv = _write_errors(out.with_name(out.name + ERRORS_SUFFIX), failed)
    if not ids:
        first = f"{failed[0][1]}: {failed[0][2]}" if failed else "nothing to embed"
        raise DataError(f"none of the {len(refs)} images of {source} could be embedded (first: {first}); see {errors_csv}")

    matrix = np.concatenate(vectors).astype(np.float32, copy=False)
    meta: dict[str, Any] = {
        "model_name": encoder.model_name,
        "model_version": encoder.version,
        "model_ref": encoder.ref,
        "tracking_uri": encoder.tracking_uri,
        "image_size": size,
        "channels": channels,
        "dim": int(matrix.shape[1]),
        "input": "decode_file (ingest), then backbones.normalize: [-1, 1]",
        "id": "path within the source folder (manifest: the path as written; single file: its name)",
        "source": str(source.absolute()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "path": pa.array(paths, pa.string()),
            "sha256": pa.array(shas, pa.string()),
            "vector": _vector_column(matrix),
        }
    ).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    with atomic_path(out, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return EmbedResult(out, encoder, len(ids), failed, errors_csv, len(skipped), seconds, torch.get_num_threads(), str(device))


@dataclass
class Embeddings:
    ids: list[str]
    paths: list[str]
    sha256: list[str]
    vectors: np.ndarray  # (N, D) float32
    meta: dict = field(default_factory=dict)


def read_embeddings(path: str | Path) -> Embeddings:
    """A file written by `embed`: its rows, the vectors as one (N, D) float32 array, and its metadata."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such embeddings file; make one with `sslpipe embed SOURCE --out {path}`")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}); make it with `sslpipe embed`") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    missing = {"id", "path", "sha256", "vector"} - set(table.column_names)
    if raw is None or missing:
        raise DataError(
            f"{path}: not written by `sslpipe embed` (no {META_KEY.decode()} metadata, or no columns {sorted(missing)}); "
            "make it with `sslpipe embed`"
        )
    meta = json.loads(raw)
    column = table.column("vector").combine_chunks()
    vectors = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(table), int(meta["dim"]))
    return Embeddings(table.column("id").to_pylist(), table.column("path").to_pylist(), table.column("sha256").to_pylist(), vectors, meta)


@dataclass
class Neighbours:
    query: Path
    how: str  # where the query's vector came from
    rows: list[tuple[int, float, str, str]]  # rank, cosine similarity, id, path


def similar(
    cfg: Config, image: str | Path, index: str | Path, k: int = 10, model: str | None = None, tracking_uri: str | None = None
) -> Neighbours:
    """The k rows of `index` most cosine-similar to `image`, best first.

    An image whose bytes are in the index (and no `model` given) uses its stored vector; otherwise it is embedded
    with the version recorded in the index (or `model`), from the recorded tracking URI (or `tracking_uri`)."""
    from ssl_components.embedding import cosine_top_k
    from ssl_components.io import sha256_file

    if k < 1:
        raise ConfigError(f"-k must be at least 1 (got {k})")
    emb = read_embeddings(index)
    image = Path(image)
    if not image.is_file():
        raise DataError(f"{image}: no such image file; pass the path of an image")
    meta = emb.meta
    sha = sha256_file(image)
    if model is None and sha in emb.sha256:
        row = emb.sha256.index(sha)
        query, how = emb.vectors[row], f"stored vector of {emb.ids[row]} (same file content)"
    else:  # torch, PIL and the model only on this path
        from ssl_components.decode import decode_file
        from ssl_components.device import resolve_device
        from ssl_components.embedding import encode_uint8

        registry = with_registry(cfg, tracking_uri or meta["tracking_uri"], meta["model_name"])
        device = resolve_device("auto")
        encoder = load_registered_model(registry, model or str(meta["model_version"]), device=str(device))
        arr, info = decode_file(str(image), int(meta["image_size"]), int(meta["channels"]))
        if arr is None:
            raise DataError(f"{image}: {info['decode_error']}; pass a readable image")
        query = encode_uint8(encoder.module, arr[None], device)[0]
        if query.shape[0] != emb.vectors.shape[1]:
            raise ConfigError(
                f"{encoder.model_name} v{encoder.version} gives {query.shape[0]}-d vectors but {index} holds {emb.vectors.shape[1]}-d ones "
                f"(made with v{meta['model_version']}); drop --model or embed the images again with it"
            )
        how = f"embedded with {encoder.model_name} v{encoder.version}"
        if encoder.version != str(meta["model_version"]):
            how += f" (the index was made with v{meta['model_version']}: similarities compare two models)"
    best, sims = cosine_top_k(query, emb.vectors, k)
    rows = [(rank, float(s), emb.ids[i], emb.paths[i]) for rank, (i, s) in enumerate(zip(best, sims), start=1)]
    return Neighbours(image, how, rows)


def print_neighbours(result: Neighbours) -> None:
    """A rich table on a terminal; tab-separated lines (rank, similarity, id, path) with a header otherwise."""
    print(f"query {result.query}: {result.how}", file=sys.stderr)
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"nearest to {result.query}")
        for name in ("rank", "similarity", "id", "path"):
            table.add_column(name, overflow="fold")
        for rank, sim, id_, path in result.rows:
            table.add_row(str(rank), f"{sim:.6f}", id_, path)
        Console().print(table)
        return
    print("rank\tsimilarity\tid\tpath")
    for rank, sim, id_, path in result.rows:
        print(f"{rank}\t{sim:.6f}\t{id_}\t{path}")
