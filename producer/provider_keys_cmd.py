"""``fusebox keys provider|rotate-master|settings``, ``fusebox budget`` and ``fusebox audit``.

Registration only: the commands' code (Redis, crypto, config) is imported when one of them runs,
so ``fusebox --help`` stays light.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any


def _lazy(name: str) -> Callable[[argparse.Namespace, Any], int]:
    def run(args: argparse.Namespace, settings: Any) -> int:
        impl = importlib.import_module("producer.provider_keys_impl")
        fn: Callable[[argparse.Namespace, Any], int] = getattr(impl, name)
        return fn(args, settings)

    return run


def register(ks: Any) -> None:
    """Adds ``provider``, ``rotate-master`` and ``settings`` under ``fusebox keys``."""
    p = ks.add_parser("provider", help="tenants' own provider keys (encrypted; key read from stdin)")
    ps = p.add_subparsers(dest="provider_command", required=True)
    s = ps.add_parser("set", help="store TENANT's key for PROVIDER, read from stdin")
    s.add_argument("tenant")
    s.add_argument("provider")
    s.add_argument("--type", help="a provider entry of the tenant's own: adapter type (e.g. azure, vllm)")
    s.add_argument("--base-url", help="its base URL")
    s.add_argument("--model", action="append", help="a model it serves (repeat)")
    s.set_defaults(fn=_lazy("_cmd_set"))
    ls = ps.add_parser("list", help="TENANT's provider keys, masked")
    ls.add_argument("tenant")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=_lazy("_cmd_list"))
    d = ps.add_parser("delete", help="delete TENANT's key for PROVIDER")
    d.add_argument("tenant")
    d.add_argument("provider")
    d.set_defaults(fn=_lazy("_cmd_delete"))
    rm = ks.add_parser("rotate-master", help="re-wrap every stored provider key under FUSEBOX_MASTER_KEY_NEW")
    rm.set_defaults(fn=_lazy("_cmd_rotate"))
    st = ks.add_parser("settings", help="show or change a tenant's settings")
    st.add_argument("tenant")
    st.add_argument("--allow-fleet-keys", choices=("yes", "no"), help="may use the deployment's keys")
    st.add_argument(
        "--weight", type=int, help="share of workers among tenants' batch lines (1-1000, default 1)"
    )
    st.set_defaults(fn=_lazy("_cmd_settings"))


def register_audit(sub: Any) -> None:
    b = sub.add_parser(
        "budget", help="set a tenant's daily spend cap or a batch's cap (USD; 'none' removes it)"
    )
    b.add_argument("kind", choices=("tenant", "batch"))
    b.add_argument("id", help="tenant name or batch id")
    b.add_argument("usd", help="cap in USD, or 'none'")
    b.set_defaults(fn=_lazy("_cmd_budget"))
    a = sub.add_parser("audit", help="the audit trail of admin actions, newest first")
    a.add_argument("--limit", type=int, default=50)
    a.add_argument("--json", action="store_true")
    a.set_defaults(fn=_lazy("_cmd_audit"))
