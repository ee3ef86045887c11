"""Provider adapters: one module per wire format, all behind :class:`shared.providers.base.Provider`."""
