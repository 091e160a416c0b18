"""Typed settings for the node, validated once at start-up.

config.yaml at the repository root is the embedded default; it is installed with the package as
node/default_config.yaml (a symlink in the checkout, a copy in a wheel), so an installed node
runs as well as a checkout. Every key is a field of a
pydantic model with ``extra="forbid"``, so a misspelt or unknown key stops the node with a
message naming it. Defaults live only here and in config.yaml (which states them all).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "default_config.yaml"

_AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default character repertoire, no '\'


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid AE title (1-16 printable ASCII characters, no backslash)"
        )
    return stripped


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReceiverTlsSettings(_Strict):
    """DICOM TLS on the receiver (``network.tls``); PEM files."""

    certificate: Path
    key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _ca_for_clients(self) -> "ReceiverTlsSettings":
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates (the CA that "
                             "signs the clients' certificates)")
        return self


class DestinationTlsSettings(_Strict):
    """DICOM TLS to one destination (``destinations[].tls``); PEM files."""

    ca_certificates: Path
    certificate: Path | None = None
    key: Path | None = None
    server_hostname: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> "DestinationTlsSettings":
        if (self.certificate is None) != (self.key is None):
            raise ValueError("certificate and key go together (the node's client certificate)")
        return self


class NetworkSettings(_Strict):
    ae_title: str = "LUNGNODE"
    bind_address: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    allowed_calling_ae_titles: tuple[str, ...] = ()
    max_associations: int = Field(10, ge=1, le=1000)
    acse_timeout_s: float = Field(30, gt=0)
    dimse_timeout_s: float = Field(60, gt=0)
    network_timeout_s: float = Field(120, gt=0)
    max_pdu_bytes: int = Field(131072, ge=0)
    pdu_timeout_s: float = Field(10, gt=0)
    tls: ReceiverTlsSettings | None = None

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))

    @field_validator("allowed_calling_ae_titles")
    @classmethod
    def _check_allowed(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_ae_title(v) for v in values)


class StorageSettings(_Strict):
    root: Path = Path("./var")
    min_free_mb: int = Field(512, ge=0)
    max_instance_mb: int = Field(2048, ge=1)
    retention_days: float = Field(30, gt=0)


class SeriesSettings(_Strict):
    quiet_period_s: float = Field(30, gt=0)


class SelectionSettings(_Strict):
    modalities: tuple[str, ...] = ("CT",)
    required_image_type: tuple[str, ...] = ()
    excluded_image_type: tuple[str, ...] = (
        "LOCALIZER", "SCOUT", "TOPOGRAM", "MIP", "MINIP", "MNIP", "MAXIP", "PROJECTION IMAGE",
        "CURVED", "CPR",
    )
    accept_derived_axial: bool = False
    max_tilt_from_axial_deg: float = Field(30.0, ge=0, le=90)
    max_slice_thickness_mm: float = Field(5.0, gt=0)
    min_slices: int = Field(30, ge=1)


class AnalysisSettings(_Strict):
    engine: Literal["threshold", "unet"] = "unet"
    lung_engine: Literal["net", "classical"] = "net"
    lesion_margin: bool = False
    hilar_filter: bool = True
    hilar_vessel_trees: bool = False
    harmonize_kernel: bool = False
    lung_completion: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ggo_min_hu: float = -750.0
    consolidation_min_hu: float = -350.0
    lobe_involvement_floor_pct: float = Field(0.1, ge=0, le=5)

    @model_validator(mode="after")
    def _ordered(self) -> "AnalysisSettings":
        if not self.ggo_min_hu < self.consolidation_min_hu:
            raise ValueError(
                "analysis.ggo_min_hu must be lower than analysis.consolidation_min_hu "
                f"(got {self.ggo_min_hu} and {self.consolidation_min_hu})"
            )
        return self


#: The kinds of output a destination can get (``destinations[].outputs``): ``seg`` the three
#: SEG series (lesions, lungs, lobes), ``sr`` the TID 1500 SR, ``pdf`` the Encapsulated PDF
#: report, ``summary`` its one-page RGB secondary capture, ``overlay`` the RGB
#: secondary-capture series of the axial slices with the lesions coloured.
OutputKind = Literal["seg", "sr", "pdf", "summary", "overlay"]
OUTPUT_KINDS: tuple[str, ...] = ("seg", "sr", "pdf", "summary", "overlay")


class CourseSettings(_Strict):
    """The patient's course (issue 9): compare each scan with the patient's prior scan."""

    enabled: bool = True
    stable_relative_pct: float = Field(10.0, ge=0, le=100)
    stable_absolute_ml: float = Field(5.0, ge=0)
    reissue_later_reports: bool = True


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False


class StatusPageSettings(_Strict):
    """The read-only status page (issue 9): off by default, on 127.0.0.1 unless configured;
    bound elsewhere it needs a token (HTTP Bearer, or the password of HTTP basic auth)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8484, ge=0, le=65535)
    token: str | None = Field(None, min_length=16)

    @model_validator(mode="after")
    def _auth_when_exposed(self) -> "StatusPageSettings":
        if self.enabled and not _is_loopback(self.host) and not self.token:
            raise ValueError(
                f"status_page.token is required when status_page.host is {self.host!r} "
                "(not a loopback address): set a token of at least 16 characters")
        return self


