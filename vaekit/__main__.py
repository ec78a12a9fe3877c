"""`python -m vaekit ...` is the `vaekit` command (so `torchrun -m vaekit train ...` works)."""

from vaekit_cli.main import main

if __name__ == "__main__":
    main()
