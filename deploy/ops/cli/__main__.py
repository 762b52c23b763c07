"""``python -m deploy.ops.cli``: the ``vllm-autoscale`` command."""

from . import main

raise SystemExit(main())
