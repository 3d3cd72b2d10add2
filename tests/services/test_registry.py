"""The model registry: content-hash ids, lineage, approval, deploy records, corruption."""

from __future__ import annotations

import hashlib
import json

import pytest
from edgewatch.core.errors import UserError
from edgewatch.services.registry import Registry, content_id


def test_ids_are_content_hashes_and_registering_twice_keeps_one_entry(tmp_path):
    reg = Registry(tmp_path / "reg")
    blob = b"EWB1" + bytes(range(200))
    e = reg.add(blob, metrics={"rmse": 0.5}, data={"source": "x.db", "start": 1.0, "end": 9.0,
                                                   "rows": 9})
    assert e.id == hashlib.sha256(blob).hexdigest()[:16] == content_id(blob)
    assert e.blob() == blob and not e.approved
    again = reg.add(blob, metrics={"rmse": 0.4}, approved=True)
    assert again.id == e.id and again.meta["created"] == e.meta["created"]
    assert again.meta["data"]["rows"] == 9  # kept from the first registration
    assert again.meta["metrics"] == {"rmse": 0.4} and again.approved
    assert [x.id for x in reg.entries()] == [e.id]
    on_disk = json.loads((tmp_path / "reg" / e.id / "entry.json").read_text())
    assert on_disk["approved"] is True and on_disk["approved_at"]


def test_lineage_approval_and_deployments(tmp_path):
    reg = Registry(tmp_path)
    a = reg.add(b"first model", approved=True, model_id="0badf00d")
    b = reg.add(b"second model", parent=a.id)
    assert reg.get(b.id[:6]).meta["parent"] == a.id
    assert reg.latest().id == a.id  # b is not approved yet
    assert reg.latest(approved=False).id == b.id
    # the same bytes retrained again never become their own parent
    assert reg.add(b"second model", parent=b.id).meta["parent"] == a.id
    reg.approve(b.id, note="better by 12 %")
    assert reg.latest().id == b.id and reg.get(b.id).meta["note"] == "better by 12 %"
    assert reg.deployed("gh-01") is None
    reg.mark_deployed(a.id, "fleet")
    reg.mark_deployed(b.id, "gh-02")
    assert reg.deployed("gh-01").id == a.id  # falls back to the fleet's model
    assert reg.deployed("gh-02").id == b.id
    assert reg.deployments()["fleet"]["model_id"] == "0badf00d"


def test_refusals(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(UserError, match="not registered"):
        reg.get("abcd1234")
    with pytest.raises(UserError, match="not registered"):
        reg.add(b"orphan", parent="ffffffff")
    with pytest.raises(UserError, match="empty blob"):
        reg.add(b"")
    e = reg.add(b"some bytes")
    assert reg.verify(e.id).id == e.id
    e.blob_path.write_bytes(b"some bytez")
    with pytest.raises(UserError, match="corrupted"):
        reg.verify(e.id)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        Registry(tmp_path / "file")
