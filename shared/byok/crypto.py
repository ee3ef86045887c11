"""The master key ring and AES-GCM wrapping of tenants' provider keys.

The master key (32 random bytes, base64) comes from ``FUSEBOX_MASTER_KEY`` or the file named by
``FUSEBOX_MASTER_KEY_FILE``; during a rotation ``FUSEBOX_MASTER_KEY_NEW`` / ``_NEW_FILE`` names the
next one. Readers accept records under either key; writers use the new one when it is set, so a
rotation (``fusebox keys rotate-master``) needs no downtime. Each record names its master key by
id (a hash of the key, useless without it), so a missing or wrong key is reported by name, never
answered with garbage or plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.schema import ProviderEntry, ProviderKeyRecord

ENV = "FUSEBOX_MASTER_KEY"
ENV_NEW = "FUSEBOX_MASTER_KEY_NEW"
HOW = f"set {ENV} (base64 of 32 random bytes) or {ENV}_FILE (a file holding it)"
_AAD_TAG = b"fusebox/provider-key/v1"


class MasterKeyError(RuntimeError):
    """No usable master key for what is stored; the message says what to set."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"fusebox-master-key-id\0" + key).hexdigest()[:12]


def new_master_key() -> str:
    """A fresh master key, base64 (what to put in FUSEBOX_MASTER_KEY)."""
    return base64.b64encode(os.urandom(32)).decode()


def _read(env: Mapping[str, str], var: str) -> bytes | None:
    raw = (env.get(var) or "").strip()
    source = var
    path = (env.get(f"{var}_FILE") or "").strip()
    if not raw and path:
        source = f"{var}_FILE ({path})"
        try:
            raw = Path(path).expanduser().read_text().strip()
        except OSError as e:
            raise MasterKeyError(f"cannot read the master key: {source}: {e.strerror or e}") from None
    if not raw:
        return None
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError(f"{source} is not base64 (want 32 random bytes, base64)") from None
    if len(key) != 32:
        raise MasterKeyError(f"{source} decodes to {len(key)} bytes; AES-256 needs exactly 32")
    return key


def aad(tenant: str, provider: str, entry: ProviderEntry | None) -> bytes:
    """Associated data: a record decrypts only for its own tenant, provider and provider entry."""
    ent = msgspec.json.encode(entry) if entry is not None else b""
    return b"\0".join((_AAD_TAG, tenant.encode(), provider.encode(), ent))


@dataclass(frozen=True)
class KeyRing:
    current: bytes
    new: bytes | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KeyRing | None:
        """The ring from the environment, or None when no master key is configured."""
        env = os.environ if env is None else env
        current, new = _read(env, ENV), _read(env, ENV_NEW)
        if current is None and new is None:
            return None
        if current is None:
            raise MasterKeyError(f"{ENV_NEW} is set but {ENV} is not: {HOW}")
        return cls(current, new)

    @property
    def write_id(self) -> str:
        return key_id(self.new if self.new is not None else self.current)

    @property
    def ids(self) -> dict[str, bytes]:
        out = {key_id(self.current): self.current}
        if self.new is not None:
            out[key_id(self.new)] = self.new
        return out

    def encrypt(
        self, tenant: str, provider: str, secret: str, entry: ProviderEntry | None, *, masked: str, at: float
    ) -> ProviderKeyRecord:
        key = self.new if self.new is not None else self.current
        nonce = os.urandom(12)
        ct = AESGCM(key).encrypt(nonce, secret.encode(), aad(tenant, provider, entry))
        return ProviderKeyRecord(
            mk=key_id(key),
            nonce=base64.b64encode(nonce).decode(),
            ct=base64.b64encode(ct).decode(),
            masked=masked,
            updated_at=at,
            entry=entry,
        )

    def decrypt(self, tenant: str, provider: str, rec: ProviderKeyRecord) -> str:
        key = self.ids.get(rec.mk)
        if key is None:
            raise MasterKeyError(
                f"the {provider!r} key of tenant {tenant!r} is encrypted under master key id {rec.mk}, "
                f"which is not loaded (loaded: {', '.join(self.ids)}); {HOW} to that key, "
                f"or {ENV_NEW} to it during a rotation"
            )
        try:
            plain = AESGCM(key).decrypt(
                base64.b64decode(rec.nonce), base64.b64decode(rec.ct), aad(tenant, provider, rec.entry)
            )
        except (InvalidTag, binascii.Error, ValueError):
            raise MasterKeyError(
                f"the {provider!r} key of tenant {tenant!r} does not decrypt: it was tampered with or "
                "moved from another tenant or provider; store it again"
            ) from None
        return plain.decode()

    def rewrap(self, tenant: str, provider: str, rec: ProviderKeyRecord) -> ProviderKeyRecord:
        """The same key under the write key (the new one during a rotation)."""
        secret = self.decrypt(tenant, provider, rec)
        out = self.encrypt(tenant, provider, secret, rec.entry, masked=rec.masked, at=rec.updated_at)
        out.actor = rec.actor
        return out
