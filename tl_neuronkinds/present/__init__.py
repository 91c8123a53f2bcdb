"""Everything that draws: the HTML ground every page stands on (``render.py``: offline pages,
circuitsvis's local bundle, escaping, tables), the matplotlib plots (``plots.py``), one neuron's
view (``views.py``), the run's report (``report.py``, its figure sections in
``report_sections.py``) and the pages of the two other papers (``massive_page.py``,
``universal_page.py``).

Computing happens elsewhere (``kinds``, ``vocab``, ``massive``, ``universal``); the modules here
only turn their tables into HTML and SVG. Importing them loads neither matplotlib nor
circuitsvis: each is imported when a figure or a widget is drawn.
"""
