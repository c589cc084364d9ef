"""`python -m sozu.cli`."""

from sozu.cli.main import main

if __name__ == "__main__":
    main()
