"""`python -m hx_infer` is `hx-infer`."""
from .cli import main

main(prog_name="hx-infer")
