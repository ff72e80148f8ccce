"""Compare: how the layers of one run changed, and how two runs' layers relate (docs in compare/report.py)."""

from compare.report import CompareOptions, CompareReport, compare
from compare.similarity import Similarity, debiased_cka, linear_cka

__all__ = ["CompareOptions", "CompareReport", "Similarity", "compare", "debiased_cka", "linear_cka"]
