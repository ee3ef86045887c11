"""Tenants' own provider keys (bring your own key): encrypted at rest, used per (provider, key).

``crypto``: master key ring and AES-GCM; ``store``: records in Redis; ``adapters``: per-tenant
provider instances and the connection test.
"""
