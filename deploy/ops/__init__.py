"""Operator tools, never imported at run time: the ``vllm-autoscale`` command, the cost model, the
window advisor, the local stack.
"""
