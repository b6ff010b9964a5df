"""``python -m jax_lm COMMAND …``: the same as the ``jax-lm`` console script."""

from jax_lm.cli import main

raise SystemExit(main())
