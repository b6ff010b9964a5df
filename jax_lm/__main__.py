"""``python -m jax_lm COMMAND …`` and the ``jax-lm`` console script."""

from jax_lm import allocator


def run() -> int:
    """Re-executes with `allocator.TUNABLES` (faster XLA:CPU steps), then runs the command."""
    allocator.reexec_with_tuned_malloc()
    from jax_lm.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
