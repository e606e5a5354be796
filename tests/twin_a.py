"""A module whose function shares its ``__qualname__`` with ``twin_b.kernel``."""


def kernel(x: int) -> str:
    return f"a:{x}"
