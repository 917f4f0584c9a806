"""Storage SCU: sends result objects (or any files) to a DICOM node by C-STORE.

Per-instance outcomes come back as :class:`InstanceResult`; anything that stops the whole
send (unreachable, rejected, aborted) raises :class:`DeliveryError` so the caller retries.
C-STORE of the same SOP Instance UID overwrites at the receiver, so retrying is safe.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from scu_scp.models import DeliveryError, DeliveryResult, DicomNode, InstanceResult
from scu_scp.security import TlsConfigError, client_ssl_context

__all__ = ["MAX_CONTEXTS", "send_datasets", "send_files"]

LOGGER = logging.getLogger(__name__)

#: DICOM allows at most 128 presentation contexts per association (odd IDs 1-255).
MAX_CONTEXTS = 128
_MAX_PDU = 1_048_576

# Key of a presentation context: SOP class plus transfer syntax; uncompressed little endian
# syntaxes share one context since pynetdicom converts between them.
_CxKey = tuple[str, str]
_UNCOMPRESSED_LE = "uncompressed-le"


@dataclass(frozen=True)
class _Item:
    """One instance to send: what negotiation needs, and how to get the full dataset."""

    index: int
    sop_class: str
    sop_instance: str
    transfer_syntax: UID
    load: Callable[[], Dataset]

    @property
    def key(self) -> _CxKey:
        ts = self.transfer_syntax
        if not ts.is_compressed and ts.is_little_endian and not ts.is_deflated:
            return (self.sop_class, _UNCOMPRESSED_LE)
        return (self.sop_class, str(ts))


def _const(ds: Dataset) -> Callable[[], Dataset]:
    return lambda: ds


def _status_text(status: int, comment: str | None = None) -> str:
    category, meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, ("Unknown", "unknown status"))
    text = f"status 0x{status:04X} ({category}: {meaning})"
    return f"{text}: {comment}" if comment else text


def _describe(node: DicomNode) -> str:
    return f"{node.ae_title}@{node.host}:{node.port}{' (TLS)' if node.tls else ''}"


def _transfer_syntax(ds: Dataset) -> UID | None:
    file_meta = getattr(ds, "file_meta", None)
    ts = getattr(file_meta, "TransferSyntaxUID", None) if file_meta is not None else None
    return UID(ts) if ts else None


def _checked_item(
    index: int, header: Dataset, load: Callable[[], Dataset], what: str
) -> _Item | InstanceResult:
    """The instance to send, or its failure when its header cannot say what it is."""
    sop_class = str(header.get("SOPClassUID", ""))
    sop_instance = str(header.get("SOPInstanceUID", ""))
    ts = _transfer_syntax(header)
    if not sop_class or not sop_instance or ts is None:
        reason = f"{what} lacks SOPClassUID, SOPInstanceUID or file_meta.TransferSyntaxUID"
        return InstanceResult(sop_instance, sop_class, -1, reason)
    return _Item(index, sop_class, sop_instance, ts, load)


def send_datasets(
    node: DicomNode, datasets: Sequence[Dataset], *, calling_ae: str, timeout: float = 30.0
) -> DeliveryResult:
    """C-STORE in-memory datasets, each in the transfer syntax of its ``file_meta``."""
    items: list[_Item] = []
    indexed: dict[int, InstanceResult] = {}
    for index, ds in enumerate(datasets):
        checked = _checked_item(index, ds, _const(ds), "dataset")
        if isinstance(checked, InstanceResult):
            indexed[index] = checked
        else:
            items.append(checked)
    return _send(node, items, indexed, len(datasets), calling_ae=calling_ae, timeout=timeout)


def send_files(
    node: DicomNode, paths: Sequence[Path], *, calling_ae: str, timeout: float = 30.0
) -> DeliveryResult:
    """C-STORE Part 10 files as stored; an unreadable file fails alone, naming the file."""
    items: list[_Item] = []
    indexed: dict[int, InstanceResult] = {}
    for index, path in enumerate(paths):
        try:
            header = dcmread(path, stop_before_pixels=True)
        except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
            indexed[index] = InstanceResult("", "", -1, f"cannot read {path}: {exc}")
            continue
        checked = _checked_item(index, header, partial(dcmread, path), str(path))
        if isinstance(checked, InstanceResult):
            indexed[index] = checked
        else:
            items.append(checked)
    return _send(node, items, indexed, len(paths), calling_ae=calling_ae, timeout=timeout)


def _send(
    node: DicomNode,
    items: list[_Item],
    indexed: dict[int, InstanceResult],
    total: int,
    *,
    calling_ae: str,
    timeout: float,
) -> DeliveryResult:
    keys = list(dict.fromkeys(item.key for item in items))
    for start in range(0, len(keys), MAX_CONTEXTS):
        chunk = set(keys[start : start + MAX_CONTEXTS])
        batch = [item for item in items if item.key in chunk]
        for item, result in _send_association(node, batch, calling_ae=calling_ae, timeout=timeout):
            indexed[item.index] = result
    results = tuple(indexed[i] for i in range(total))
    failed = sum(not r.ok for r in results)
    LOGGER.info("sent %d instances to %s: %d failed", total, _describe(node), failed)
    return DeliveryResult(destination=_describe(node), instances=results)


def _build_ae(calling_ae: str, items: list[_Item], timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.maximum_pdu_size = _MAX_PDU
    for sop_class, ts in dict.fromkeys(item.key for item in items):
        if ts == _UNCOMPRESSED_LE:
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        else:
            ae.add_requested_context(sop_class, [ts])
    return ae


def _rejection_reason(assoc: Any) -> str:
    primitive = getattr(assoc.acceptor, "primitive", None)
    parts = [
        str(getattr(primitive, name, ""))
        for name in ("result_str", "source_str", "reason_str")
        if getattr(primitive, name, None)
    ]
    return ", ".join(parts) or "no reason given"


def _diagnose(node: DicomNode, timeout: float) -> str:
    """Say why an association failed: pynetdicom only logs the socket error."""
    try:
        with socket.create_connection((node.host, node.port), timeout=min(timeout, 5.0)):
            pass
    except OSError as exc:
        return f"unreachable ({exc.strerror or exc})"
    if node.tls is not None:
        return "TLS handshake failed (see the log), or the peer aborted or did not answer"
    return "the peer aborted or did not answer the association request in time"


def _send_association(
    node: DicomNode, items: list[_Item], *, calling_ae: str, timeout: float
) -> list[tuple[_Item, InstanceResult]]:
    if not items:
        return []
    ae = _build_ae(calling_ae, items, timeout)
    where = f"{_describe(node)} (calling AE {calling_ae})"
    tls_args = None
    if node.tls is not None:
        try:
            tls_args = (client_ssl_context(node.tls), node.host)
        except TlsConfigError as exc:
            raise DeliveryError(f"cannot set up TLS to {where}: {exc}") from exc
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise DeliveryError(f"association rejected by {where}: {_rejection_reason(assoc)}")
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            # The peer accepted the association but none of our SOP class/syntax pairs.
            reason = "no presentation context accepted by the destination"
            return [(item, _failed(item, f"{reason} for {_names(item)}")) for item in items]
        raise DeliveryError(f"cannot associate with {where}: {_diagnose(node, timeout)}")
    results: list[tuple[_Item, InstanceResult]] = []
    try:
        for item in items:
            results.append((item, _store_one(assoc, item)))
            if not assoc.is_established:
                raise DeliveryError(
                    f"association with {where} aborted after {len(results)} of "
                    f"{len(items)} instances"
                )
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def _names(item: _Item) -> str:
    return f"{UID(item.sop_class).name} in {item.transfer_syntax.name}"


def _failed(item: _Item, error: str) -> InstanceResult:
    return InstanceResult(item.sop_instance, item.sop_class, -1, error)


def _store_one(assoc: Any, item: _Item) -> InstanceResult:
    try:
        ds = item.load()
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        return _failed(item, f"cannot read instance: {exc}")
    try:
        status_ds = assoc.send_c_store(ds)
    except ValueError as exc:  # pynetdicom: no accepted context, or cannot encode
        return _failed(item, f"not sent: {exc}")
    except AttributeError as exc:  # pynetdicom: dataset/meta inconsistent
        return _failed(item, f"not sent: {exc}")
    if "Status" not in status_ds:
        if not assoc.is_established:
            return _failed(item, "no response: association aborted")
        return _failed(item, "no response from the destination (DIMSE timeout)")
    status = int(status_ds.Status)
    if status == 0x0000:
        return InstanceResult(item.sop_instance, item.sop_class, status)
    comment = status_ds.get("ErrorComment")
    return InstanceResult(item.sop_instance, item.sop_class, status, _status_text(status, comment))
