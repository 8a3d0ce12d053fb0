"""`python -m segmentation.cli`, as the console script."""

from segmentation.cli.main import main

main()
