"""Which of a tenant's own provider entries serve a model: ``name/<model>``, or a model the entry lists.

Shared by the worker (routing, shared/byok/resolver.py) and the submission side (the model check of
the API, the client and batch validation), which reads only the records' plaintext part: an entry is
not secret, so checking a model needs neither the master key nor a decryption.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from redis.asyncio import Redis

from shared.byok.store import records
from shared.keys import Keys
from shared.schema import ProviderEntry


def serving(
    entries: Mapping[str, ProviderEntry | None], model: str | None, skip: Collection[str] = ()
) -> list[tuple[str, str]]:
    """(entry name, model to call it with) for each entry serving ``model``, in name order; entries
    named in ``skip`` (the fleet's providers, whose routes they replace the endpoint of) left out."""
    if not model:
        return []
    prefix, sep, rest = model.partition("/")
    if sep and rest and entries.get(prefix) is not None and prefix not in skip:
        return [(prefix, rest)]
    return [
        (name, model)
        for name, e in sorted(entries.items())
        if e is not None and name not in skip and model in e.models
    ]


@dataclass(frozen=True, slots=True)
class OwnEntries:
    """A tenant's own provider entries, for checking submitted model names."""

    entries: Mapping[str, ProviderEntry | None]

    def serves(self, model: str | None) -> bool:
        return bool(serving(self.entries, model))


NONE = OwnEntries({})


async def own_entries(redis: Redis, keys: Keys, tenant: str | None) -> OwnEntries:
    """One HGETALL (none without a tenant)."""
    if tenant is None:
        return NONE
    return OwnEntries({p: r.entry for p, r in (await records(redis, keys, tenant)).items()})
