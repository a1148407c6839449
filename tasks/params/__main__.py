"""python -m tasks.params [FILE]: check params.yaml (or FILE) and list every problem at once."""

from tasks.params.loader import main

main()
