"""deploy/gateway/: keys, limits, the ledger, the cache, the store."""
