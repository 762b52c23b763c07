"""What one request costs at the GPU's price: the wrapper reports it on every answer and the
ledger books it; the cost model (``deploy/ops/cost.py``) prices whole months the same way."""

from __future__ import annotations

__all__ = ["request_cost"]


def request_cost(
    engine_seconds: float, cold_start_seconds: float, gpu_price_per_hour: float, gpu_count: int = 1
) -> dict[str, float]:
    """One request's share, from the same prices: the GPU seconds it held (an upper bound:
    concurrent requests share the GPU) and the boot it waited for, if it paid a cold start."""
    per_second = gpu_price_per_hour * gpu_count / 3600
    return {
        "gpu_seconds": round(engine_seconds, 4),
        "usd": round(engine_seconds * per_second, 8),
        "cold_start_usd": round(cold_start_seconds * per_second, 8),
    }
