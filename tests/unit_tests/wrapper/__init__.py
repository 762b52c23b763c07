"""deploy/wrapper/: the always-on app over the fake transport."""
