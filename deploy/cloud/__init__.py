"""The Modal deployment seen from outside: what each container ships (its manifest)."""
