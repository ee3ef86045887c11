"""Spend caps per tenant (USD per UTC day) and per batch (USD), enforced like tpm: reserve the
estimated cost before a call, adjust by the real cost after it.

A reservation is all or nothing across the job's counters (its tenant's day, its batch) and is
refused when a counter is at its cap or the estimate would take it past, so spending stops within
one reservation of the cap (an answer dearer than its estimate can add the difference). Caps are
read by workers through a short cache (``ttl``), so jobs without caps pay no extra round trip
once it is warm, and a raised cap takes effect within ``ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared import audit, scripts
from shared.keys import Keys

COUNTER_TTL_S = 40 * 24 * 3600  # batches run for days; tenant day counters are read for a while
TENANT_CAP = "daily_budget_usd"  # field of the tenant's settings hash
BATCH_CAP = "budget_usd"  # field of the batch hash
PAUSE_TTL_S = 120.0


def today() -> str:
    return time.strftime("%Y%m%d", time.gmtime())


@dataclass(frozen=True, slots=True)
class Caps:
    tenant: float | None = None
    batch: float | None = None

    @property
    def any(self) -> bool:
        return self.tenant is not None or self.batch is not None


@dataclass(frozen=True, slots=True)
class Reservation:
    ok: bool
    counters: tuple[str, ...] = ()
    amount: float = 0.0
    reason: str = ""  # when refused: which cap, what was spent


class Hold:
    """One call's reservation, settled exactly once: by the call's real cost, or refunded in full
    (``release``) when the call never happened or was cut off (cancelled, timed out, an error
    between reserving and calling). The executor releases it in a ``finally``, so no path keeps it."""

    __slots__ = ("budgets", "done", "reservation")

    def __init__(self, budgets: Budgets, reservation: Reservation) -> None:
        self.budgets, self.reservation, self.done = budgets, reservation, False

    async def settle(self, actual: float) -> None:
        if self.done:
            return
        self.done = True  # before the round trip: a reply lost to a cancel must not be counted twice
        await self.budgets.settle(self.reservation, actual)

    async def release(self) -> None:
        """Refund the whole estimate unless settled; shielded, so a second cancel cannot cut it off."""
        if not self.done:
            await asyncio.shield(self.settle(0.0))


def _f(v: bytes | str | None) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except ValueError:
        return None


class Budgets:
    def __init__(self, redis: Redis, keys: Keys, ttl: float = 5.0) -> None:
        self.redis, self.keys, self.ttl = redis, keys, ttl
        self._script = scripts.load(redis, "budget", __file__)
        self._caps: dict[tuple[str | None, str | None], tuple[float, Caps]] = {}

    async def caps(self, tenant: str | None, batch_id: str | None) -> Caps:
        if tenant is None and batch_id is None:
            return Caps()
        ck = (tenant, batch_id)
        hit = self._caps.get(ck)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        async with self.redis.pipeline(transaction=False) as pipe:
            if tenant is not None:
                pipe.hget(self.keys.tenant_settings(tenant), TENANT_CAP)
            if batch_id is not None:
                pipe.hget(self.keys.batch(batch_id), BATCH_CAP)
            vals = list(await pipe.execute())
        t = _f(vals.pop(0)) if tenant is not None else None
        b = _f(vals.pop(0)) if batch_id is not None else None
        caps = Caps(t, b)
        if len(self._caps) > 10_000:
            self._caps.clear()
        self._caps[ck] = (time.monotonic() + self.ttl, caps)
        return caps

    async def reserve(
        self, tenant: str | None, batch_id: str | None, caps: Caps, amount: float
    ) -> Reservation:
        counters: list[str] = []
        limits: list[float] = []
        names: list[str] = []
        if tenant is not None and caps.tenant is not None:
            counters.append(self.keys.spend_tenant(tenant, today()))
            limits.append(caps.tenant)
            names.append(f"tenant {tenant}'s daily budget")
        if batch_id is not None and caps.batch is not None:
            counters.append(self.keys.spend_batch(batch_id))
            limits.append(caps.batch)
            names.append(f"batch {batch_id}'s budget")
        if not counters:
            return Reservation(True)
        note = [self.keys.batch_paused(batch_id)] if batch_id is not None and caps.batch is not None else []
        res = await self._script(
            keys=[*counters, *note], args=["reserve", repr(amount), COUNTER_TTL_S, *map(repr, limits)]
        )
        if int(res[0]) == 1:
            return Reservation(True, tuple(counters), amount)
        i = int(res[1]) - 1
        spent = float(res[2])
        why = (
            f"{names[i]} is spent: ${spent:.4f} of ${limits[i]:.4f} (this call is estimated at ${amount:.4f})"
        )
        return Reservation(False, reason=why)

    async def hold(
        self, tenant: str | None, batch_id: str | None, caps: Caps, amount: float
    ) -> Hold | Reservation:
        """Reserve ``amount``: a Hold to settle or release, or the refused Reservation (its reason)."""
        r = await self.reserve(tenant, batch_id, caps, amount)
        return Hold(self, r) if r.ok else r

    async def settle(self, r: Reservation, actual: float) -> None:
        """Replace the reservation by the real cost (0 for a failed call)."""
        if r.ok and r.counters and actual != r.amount:
            await self._script(keys=list(r.counters), args=["adjust", repr(actual - r.amount), COUNTER_TTL_S])

    async def pause(self, batch_id: str, reason: str) -> None:
        await self.redis.set(self.keys.batch_paused(batch_id), reason, ex=int(PAUSE_TTL_S))


async def set_cap(
    redis: Redis,
    keys: Keys,
    *,
    tenant: str | None = None,
    batch_id: str | None = None,
    usd: float | None,
    actor: str,
) -> None:
    """Set (or with None remove) a tenant's daily cap or a batch's cap; audited. Raising a batch's
    cap clears its 'paused' note; its waiting lines run at their next check."""
    if (tenant is None) == (batch_id is None):
        raise ValueError("give a tenant or a batch")
    if usd is not None and usd < 0:
        raise ValueError("a budget is >= 0 USD")
    key, field = (
        (keys.tenant_settings(tenant), TENANT_CAP) if tenant else (keys.batch(batch_id or ""), BATCH_CAP)
    )
    if batch_id is not None and not await redis.exists(key):
        raise LookupError(f"no batch {batch_id!r}")
    if usd is None:
        await redis.hdel(key, field)
    else:
        await redis.hset(key, field, repr(float(usd)))
    if batch_id is not None:
        await redis.delete(keys.batch_paused(batch_id))
    target = f"tenant:{tenant}" if tenant else f"batch:{batch_id}"
    await audit.record(redis, keys, actor=actor, action="budget.set", target=target, details={"usd": usd})


def batch_fields(info: dict[str, str]) -> dict[str, Any]:
    """Fusebox's own fields of a batch (``Store.batch_info``), under ``fusebox`` in every API family's
    batch object, whose own status fields keep their documented values: ``paused`` says why its
    lines wait (its spend cap) while they do, else null; ``budget_usd`` is its cap, if any."""
    return {"paused": info.get("paused"), "budget_usd": _f(info.get(BATCH_CAP))}


async def spent(redis: Redis, keys: Keys, *, tenant: str | None = None, batch_id: str | None = None) -> float:
    k = keys.spend_tenant(tenant, today()) if tenant else keys.spend_batch(batch_id or "")
    return _f(await redis.get(k)) or 0.0
