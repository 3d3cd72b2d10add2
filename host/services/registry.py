"""The model registry: one folder per model blob, named by its content hash.

Layout under the registry root (``models/registry`` by default)::

    <id>/model.ewb      the unsigned firmware blob (signing happens at publish time)
    <id>/entry.json     id, created, model_id, metrics, data span, parent, approved, ...
    <id>/<files>        the model folder's small files (config.json, scaler.json, ...)
    deployed.json       target (a device id or "fleet") -> id and time of the last deploy

``id`` is the first 16 hex digits of the blob's SHA-256, so the same bytes are
registered once however often a run produces them, and an id names exactly one
blob. ``parent`` is the id of the model the candidate was judged against (the
one deployed when it was trained), which makes the registry a lineage. Every
file is written to a temporary name and renamed, so a crash never leaves a
half-written entry or deploy record.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edgewatch.core.errors import UserError

BLOB = "model.ewb"
ENTRY = "entry.json"
DEPLOYED = "deployed.json"
ID_LEN = 16
# Small text files of a model folder worth keeping with the blob.
KEEP = ("config.json", "scaler.json", "metrics.json", "golden.json")


def content_id(blob: bytes) -> str:
    """The registry id of ``blob``: 16 hex digits of its SHA-256."""
    return hashlib.sha256(bytes(blob)).hexdigest()[:ID_LEN]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


@dataclass
class Entry:
    """One registered model: its folder and the contents of its ``entry.json``."""

    path: Path
    meta: dict

    @property
    def id(self) -> str:
        return self.meta["id"]

    @property
    def blob_path(self) -> Path:
        return self.path / BLOB

    @property
    def approved(self) -> bool:
        return bool(self.meta.get("approved"))

    def blob(self) -> bytes:
        """The stored (unsigned) blob bytes."""
        return self.blob_path.read_bytes()


class Registry:
    """A registry folder; created on first write."""

    def __init__(self, root) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root}: exists and is not a folder (registry)")

    # ---------------------------------------------------------------- writing

    def add(self, blob: bytes, *, metrics: dict | None = None, data: dict | None = None,
            parent: str | None = None, approved: bool = False, model_id: str | None = None,
            files=(), note: str = "") -> Entry:
        """Register ``blob`` with its metrics and data span; returns the (new or existing) entry.

        ``data`` describes the training data: ``{"source", "start", "end", "rows"}``
        (Unix seconds). ``files`` are paths copied next to the blob. Registering
        the same bytes again updates metrics/approval but keeps the first ``created``.
        """
        blob = bytes(blob)
        if not blob:
            raise UserError("registry: an empty blob cannot be registered")
        mid = content_id(blob)
        if parent == mid:
            parent = None  # retrained into the same bytes: not its own parent
        if parent is not None:
            self.get(parent)  # a parent must exist: the lineage never points nowhere
        folder = self.root / mid
        folder.mkdir(parents=True, exist_ok=True)
        old = self._read_entry(folder) if (folder / ENTRY).exists() else {}
        if not (folder / BLOB).exists():
            write_atomic(folder / BLOB, blob)
        for f in files:
            f = Path(f)
            if f.is_file():
                shutil.copyfile(f, folder / f.name)
        meta = {
            "id": mid,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "bytes": len(blob),
            "model_id": model_id or old.get("model_id"),
            "created": old.get("created", _now()),
            "metrics": metrics if metrics is not None else old.get("metrics", {}),
            "data": data if data is not None else old.get("data", {}),
            "parent": parent if parent is not None else old.get("parent"),
            "approved": bool(approved or old.get("approved")),
            "note": note or old.get("note", ""),
        }
        if meta["approved"]:
            meta["approved_at"] = old.get("approved_at") or _now()
        write_atomic(folder / ENTRY, json.dumps(meta, indent=2) + "\n")
        return Entry(folder, meta)

    def approve(self, model: str, note: str = "") -> Entry:
        """Mark a registered model approved for deployment."""
        e = self.get(model)
        e.meta.update(approved=True, approved_at=e.meta.get("approved_at") or _now())
        if note:
            e.meta["note"] = note
        write_atomic(e.path / ENTRY, json.dumps(e.meta, indent=2) + "\n")
        return e

    def mark_deployed(self, model: str, target: str) -> None:
        """Record that ``target`` (a device id or ``fleet``) now runs ``model``."""
        e = self.get(model)
        d = self.deployments()
        d[target] = {"id": e.id, "model_id": e.meta.get("model_id"), "at": _now()}
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / DEPLOYED, json.dumps(d, indent=2, sort_keys=True) + "\n")

    # ---------------------------------------------------------------- reading

    def _read_entry(self, folder: Path) -> dict:
        try:
            meta = json.loads((folder / ENTRY).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{folder / ENTRY}: unreadable registry entry ({exc})") from None
        if not isinstance(meta, dict) or meta.get("id") != folder.name:
            raise UserError(f"{folder / ENTRY}: entry id does not match its folder")
        return meta

    def entries(self) -> list[Entry]:
        """Every registered model, oldest first."""
        if not self.root.is_dir():
            return []
        out = [Entry(f, self._read_entry(f)) for f in self.root.iterdir()
               if f.is_dir() and (f / ENTRY).exists()]
        return sorted(out, key=lambda e: (e.meta.get("created", ""), e.id))

    def get(self, model: str) -> Entry:
        """The entry whose id starts with ``model`` (unique prefix, at least 4 hex digits)."""
        key = str(model).strip().lower()
        matches = [e for e in self.entries() if e.id.startswith(key)] if len(key) >= 4 else []
        if len(matches) == 1:
            return matches[0]
        what = "is ambiguous" if matches else "is not registered"
        raise UserError(f"{self.root}: model '{model}' {what}")

    def verify(self, model: str) -> Entry:
        """The entry, after checking its blob still hashes to its id (no silent corruption)."""
        e = self.get(model)
        if content_id(e.blob()) != e.id:
            raise UserError(f"{e.blob_path}: content does not match id {e.id} (corrupted)")
        return e

    def latest(self, approved: bool = True) -> Entry | None:
        """The newest (approved) entry, or None."""
        es = [e for e in self.entries() if e.approved or not approved]
        return es[-1] if es else None

    def deployments(self) -> dict:
        """``deployed.json``: target -> {id, model_id, at}."""
        p = self.root / DEPLOYED
        if not p.exists():
            return {}
        try:
            return json.loads(p.read_text())
        except ValueError as exc:
            raise UserError(f"{p}: unreadable ({exc})") from None

    def deployed(self, target: str = "fleet") -> Entry | None:
        """What ``target`` runs: its own record, else the fleet's, else None."""
        d = self.deployments()
        rec = d.get(target) or d.get("fleet")
        return self.get(rec["id"]) if rec else None
