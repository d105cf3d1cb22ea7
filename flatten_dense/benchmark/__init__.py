"""Speed and memory benchmarks of backbones and config models (`flatten-dense benchmark`)."""

from .cli import main
from .flops import count_flops, matmul_flops_per_second
from .measure import MeasureOptions, measure

__all__ = ["MeasureOptions", "count_flops", "main", "matmul_flops_per_second", "measure"]
