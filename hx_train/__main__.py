"""`python -m hx_train` is `hx-train`."""
from .cli import main

main(prog_name="hx-train")