class OutputSettings(_Strict):
    seg: bool = True
    sr: bool = True
    pdf: bool = True
    summary: bool = True
    overlay: bool = True
    seg_series_number: int = Field(9901, ge=1, le=2**31 - 1)
    sr_series_number: int = Field(9902, ge=1, le=2**31 - 1)
    seg_lungs_series_number: int = Field(9903, ge=1, le=2**31 - 1)
    seg_lobes_series_number: int = Field(9904, ge=1, le=2**31 - 1)
    pdf_series_number: int = Field(9905, ge=1, le=2**31 - 1)
    summary_series_number: int = Field(9906, ge=1, le=2**31 - 1)
    overlay_series_number: int = Field(9907, ge=1, le=2**31 - 1)

    @model_validator(mode="after")
    def _distinct_series_numbers(self) -> "OutputSettings":
        seen: dict[int, str] = {}
        for key, value in self.model_dump().items():
            if key.endswith("_series_number"):
                if value in seen:
                    raise ValueError(f"outputs.{key} is {value}, the same as outputs.{seen[value]}")
                seen[value] = key
        return self

    def enabled(self) -> tuple[str, ...]:
        """The output kinds the node writes, in OUTPUT_KINDS order."""
        return tuple(k for k in OUTPUT_KINDS if getattr(self, k))


