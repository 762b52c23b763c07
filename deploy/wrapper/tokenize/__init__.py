"""Token counts in the wrapper: the served model's tokenizer and chat template, no GPU."""
