"""The wrapper's HTTP routes, one module per area; thin: parse, call the serving layer, answer."""
