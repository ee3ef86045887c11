"""Fusebox core: schema, codec, config, Redis keys, providers, router, store."""
