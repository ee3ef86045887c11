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
import contextlib
import dataclasses
import itertools
import logging
import os
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import scripts
from shared.config import FileConfig, ProviderConfig
from shared.errors import ErrorClass, ProviderError
from shared.gate_policy import EVENTS_MAXLEN, Policy, resolve
from shared.keys import Keys
from shared.scripts import ScriptCall

Outcome = Literal["success", "failure", "rate_limited", "ignored"]
Reason = Literal["open", "forced_open", "saturated", "rate_limited", "half_open_busy"]
OUTCOMES: frozenset[str] = frozenset({"success", "failure", "rate_limited", "ignored"})
log = logging.getLogger("fusebox.gate")
FORCE_TARGETS = {"open": "forced_open", "closed": "forced_closed", "disabled": "disabled"}


class RedisUnavailable(RuntimeError):
    """Redis could not be reached, so no provider call may be admitted (Fusebox never fails open)."""


@dataclass(slots=True)
class Admission:
    """The gate's answer. When ``ok``, the call holds ``lease`` until ``settle``."""

    ok: bool
    provider: str
    model: str | None
    scope: str
    reason: Reason | None = None
    retry_in: float = 0.0  # seconds; a hint for deferring when not ok
    lease: str = ""
    probe: bool = False  # a half-open probe: its outcome decides whether the breaker closes
    generation: int = 0  # breaker generation at admission; outcomes from older ones are fenced off
    limit_generation: int = 0
    limit: int = 0  # effective concurrency limit at admission
    in_flight: int = 0
    est_tokens: int = 0
    policy: Policy | None = field(default=None, repr=False)


def outcome_of(err: ProviderError | None) -> Outcome:
    """What a provider call's result means to the breaker: only the provider's fault counts."""
    if err is None:
        return "success"
    if err.error_class is ErrorClass.RATE_LIMITED:
        return "rate_limited"
    if err.error_class is ErrorClass.TRANSIENT:
        return "failure"
    return "ignored"  # the user's request (400, context length, auth) says nothing about health


