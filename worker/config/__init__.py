"""Settings, filed by topic: one ``Settings`` object built once from YAML and environment.

The rest of ``worker`` imports from here; the modules beside this file import each other.
"""

from worker.config.base import GIB, MIB, Section
from worker.config.delivery import (
    DeliveryRule,
    DeliverySettings,
    Destination,
    DestinationTlsSettings,
)
from worker.config.dicomweb import DicomwebAuthSettings, DicomwebSource, PollSettings
from worker.config.edge import (
    AllowedCallerSettings,
    CompletionSettings,
    ScpSettings,
    ScpTlsSettings,
)
from worker.config.jobs import DEFAULT_QUEUE, RecoverySettings, WorkerSettings
from worker.config.monitor import MonitorSettings
from worker.config.nnunet import (
    ModelPipelineSettings,
    NnunetPipelineSettings,
    TotalSegmentatorPipelineSettings,
)
from worker.config.options import with_worker_options, worker_hostname
from worker.config.pipelines import BundlePipelineSettings, LabelCodeSettings, RoutingRuleSettings
from worker.config.retention import RetentionSettings
from worker.config.settings import ENV_PREFIX, Settings, SettingsError, load_settings

__all__ = [
    "DEFAULT_QUEUE",
    "ENV_PREFIX",
    "GIB",
    "MIB",
    "AllowedCallerSettings",
    "BundlePipelineSettings",
    "CompletionSettings",
    "DeliveryRule",
    "DeliverySettings",
    "Destination",
    "DestinationTlsSettings",
    "DicomwebAuthSettings",
    "DicomwebSource",
    "LabelCodeSettings",
    "ModelPipelineSettings",
    "MonitorSettings",
    "NnunetPipelineSettings",
    "PollSettings",
    "RecoverySettings",
    "RetentionSettings",
    "RoutingRuleSettings",
    "ScpSettings",
    "ScpTlsSettings",
    "Section",
    "Settings",
    "SettingsError",
    "TotalSegmentatorPipelineSettings",
    "WorkerSettings",
    "load_settings",
    "with_worker_options",
    "worker_hostname",
]
