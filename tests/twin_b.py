"""A module whose function shares its ``__qualname__`` with ``twin_a.kernel``."""


def kernel(x: int) -> str:
    return f"b:{x}"
