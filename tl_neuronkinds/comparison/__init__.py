"""Several runs side by side on relative depth: the paper's multi-model figures (Voita et al.
2024, Figures 1a, 1b, 2, 3a, 3b, 4, 8, Appendix A). Compute only: ``Comparison.to_html`` draws
with the page it was given (``nk.compare`` gives it ``present/compare_page.py``'s)."""

from tl_neuronkinds.comparison.comparison import Comparison, compare

__all__ = ["Comparison", "compare"]
