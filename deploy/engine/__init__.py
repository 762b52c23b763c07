"""The GPU side: vLLM's OpenAI server as a process, its log, the GPU server class and the local
model. The wrapper never imports it.
"""
