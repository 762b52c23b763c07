"""deploy/ops/: the vllm-autoscale command, the cost model, the advisor."""
