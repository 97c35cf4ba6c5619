"""Allow ``python -m superci``."""

from superci.cli import main

if __name__ == "__main__":
    main()
