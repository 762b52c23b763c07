"""From a validated request to its answer: the served models, completion, streaming, accounting."""
