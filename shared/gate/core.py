"""The resilience gate: circuit breaker, concurrency leases, rpm/tpm limits, adaptive concurrency.

All state lives in Redis and every decision is one Lua script using the Redis server's clock,
so any number of workers behave as one careful client per provider. A call costs two round
trips: ``admit`` before it and ``settle`` after it.

    adm = await gate.admit("openai", "gpt-4o-mini", est_tokens=900)
    if not adm.ok:
        ...  # adm.reason, adm.retry_in: fall back or defer, never hold the worker slot
    async with gate.keepalive(adm):  # renews the lease only if the call outlives a third of it
        ...  # the provider call
    await gate.settle(adm, outcome_of(error), latency_ms, actual_tokens)

If Redis cannot be reached every method raises ``RedisUnavailable``: the gate never fails open.

Lease ids start with a random prefix per Gate (one per worker process: its incarnation). A call whose
settle was cut off by a Redis outage leaves its lease behind; this process remembers it and releases
it before its next admission once Redis answers again, so capacity returns at once after a restart
instead of when the lease expires.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import scripts
from shared.config import FileConfig, ProviderConfig
from shared.gate.keepalive import KeepAlive
from shared.gate.ops import GateOps, _str
from shared.gate.policy import Policy, resolve
from shared.gate.types import OUTCOMES, Admission, RedisUnavailable
from shared.keys import ARQ_IN_PROGRESS, Keys
from shared.scripts import ScriptCall

log = logging.getLogger("fusebox.gate")

OWNERS_EVERY_S = 0.1


class Gate(GateOps):
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        cfg: FileConfig,
        provider_configs: Mapping[str, ProviderConfig] | None = None,
        *,
        timeout: float = 5.0,
    ) -> None:
        """``provider_configs`` supplies providers not in ``cfg.providers`` (e.g. the built-in
        ``simulated``: pass ``{name: p.config for name, p in build_providers(cfg).items()}``).
        ``timeout`` bounds every Redis call; past it the gate reports Redis unavailable."""
        self.redis = redis
        self.keys = keys
        self.cfg = cfg
        self.provider_configs: dict[str, ProviderConfig] = {**(provider_configs or {}), **cfg.providers}
        self.timeout = timeout
        self._policies: dict[tuple[str, str | None], Policy] = {}
        self._ids = itertools.count()
        self._prefix = os.urandom(6).hex()
        # leases of calls that ended while Redis was unreachable: lease id -> (scope, probe)
        self._unsettled: dict[str, tuple[str, bool]] = {}
        self._admit = scripts.load(redis, "admit", __file__)
        self._settle = scripts.load(redis, "settle", __file__)
        self._renew = scripts.load(redis, "renew", __file__)
        self._force = scripts.load(redis, "gate_force", __file__)
        self._snapshot = scripts.load(redis, "gate_snapshot", __file__)
        # Set by a worker: sends script calls made in one loop iteration together (worker/group_commit.py),
        # so the admits of jobs woken together share one round trip; each admit stays its own script.
        self.grouped: Callable[[list[ScriptCall]], Awaitable[list[Any]]] | None = None
        # The workers holding a scope's slots are counted (a read of its leases: half an admit's cost in
        # Redis) at most this often per scope; admissions in between reuse the last count.
        self.owners_every = OWNERS_EVERY_S
        self._owners: dict[str, tuple[int, float]] = {}  # scope -> (count, monotonic time counted)
        self._passing: dict[str, bool] = {}  # scope -> whether a slot may pass on (Gate.passed_on)

    # -- configuration -----------------------------------------------------
    def policy(self, provider: str, model: str | None = None, owner: str | None = None) -> Policy:
        """``owner``: a tenant calling with its own key. Its calls get a scope of their own,
        ``provider@owner`` (same settings as the provider's), so its 429s and outages never shrink
        another tenant's limits or trip the fleet's breaker."""
        key = (provider, model, owner)
        pol = self._policies.get(key)
        if pol is None:
            pcfg = self.provider_configs.get(provider) or ProviderConfig(type="unknown")
            pol = resolve(self.cfg, provider, pcfg, model)
            if owner is not None:
                suffix = f"/{pol.model}" if pol.model is not None else ""
                pol = dataclasses.replace(pol, scope=f"{provider}@{owner}{suffix}")
            self._policies[key] = pol
        return pol

    async def key_scopes(self) -> list[Policy]:
        """The per-key scopes of tenants' own provider keys (``provider@tenant``), from the stored keys."""
        tenants = sorted(
            _str(t) for t in await self._call_cmd(self.redis.smembers(self.keys.provider_key_tenants))
        )
        out: list[Policy] = []
        for t in tenants:
            for p in sorted(
                _str(x) for x in await self._call_cmd(self.redis.hkeys(self.keys.provider_keys(t)))
            ):
                out.append(self.policy(p, None, t))
        return out

    def scopes(self) -> list[Policy]:
        """Every configured scope: each provider, then each of its per-model scopes."""
        out: list[Policy] = []
        for name in sorted(self.provider_configs):
            out.append(self.policy(name))
            out.extend(self.policy(name, m) for m in sorted(self.provider_configs[name].per_model))
        return out

    def _scope_policy(self, name: str) -> Policy:
        """The policy for ``provider`` or ``provider/model`` (a per-model scope), either with
        ``@tenant`` after the provider for a tenant's own key; LookupError if unknown."""
        provider, sep, model = name.partition("/")
        provider, at, owner = provider.partition("@")
        if at and owner:
            if sep and model not in self.provider_configs.get(provider, ProviderConfig(type="x")).per_model:
                raise LookupError(f"no per-model scope {name!r}")
            return self.policy(provider, model if sep else None, owner)
        pcfg = self.provider_configs.get(provider)
        if pcfg is None or (sep and model not in pcfg.per_model):
            known = ", ".join(p.scope for p in self.scopes())
            raise LookupError(f"no provider or per-model scope {name!r} (known: {known})")
        return self.policy(provider, model if sep else None)

    # -- hot path ------------------------------------------------------------
    async def admit(
        self,
        provider: str,
        model: str | None,
        est_tokens: int,
        waiter: str = "",
        other_lines: Sequence[str] = (),
        owner: str | None = None,
        first: bool = False,
    ) -> Admission:
        """``waiter`` (a job id) joins the scope's virtual line when saturated: ``retry_in`` then says
        when its turn should come, so deferred jobs come back spread out instead of all at once.
        ``other_lines`` are the scopes of the job's other candidates: admitted, it leaves them too.
        ``first``: an interactive job, whose turn is the next free slot, ahead of waiting batch lines."""
        if self._unsettled:
            await self.release_unsettled()
        pol = self.policy(provider, model, owner)
        scope = pol.scope
        k = self.keys
        lease = f"{self._prefix}:{next(self._ids)}"
        keys = [
            k.gate_state(scope),
            k.gate_leases(scope),
            k.gate_probes(scope),
            k.breaker_events,
            k.gate_waiting(scope),
            *(k.gate_waiting(s) for s in other_lines if s != scope),
            k.gate_wanting(scope),
        ]
        t = time.monotonic()
        count = self._count_owners(scope, t)
        args = [
            scope, lease, max(0, int(est_tokens)), *pol.admit_args, waiter, "1" if first else "0",
            "1" if count else "0",
        ]  # fmt: skip
        if self.grouped is None:
            res = await self._call(self._admit, keys, args)
        else:
            res = (await self._call_cmd(self.grouped([ScriptCall(self._admit, keys, args)])))[0]
            if isinstance(res, Exception):
                raise res
        if res[0] == 1:
            self._passing[scope] = True  # closed, and a slot was free
            owners = self._owners_now(scope, res[6], t, 1)
            return Admission(
                True,
                provider,
                model,
                scope,
                lease=lease,
                probe=res[2] == 1,
                generation=res[1],
                limit_generation=res[3],
                limit=res[4],
                in_flight=res[5],
                owners=owners,
                est_tokens=max(0, int(est_tokens)),
                policy=pol,
            )
        reason: Any = _str(res[1])
        return Admission(False, provider, model, scope, reason=reason, retry_in=res[2] / 1000)

    async def settle(
        self,
        adm: Admission,
        outcome: str,
        latency_ms: float,
        actual_tokens: int | None,
        handoff: bool = False,
    ) -> None:
        """Release the lease and record the outcome. ``actual_tokens`` None keeps the estimate.

        The freed slot also calls the next job of the scope's line (jobs deferred while it was
        saturated, see ``admit``'s ``waiter``) back from arq's queue now, ahead of its estimated turn,
        unless ``handoff``: a job waiting in the caller's worker takes the slot next.
        """
        call = self.settle_call(adm, outcome, latency_ms, actual_tokens, handoff)
        if call is not None:
            try:
                await self._call(*call)
            except RedisUnavailable:
                self.unsettled(adm)
                raise

    def unsettled(self, adm: Admission) -> None:
        """The call is over but its settle never reached Redis: release its lease once Redis is back."""
        if adm.ok:
            self._unsettled[adm.lease] = (adm.scope, adm.probe)

    async def release_unsettled(self) -> int:
        """Release the leases (and probe leases) of calls cut off by an outage; how many were still held.
        Their outcomes are not recorded: the breaker misses them, which errs on the side of staying closed."""
        stale = dict(self._unsettled)
        async with self.redis.pipeline(transaction=False) as pipe:
            for lease, (scope, probe) in stale.items():
                pipe.zrem(self.keys.gate_leases(scope), lease)
                if probe:
                    pipe.zrem(self.keys.gate_probes(scope), lease)
            replies = await self._call_cmd(pipe.execute())
        for lease in stale:
            self._unsettled.pop(lease, None)
        freed = sum(int(r) for r in replies)
        if freed:
            log.warning("released %d leases of calls cut off by a Redis outage", freed)
        return freed

    def settle_call(
        self,
        adm: Admission,
        outcome: str,
        latency_ms: float,
        actual_tokens: int | None,
        handoff: bool = False,
        keep: bool = False,
    ) -> ScriptCall | None:
        """The settle script call, for callers that pipeline it with their own writes (one round trip).
        ``keep`` (for a call that succeeded, where ``can_pass_on``): the lease runs on for the job the
        caller passed the slot to (``pass_on``); ``passed_on`` reads the reply."""
        if not adm.ok:
            return None
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, not {outcome!r}")
        pol = adm.policy or self.policy(adm.provider, adm.model)
        k, scope = self.keys, adm.scope
        keys = [
            k.gate_state(scope),
            k.gate_window(scope),
            k.gate_leases(scope),
            k.gate_probes(scope),
            k.breaker_events,
            k.gate_waiting(scope),
            k.queue,
            k.gate_wanting(scope),
        ]
        args = [
            scope,
            adm.lease,
            adm.generation,
            int(adm.probe),
            adm.limit_generation,
            outcome,
            repr(float(latency_ms)),
            adm.est_tokens,
            -1 if actual_tokens is None else max(0, int(actual_tokens)),
            repr(random.random()),
            *pol.settle_args,
            int(adm.in_flight >= adm.limit),  # admitted at the limit: a 429 then marks the capacity
            ARQ_IN_PROGRESS,
            int(handoff or keep),
            int(keep),
            int(pol.limits.lease_seconds * 1000),
            int(keep and self._count_owners(scope, time.monotonic())),
            adm.waiter,
        ]
        return ScriptCall(self._settle, keys, args)

    def _count_owners(self, scope: str, t: float) -> bool:
        """Whether the workers holding the scope's slots are due to be counted again (``owners_every``)."""
        counted = self._owners.get(scope)
        return counted is None or t - counted[1] >= self.owners_every

    def _owners_now(self, scope: str, reply: int, t: float, default: int) -> int:
        """The count a script just made (kept for ``owners_every``), or the last one (0: none made)."""
        if reply:
            self._owners[scope] = (reply, t)
            return reply
        counted = self._owners.get(scope)
        return counted[0] if counted is not None else default

    def can_pass_on(self, adm: Admission) -> bool:
        """Whether the slot of this admitted call may pass to another job without an admission of its
        own: not a half-open probe, no rate limit (each call reserves its share of those), and the last
        settle that passed one on saw the breaker closed and the calls in flight within the limit."""
        pol = adm.policy
        return (
            adm.ok and not adm.probe and pol is not None and not pol.rpm and not pol.tpm
            and self._passing.get(adm.scope, True)
        )  # fmt: skip

    def pass_on(self, adm: Admission) -> Admission:
        """The slot an admitted call that just succeeded passes on: its lease, with the latest count of
        the workers holding the scope's slots (the settle sent with ``keep`` keeps the lease in Redis)."""
        counted = self._owners.get(adm.scope)
        owners = counted[0] if counted is not None else adm.owners
        return adm.passed(owners, "")

    def passed_on(self, adm: Admission, reply: Any) -> bool:
        """Take in the reply of a settle sent with ``keep``: whether the next slot may pass on, and the
        workers holding slots if it counted them. False if the lease had expired (reclaimed: the call
        the slot passed to runs without one, as a call that outlived its lease does)."""
        if not isinstance(reply, list) or len(reply) < 7:
            self._passing[adm.scope] = False  # not known: the next call asks the gate
            return False
        self._owners_now(adm.scope, reply[5], time.monotonic(), adm.owners)
        self._passing[adm.scope] = reply[6] == 1
        return reply[2] == 1

    async def renew(self, adm: Admission) -> bool:
        """Extend the call's lease (and probe lease); False if it had already expired and was reclaimed."""
        if not adm.ok:
            return False
        pol = adm.policy or self.policy(adm.provider, adm.model)
        res = await self._call(
            self._renew,
            [self.keys.gate_leases(adm.scope), self.keys.gate_probes(adm.scope)],
            [
                adm.lease,
                repr(pol.limits.lease_seconds * 1000),
                int(adm.probe),
                repr(pol.breaker.probe_lease_seconds * 1000),
            ],
        )
        return res[0] == 1

    def keepalive(self, adm: Admission) -> KeepAlive:
        """``async with``: renew the lease every third of its length while the block runs.

        Only a timer is armed up front: the renewing task starts if the call outlives the
        first period, so the usual short call pays nothing.
        """
        return KeepAlive(self, adm)

    # -- plumbing --------------------------------------------------------------
    async def _call(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        return await self._call_cmd(script(keys=keys, args=args))

    async def _call_cmd(self, aw: Any) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await aw
        except (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError) as e:
            msg = f"Redis is unreachable ({type(e).__name__}: {e}); no provider call is admitted meanwhile"
            raise RedisUnavailable(msg) from None
