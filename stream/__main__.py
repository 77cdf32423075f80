"""``python -m stream`` is the ``riskstream`` command."""

from stream.cli import main

if __name__ == "__main__":  # a spawned pipeline process imports this module too
    main(prog_name="riskstream")
