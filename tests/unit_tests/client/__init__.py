"""The client package (langchain_vllm_autoscale): no server, sockets off."""
