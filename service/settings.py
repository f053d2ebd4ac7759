"""Service settings: environment variables with prefix ``AEC_``, each also a CLI flag.

Built once by the CLI and handed to constructors; never a module-level singleton.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """A setting names something that cannot be used (a missing or unreadable file, a key
    that does not match its certificate). The message names the setting and the file; the
    CLI prints it and exits, without a traceback."""


class Settings(BaseSettings):
    """Every knob of the server. ``AEC_<FIELD>`` in the environment, ``--<field>`` on the CLI."""

    model_config = SettingsConfigDict(env_prefix="AEC_", extra="ignore", frozen=True)

    model_repo: Path = Field(
        default=Path("models"),
        description="Model repository in TensorFlow Serving's layout: DIR/<name>/<version>/.",
    )
    host: str = Field(
        default="0.0.0.0",
        description="Address HTTP and gRPC (and operations_port) listen on: 0.0.0.0 every "
        "IPv4 interface, 127.0.0.1 this machine only, :: every IPv6 one.",
    )
    http_port: int = Field(default=8501, ge=0, le=65535,
                           description="HTTP port (REST, metrics, health); 0 picks a free one.")
    grpc_port: int = Field(default=8500, ge=0, le=65535,
                           description="gRPC port (native and TF Serving APIs); 0: a free one.")
    max_batch_size: int = Field(default=32, ge=1, le=4096,
                                description="Most images the batcher merges into one model call.")
    # 0 (measured, bench/results/serve.md): a lone request runs at once instead of waiting
    # for a batch that never comes, and under load the requests that arrive while the model
    # computes form the next batch anyway. With the C load generators on 2 cores, 5 ms cost
    # 5.7 ms at c = 1 and gained nothing at c = 32 (1,140 against 1,282 req/s, gRPC).
    max_batch_delay_ms: float = Field(
        default=0.0, ge=0.0, le=10_000.0,
        description="Longest wait, from the oldest queued request, before a batch is run "
        "while the model is idle (0: run at once; requests arriving meanwhile batch).",
    )
    max_queue: int = Field(
        default=1024, ge=1,
        description="Images that may wait per model version; beyond it callers get "
        "503 + Retry-After / RESOURCE_EXHAUSTED at once.",
    )
    poll_seconds: float = Field(
        default=10.0, ge=0.0,
        description="How often the repository is scanned for new or removed versions; 0 = never.",
    )
    drain_seconds: float = Field(
        default=20.0, ge=0.0,
        description="On SIGTERM, how long in-flight and queued requests may take to finish.",
    )
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024,
                                description="Largest HTTP request body accepted (413 beyond).")
    max_image_pixels: int = Field(
        default=16_000_000, ge=1,
        description="Largest decoded image (width x height) accepted; guards against "
        "decompression bombs (413 beyond).",
    )
    # 32 M: about 1 GB of decode buffers at worst, a quarter of the Deployment's memory
    # limit. 16 images of 4000x4000 (256 M pixels, a 334 KB JSON body) took 3.9 GB.
    max_request_pixels: int = Field(
        default=32_000_000, ge=1,
        description="Most decoded pixels (width x height, summed over the images) in one "
        "request, checked from the headers before anything is decoded (413 beyond).",
    )
    max_images_per_request: int = Field(default=1024, ge=1,
                                        description="Most images in one request (413 beyond).")
    grpc_max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024,
                                        description="gRPC send and receive message size limit.")
    device: str = Field(
        default="auto",
        description="auto (first GPU if TensorFlow sees one, else CPU), cpu, or gpu:N.",
    )
    gpu_memory_growth: bool = Field(
        default=True, description="Let TensorFlow grow GPU memory instead of reserving it all."
    )
    # 1 and 1 (measured, bench/results/serve.md): this model's ops are small, and handing
    # them between TensorFlow's pool threads cost more than it saved. The batch-1 call took
    # 1.07 ms with one thread against 1.71 ms with TensorFlow's default of one per core, and
    # the serving figures moved the same way; the spare core serves requests instead. For
    # batches the trade turns (2 threads: 32-image requests +20 %, docs/serving.md).
    tf_intra_op_threads: int = Field(
        default=1, ge=0, le=1024,
        description="Threads TensorFlow may use inside one op (0: TensorFlow's default, "
        "one per core). Raise it for large models on many cores, or to 2 for callers who "
        "send batches (32-image requests +20 %, a lone image +0.5 ms: see the benchmark).",
    )
    tf_inter_op_threads: int = Field(
        default=1, ge=0, le=1024,
        description="Ops TensorFlow may run at once (0: TensorFlow's default).",
    )
    # Transport security (docs/security.md). Everything is off unless a file is named.
    tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate chain; with tls_key_file, HTTP and gRPC accept TLS only. "
        "Re-read when it changes (secrets_poll_seconds). Unset: plaintext.",
    )
    tls_key_file: Path | None = Field(
        default=None, description="PEM private key (unencrypted) of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        default=None,
        description="PEM CA certificates; set, every HTTP and gRPC client must present a "
        "certificate one of them signed (mutual TLS). Needs tls_cert_file.",
    )
    auth_tokens_file: Path | None = Field(
        default=None,
        description="Accepted tokens, one per line (# starts a comment); set, every request "
        "needs 'Authorization: Bearer <token>' or 'x-api-key: <token>' (HTTP header or gRPC "
        "metadata), except health checks and /metrics. Re-read when it changes.",
    )
    secrets_poll_seconds: float = Field(
        default=10.0, ge=0.0,
        description="How often the TLS and token files are checked for changes; a renewed "
        "certificate or token file is used without a restart. 0 = never.",
    )
    operations_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Extra plain-HTTP port that serves only /healthz, /readyz and /metrics, "
        "for kubelet probes and Prometheus when the main ports need client certificates; "
        "0 picks a free one. Unset: none.",
    )
    trusted_keys: str = Field(
        default="",
        description="Public keys (PEM, elliptic curve) whose signature a version must carry "
        "in model.sig before any of its files is read: a directory (each file in it not "
        "starting with '.') or a comma-separated list of files; one key verifying is enough. "
        "Empty: versions are not signature-checked (docs/security.md).",
    )
    require_signature: bool | None = Field(
        default=None,
        description="Refuse versions without model.sig (default: true when trusted keys are "
        "set). False with trusted keys: unsigned versions load with a warning, signed ones "
        "must verify; only for moving a repository over to signing.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of the JSON logs on stderr."
    )
    log_json: bool = Field(default=True, description="Structured JSON logs (false: plain text).")

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        text = value.strip().lower()
        if text in {"auto", "cpu", "gpu"} or (text.startswith("gpu:") and text[4:].isdigit()):
            return text
        raise ValueError(f"device must be auto, cpu, gpu or gpu:N, got {value!r}")

    @model_validator(mode="after")
    def _tls_files_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given, missing = (("tls_cert_file", "tls_key_file") if self.tls_key_file is None
                              else ("tls_key_file", "tls_cert_file"))
            raise ValueError(f"{given} is set but {missing} is not: TLS needs both the "
                             "certificate and its private key")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file is set but tls_cert_file and tls_key_file "
                             "are not: client certificates are only asked for over TLS")
        return self

    @field_validator("trusted_keys")
    @classmethod
    def _keys_usable(cls, value: str) -> str:
        # At start-up, naming the file: not at the first version's load.
        if value.strip():
            from service.signature import load_keys  # local: model_signing is slow to import

            load_keys(value)
        return value

    @model_validator(mode="after")
    def _signatures_checkable(self) -> Settings:
        if self.require_signature and not self.trusted_keys.strip():
            raise ValueError("require_signature is true but no trusted_keys are set: "
                             "nothing could verify a signature")
        return self

    @property
    def signatures_required(self) -> bool:
        """Whether a version without a signature is refused."""
        if self.require_signature is not None:
            return self.require_signature
        return bool(self.trusted_keys.strip())

    def batch_sizes(self) -> tuple[int, ...]:
        """Padded batch sizes: powers of two up to, and including, ``max_batch_size``.

        Padding every batch to one of a few sizes means the compiled function sees a small
        fixed set of shapes, all warmed up before the version is reported ready.
        """
        sizes = []
        size = 1
        while size < self.max_batch_size:
            sizes.append(size)
            size *= 2
        sizes.append(self.max_batch_size)
        return tuple(sizes)
