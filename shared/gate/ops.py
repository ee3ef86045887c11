"""The gate's operator side: forcing or resetting a breaker (audited in the transition stream),
snapshots of a scope's breaker and limiter state, and the latest transitions."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from shared.gate.policy import EVENTS_MAXLEN, Policy
from shared.keys import Keys

FORCE_TARGETS = {"open": "forced_open", "closed": "forced_closed", "disabled": "disabled"}


class GateOps:
    """Mixed into Gate, which provides the scripts, the policies and the Redis plumbing."""

    redis: Redis
    keys: Keys
    _force: AsyncScript
    _snapshot: AsyncScript

    def _scope_policy(self, name: str) -> Policy:
        raise NotImplementedError

    def scopes(self) -> list[Policy]:
        raise NotImplementedError

    async def key_scopes(self) -> list[Policy]:
        raise NotImplementedError

    async def _call(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        raise NotImplementedError

    async def _call_cmd(self, aw: Any) -> Any:
        raise NotImplementedError

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
