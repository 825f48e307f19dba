"""Figures, drawn with matplotlib's Agg backend (files only, never a window).

Functions take a matplotlib ``Axes`` to draw on, or build and return a ``Figure``; they never call
``pyplot.show``. :mod:`.distributions` draws fitted distributions with their cutoffs (paper Figs. 1–2).
"""
