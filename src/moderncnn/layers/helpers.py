def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (the TF-slim rule used by MobileNets).

    If rounding down loses more than ``1 - round_limit`` of ``v``, one ``divisor`` is added back;
    ``round_limit=0`` disables that correction (EfficientNetV2's ``round_filters``).
    """
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def drop_path_rates(rate: float, n: int) -> list[float]:
    """``linspace(0, rate, n)`` as Python floats (no tensor, so models build on the meta device too)."""
    if n <= 1:
        return [0.0] * n
    return [rate * i / (n - 1) for i in range(n)]
