"""Everything that draws: the HTML ground every page stands on (``render.py``: offline pages,
circuitsvis's local bundle, escaping, tables), the plots (``plots.py``, matplotlib's; the
neuron view's two, written by hand so that a view needs no matplotlib, in ``svg_plots.py``), one
neuron's view (``views.py`` gathers it, ``neuron_view.py`` holds it and draws its HTML), the
run's report (``report.py``, its figure sections in ``report_sections.py``), the comparison page
(``compare_page.py``) and the pages of the two other papers (``massive_page.py``,
``universal_page.py``).

Computing happens elsewhere (``kinds``, ``vocab``, ``massive``, ``universal``); the modules here
only turn their tables into HTML and SVG. Importing them loads neither matplotlib nor
circuitsvis: each is imported when a figure or a widget is drawn.
"""
