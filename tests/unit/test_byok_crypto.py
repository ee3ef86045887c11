"""Master key ring and AES-GCM wrapping of tenants' provider keys (no Redis)."""

from __future__ import annotations

import base64
import os

import msgspec
import pytest

from shared.byok.crypto import KeyRing, MasterKeyError, key_id, new_master_key
from shared.schema import ProviderEntry, ProviderKeyRecord

SECRET = "sk-tenant-a-" + "x7Qp" * 8


def ring(**env: str) -> KeyRing:
    r = KeyRing.from_env(env)
    assert r is not None
    return r


def test_roundtrip_and_no_plaintext_in_the_record() -> None:
    r = ring(FUSEBOX_MASTER_KEY=new_master_key())
    rec = r.encrypt("tenant-a", "openai", SECRET, None, masked="sk-…x7Qp", at=1.0)
    blob = msgspec.json.encode(rec)
    assert SECRET.encode() not in blob and SECRET[12:20].encode() not in blob
    assert r.decrypt("tenant-a", "openai", rec) == SECRET
    again = r.encrypt("tenant-a", "openai", SECRET, None, masked="x", at=1.0)
    assert again.nonce != rec.nonce and again.ct != rec.ct  # a fresh nonce per record


def test_a_record_cannot_move_to_another_tenant_provider_or_entry() -> None:
    r = ring(FUSEBOX_MASTER_KEY=new_master_key())
    entry = ProviderEntry(type="vllm", base_url="https://vllm.example.com/v1", models=["m"])
    rec = r.encrypt("tenant-a", "mine", SECRET, entry, masked="x", at=1.0)
    assert r.decrypt("tenant-a", "mine", rec) == SECRET
    for tenant, provider in (("tenant-b", "mine"), ("tenant-a", "other")):
        with pytest.raises(MasterKeyError, match="tampered with or moved"):
            r.decrypt(tenant, provider, rec)
    # Pointing the stored entry at another server (to receive the key) breaks decryption too.
    moved = msgspec.structs.replace(
        rec, entry=ProviderEntry(type="vllm", base_url="https://evil.example.com")
    )
    with pytest.raises(MasterKeyError, match="tampered"):
        r.decrypt("tenant-a", "mine", moved)


def test_wrong_or_missing_master_key_names_what_to_set() -> None:
    old, other = new_master_key(), new_master_key()
    rec = ring(FUSEBOX_MASTER_KEY=old).encrypt("t", "openai", SECRET, None, masked="x", at=1.0)
    with pytest.raises(MasterKeyError, match="FUSEBOX_MASTER_KEY") as e:
        ring(FUSEBOX_MASTER_KEY=other).decrypt("t", "openai", rec)
    assert rec.mk in str(e.value) and SECRET not in str(e.value)
    assert KeyRing.from_env({}) is None
    with pytest.raises(MasterKeyError, match="32"):
        KeyRing.from_env({"FUSEBOX_MASTER_KEY": base64.b64encode(os.urandom(16)).decode()})
    with pytest.raises(MasterKeyError, match="base64"):
        KeyRing.from_env({"FUSEBOX_MASTER_KEY": "not base64 !"})
    with pytest.raises(MasterKeyError, match="FUSEBOX_MASTER_KEY is not"):
        KeyRing.from_env({"FUSEBOX_MASTER_KEY_NEW": old})


def test_master_key_from_a_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    k = new_master_key()
    (tmp_path / "mk").write_text(k + "\n")
    r = ring(FUSEBOX_MASTER_KEY_FILE=str(tmp_path / "mk"))
    assert r.write_id == key_id(base64.b64decode(k))
    with pytest.raises(MasterKeyError, match="cannot read"):
        KeyRing.from_env({"FUSEBOX_MASTER_KEY_FILE": str(tmp_path / "absent")})


def test_rotation_reads_old_and_new_and_writes_new() -> None:
    old, new = new_master_key(), new_master_key()
    before = ring(FUSEBOX_MASTER_KEY=old).encrypt("t", "p", SECRET, None, masked="x", at=1.0)
    during = ring(FUSEBOX_MASTER_KEY=old, FUSEBOX_MASTER_KEY_NEW=new)
    assert during.decrypt("t", "p", before) == SECRET  # readers accept the old key during rotation
    written = during.encrypt("t", "p", SECRET, None, masked="x", at=1.0)
    assert written.mk == during.write_id == key_id(base64.b64decode(new))
    after = during.rewrap("t", "p", before)
    assert isinstance(after, ProviderKeyRecord) and after.mk == during.write_id
    assert ring(FUSEBOX_MASTER_KEY=new).decrypt("t", "p", after) == SECRET
    with pytest.raises(MasterKeyError):
        ring(FUSEBOX_MASTER_KEY=new).decrypt("t", "p", before)