class Destination(_Strict):
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: DestinationTlsSettings | None = None
    #: What this destination gets; the default is every kind the node writes.
    outputs: tuple[OutputKind, ...] = OUTPUT_KINDS

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))

    @field_validator("outputs")
    @classmethod
    def _check_outputs(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if not values:
            raise ValueError("must list at least one of " + ", ".join(OUTPUT_KINDS))
        if len(set(values)) != len(values):
            raise ValueError("lists an output twice")
        return values

    @classmethod
    def parse(cls, text: str) -> "Destination":
        """Parse ``AE@host:port`` (the CLI's form)."""
        match = re.match(r"^(?P<ae>[^@]+)@(?P<host>[^:@]+):(?P<port>\d+)$", text.strip())
        if not match:
            raise ValueError(f"{text!r} is not of the form AE@host:port")
        return cls(ae_title=match["ae"], host=match["host"], port=int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class DeliverySettings(_Strict):
    max_attempts: int = Field(30, ge=1)
    retry_initial_delay_s: float = Field(10, gt=0)
    retry_max_delay_s: float = Field(600, gt=0)
    retry_backoff_factor: float = Field(2.0, ge=1)

    def delay_before_attempt_s(self, attempt: int) -> float:
        """Delay before attempt number ``attempt`` (2 = the first retry)."""
        if attempt <= 1:
            return 0.0
        delay = self.retry_initial_delay_s * self.retry_backoff_factor ** (attempt - 2)
        return min(delay, self.retry_max_delay_s)


class LoggingSettings(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(_Strict):
    network: NetworkSettings = NetworkSettings()
    storage: StorageSettings = StorageSettings()
    series: SeriesSettings = SeriesSettings()
    selection: SelectionSettings = SelectionSettings()
    analysis: AnalysisSettings = AnalysisSettings()
    outputs: OutputSettings = OutputSettings()
    course: CourseSettings = CourseSettings()
    status_page: StatusPageSettings = StatusPageSettings()
    destinations: tuple[Destination, ...] = ()
    delivery: DeliverySettings = DeliverySettings()
    logging: LoggingSettings = LoggingSettings()

    @model_validator(mode="after")
    def _outputs_written(self) -> "Settings":
        enabled = set(self.outputs.enabled())
        for i, dest in enumerate(self.destinations):
            off = [k for k in dest.outputs if k not in enabled]
            if off and "outputs" in dest.model_fields_set:
                raise ValueError(
                    f"destinations.{i}.outputs lists {', '.join(off)}, which the node does not "
                    f"write (outputs.{off[0]} is false)")
        return self

    @property
    def storage_root(self) -> Path:
        return Path(self.storage.root)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the bad key."""


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key written twice in one mapping (plain YAML keeps the
    last one silently, so an edited config would run on a value nobody meant)."""


def _mapping_without_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark,
                f"key {key!r} appears twice (first on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _mapping_without_duplicates)


def load_settings(path: Path | None = None, overrides: dict | None = None) -> Settings:
    """Read, merge overrides into and validate a config file.

    ``overrides`` is a nested dict of keys to replace (the CLI flags). A relative
    ``storage.root`` is resolved against the config file's directory, or against the current
    directory for the embedded default (an installed package's folder is no place for data).
    """
    embedded = path is None
    config_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        raw = yaml.load(config_path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {config_path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {config_path} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {config_path} must hold a mapping at the top level")
    merged = _deep_merge(raw, overrides or {})
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(str(config_path), exc)) from exc
    root = Path(settings.storage.root)
    if not root.is_absolute():
        base = Path.cwd() if embedded else config_path.resolve().parent
        root = (base / root).resolve()
        settings = settings.model_copy(
            update={"storage": settings.storage.model_copy(update={"root": root})}
        )
    return _resolve_tls_files(settings, Path.cwd() if embedded else config_path.resolve().parent,
                              str(config_path))


_TLS_FILE_KEYS = ("certificate", "key", "ca_certificates")


def _resolve_tls_files(settings: Settings, base: Path, source: str) -> Settings:
    """Relative TLS file paths resolve against ``base`` (the config file's folder); every
    one must be a readable file (the error names the key)."""

    def resolved(tls, key_prefix: str):
        update = {}
        for name in _TLS_FILE_KEYS:
            value = getattr(tls, name)
            if value is None:
                continue
            path = Path(value) if Path(value).is_absolute() else (base / value).resolve()
            if not path.is_file():
                raise ConfigError(f"invalid configuration in {source}:\n"
                                  f"  {key_prefix}.{name}: file not found: {path}")
            update[name] = path
        return tls.model_copy(update=update)

    network = settings.network
    if network.tls is not None:
        network = network.model_copy(update={"tls": resolved(network.tls, "network.tls")})
    destinations = tuple(
        d.model_copy(update={"tls": resolved(d.tls, f"destinations.{i}.tls")})
        if d.tls is not None else d
        for i, d in enumerate(settings.destinations)
    )
    return settings.model_copy(update={"network": network, "destinations": destinations})


def _deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def settings_as_yaml(settings: Settings) -> str:
    """The settings in effect, as YAML (``lungnode check-config``)."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
