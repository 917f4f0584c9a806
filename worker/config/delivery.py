"""Settings of where results go: the destinations, the delivery rules, retries and timeouts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipelines.output_kinds import DEFAULT_OUTPUTS, OutputOptions, available_kinds, check_kinds
from worker.config.base import Section, check_ae_title, check_ca_bundle, check_http_url
from worker.config.dicomweb import DicomwebAuthSettings


def _kinds(value: tuple[str, ...]) -> tuple[str, ...]:
    """Known output kinds, in build order, each once (``pipelines.outputs.OUTPUT_KINDS``)."""
    if not value:
        raise ValueError("outputs must name at least one of " + ", ".join(available_kinds()))
    return check_kinds(value)


def _outputs(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """As ``_kinds``; None (not set: the default applies) stays None."""
    return None if value is None else _kinds(value)


class DestinationTlsSettings(Section):
    """DICOM TLS to a destination; no ca_certificates trusts the system CA store."""

    ca_certificates: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _pair(self) -> DestinationTlsSettings:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self


class Destination(Section):
    """A node that receives results: a DICOM C-STORE SCP (``type: dicom``, the default)
    or a DICOMweb archive (``type: dicomweb``, STOW-RS to ``url``)."""

    type: Literal["dicom", "dicomweb"] = "dicom"
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    url: str | None = None
    auth: DicomwebAuthSettings = DicomwebAuthSettings()
    verify_tls: bool = True
    ca_bundle: Path | None = None
    default: bool = False
    tls: DestinationTlsSettings | None = None
    #: The result objects it receives (seg, sr, rtstruct, gsps, kos, sc); None: delivery.outputs.
    outputs: tuple[str, ...] | None = None

    _outputs = field_validator("outputs")(_outputs)

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str | None) -> str | None:
        return None if value is None else check_ae_title(value)

    _url = field_validator("url")(check_http_url)
    _ca = field_validator("ca_bundle")(check_ca_bundle)

    @model_validator(mode="after")
    def _fields_for_type(self) -> Destination:
        if self.type == "dicom":
            missing = [n for n in ("ae_title", "host", "port") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"a dicom destination needs {', '.join(missing)}")
        elif self.url is None:
            raise ValueError("a dicomweb destination needs url")
        return self


class DeliveryRule(Section):
    """Send a job's results to ``to`` when the job matches every condition given.

    ``source``: the DICOMweb source name or calling AE title the study came from;
    ``modality``: a modality of the study's series; ``pipelines``: any of these ran.
    ``outputs``, when set, are the result objects the rule's destinations receive for such
    a job, instead of their own ``outputs``.
    """

    to: tuple[str, ...] = Field(min_length=1)
    source: str | None = None
    modality: str | None = None
    pipelines: tuple[str, ...] = ()
    outputs: tuple[str, ...] | None = None

    _outputs = field_validator("outputs")(_outputs)


class OutputsOptionsSettings(Section):
    """Settings of single output kinds (``pipelines.outputs.OutputOptions``)."""

    #: sc: a capture of every slice of the series (True), or only of those with a finding.
    sc_every_slice: bool = False

    def output_options(self) -> OutputOptions:
        """What the job's builders take (``annotate_study(options=...)``)."""
        return OutputOptions(sc_every_slice=self.sc_every_slice)


class DeliverySettings(Section):
    """How results reach the destinations.

    ``to`` empty means: the destination whose AE title equals the calling AE of the study,
    else the destination marked ``default``. A list of names sends to each of them.
    ``rules`` (first checked; every matching rule adds its destinations) route by source,
    modality or pipeline, so one job can go to a DICOM PACS and a DICOMweb archive.
    """

    to: tuple[str, ...] = ()
    #: What a destination without its own ``outputs`` receives.
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    outputs_options: OutputsOptionsSettings = OutputsOptionsSettings()
    max_retries: int = Field(default=5, ge=0, le=100)
    retry_delay_seconds: float = Field(default=30.0, gt=0)
    timeout_seconds: float = Field(default=60.0, gt=0)
    rules: tuple[DeliveryRule, ...] = ()

    _outputs = field_validator("outputs")(_kinds)
