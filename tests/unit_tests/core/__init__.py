"""deploy/core/: the leaves both tiers import."""
