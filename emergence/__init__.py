"""The `emergence` command line; the work is done by the `recorder`, `replay` and `experiments` packages."""