class Gate:
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
        self._admit = scripts.load(redis, "admit")
        self._settle = scripts.load(redis, "settle")
        self._renew = scripts.load(redis, "renew")
        self._force = scripts.load(redis, "gate_force")
        self._snapshot = scripts.load(redis, "gate_snapshot")

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
        res = await self._call(
            self._admit,
            [
                k.gate_state(scope),
                k.gate_leases(scope),
                k.gate_probes(scope),
                k.breaker_events,
                k.gate_waiting(scope),
                *(k.gate_waiting(s) for s in other_lines if s != scope),
            ],
            [scope, lease, max(0, int(est_tokens)), *pol.admit_args, waiter, "1" if first else "0"],
        )
        if res[0] == 1:
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
                est_tokens=max(0, int(est_tokens)),
                policy=pol,
            )
        reason: Any = _str(res[1])
        return Admission(False, provider, model, scope, reason=reason, retry_in=res[2] / 1000)

    async def settle(
        self, adm: Admission, outcome: str, latency_ms: float, actual_tokens: int | None
    ) -> None:
        """Release the lease and record the outcome. ``actual_tokens`` None keeps the estimate.

        The freed slot also calls the next job of the scope's line (jobs deferred while it was
        saturated, see ``admit``'s ``waiter``) back from arq's queue now, ahead of its estimated turn.
        """
        call = self.settle_call(adm, outcome, latency_ms, actual_tokens)
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
        self, adm: Admission, outcome: str, latency_ms: float, actual_tokens: int | None
    ) -> ScriptCall | None:
        """The settle script call, for callers that pipeline it with their own writes (one round trip)."""
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
        ]
        return ScriptCall(self._settle, keys, args)

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

    @contextlib.asynccontextmanager
    async def keepalive(self, adm: Admission) -> AsyncIterator[None]:
        """Renew the lease every third of its length while the block runs.

        Only a timer is armed up front: the renewing task starts if the call outlives the
        first period, so the usual short call pays nothing.
        """
        if not adm.ok or adm.policy is None:
            yield
            return
        every = min(adm.policy.limits.lease_seconds, adm.policy.breaker.probe_lease_seconds) / 3
        loop = asyncio.get_running_loop()
        task: asyncio.Task[None] | None = None

        async def renew_loop() -> None:
            while True:
                try:
                    held = await self.renew(adm)
                except RedisUnavailable as e:
                    log.warning("lease of a %s call not renewed: %s", adm.scope, e)
                    held = True
                if not held:  # stalled longer than a lease: the slot may already be someone else's
                    log.warning("lease of a %s call expired before it was renewed", adm.scope)
                    return
                await asyncio.sleep(every)

        def start() -> None:
            nonlocal task
            task = loop.create_task(renew_loop())

        timer = loop.call_later(every, start)
        try:
            yield
        finally:
            timer.cancel()
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- ops -------------------------------------------------------------------
    async def force(self, provider: str, state: str, actor: str = "", why: str = "") -> None:
        """Pin the breaker of ``provider`` (or ``provider/model``): 'open', 'closed' or 'disabled'.
        ``reset`` returns it to automatic operation. ``actor`` and ``why`` are kept in the
        transition stream (the audit trail)."""
        target = FORCE_TARGETS.get(state)
        if target is None:
            raise ValueError(f"state must be one of {sorted(FORCE_TARGETS)}, not {state!r}")
        await self._ops(provider, target, actor, why)

    async def reset(self, provider: str, actor: str = "", why: str = "") -> None:
        """Back to an automatic, closed breaker: empty window, no trip history, full concurrency limit."""
        await self._ops(provider, "closed", actor, why)

    async def _ops(self, name: str, target: str, actor: str, why: str) -> None:
        scope = self._scope_policy(name).scope
        k = self.keys
        await self._call(
            self._force,
            [k.gate_state(scope), k.gate_window(scope), k.gate_probes(scope), k.breaker_events],
            [scope, target, EVENTS_MAXLEN, actor, why[:500]],
        )

    async def snapshot(self, provider: str) -> dict[str, Any]:
        """State of ``provider`` (or ``provider/model``) now; times are unix seconds (server clock)."""
        pol = self._scope_policy(provider)
        k, scope = self.keys, pol.scope
        res = await self._call(
            self._snapshot,
            [k.gate_state(scope), k.gate_window(scope), k.gate_leases(scope), k.gate_probes(scope)],
            list(pol.snapshot_args),
        )
        return _snapshot(pol, res)

    async def snapshots(self) -> list[dict[str, Any]]:
        """Every configured scope, then every tenant key's scope (``provider@tenant``)."""
        return [await self.snapshot(p.scope) for p in [*self.scopes(), *await self.key_scopes()]]

    async def transitions(self, count: int = 50, scope: str | None = None) -> list[dict[str, Any]]:
        """The latest breaker transitions (of one scope, if given), newest first. Figures stay strings."""
        rows = await self._call_cmd(self.redis.xrevrange(self.keys.breaker_events, count=count))
        out = []
        for entry_id, fields in rows:
            ev: dict[str, Any] = {_str(a): _str(b) for a, b in fields.items()}
            if scope is not None and ev.get("scope") != scope:
                continue
            ev["id"] = _str(entry_id)
            ev["at"] = float(ev.pop("at_ms", 0)) / 1000
            out.append(ev)
        return out

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


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _snapshot(pol: Policy, res: list[Any]) -> dict[str, Any]:
    now_ms = float(res[0])
    raw = res[1]
    h = {_str(raw[i]): _str(raw[i + 1]) for i in range(0, len(raw), 2)}
    calls, fails, slow, in_flight, probes = (int(x) for x in res[2:7])
    state = h.get("st", "closed")
    lim = pol.limits
    effective = pol.max_concurrency
    if lim.adaptive:
        effective = max(1, int(min(float(h.get("lim", pol.max_concurrency)), pol.max_concurrency)))
    next_change = None
    if state == "open":  # half_open changes with its probes, closed with its window
        next_change = float(h.get("until", now_ms)) / 1000

    def used(tat_field: str, per_minute: int | None) -> float | None:
        if not per_minute:
            return None
        tat = float(h.get(tat_field, 0) or 0)
        return round(max(0.0, tat - now_ms) * per_minute / 60000, 1)

    last = None
    if "at" in h:
        last = {"at": float(h["at"]) / 1000, "from": h.get("from"), "to": state, "reason": h.get("why")}
    return {
        "scope": pol.scope,
        "provider": pol.provider,
        "model": pol.model,
        "state": state,
        "generation": int(h.get("gen", 0)),
        "now": now_ms / 1000,
        "window_seconds": pol.breaker.window_seconds,
        "calls": calls,
        "failures": fails,
        "slow": slow,
        "failure_rate": fails / calls if calls else 0.0,
        "slow_rate": slow / calls if calls else 0.0,
        "minimum_calls": pol.breaker.minimum_calls,
        "consecutive_failures": int(h.get("cf", 0)),
        "consecutive_failures_to_trip": pol.breaker.consecutive_failures,
        "in_flight": in_flight,
        "max_concurrency": pol.max_concurrency,
        "effective_limit": effective,
        "probes_in_flight": probes,
        "half_open_probes": pol.breaker.half_open_probes,
        "probe_successes": int(h.get("hp_ok", 0)),
        "rpm": pol.rpm,
        "rpm_used": used("rtat", pol.rpm),
        "tpm": pol.tpm,
        "tpm_used": used("ttat", pol.tpm),
        "trips": int(h.get("trips", 0)),
        "open_wait_seconds": float(h["wait"]) / 1000 if "wait" in h else None,
        "latency_ms": round(float(h["lat"]), 1) if "lat" in h else None,
        "last_transition": last,
        "next_change_at": next_change,
    }
