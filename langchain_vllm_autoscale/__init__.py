"""LangChain chat model for a self-hosted vLLM service that scales to zero on Modal."""

from importlib import metadata

from langchain_vllm_autoscale._exceptions import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ContextLengthError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    VLLMAutoscaleError,
)
from langchain_vllm_autoscale.chat_models import ChatVLLMAutoscale
from langchain_vllm_autoscale.embeddings import VLLMAutoscaleEmbeddings
from langchain_vllm_autoscale.warmup import WarmupCallbackHandler

try:
    __version__ = metadata.version("langchain-vllm-autoscale")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = ""

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ChatVLLMAutoscale",
    "ContextLengthError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "VLLMAutoscaleEmbeddings",
    "VLLMAutoscaleError",
    "WarmupCallbackHandler",
    "__version__",
]
