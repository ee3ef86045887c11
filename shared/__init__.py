"""Fusebox core: modules every part uses (schema, codec, config, Redis keys, router, ...) and a
package per concern (gate, jobs, batches, webhooks, byok, providers, simulator)."""
