"""Interactive explorers for JupyterLab, each a plain state object plus a thin ipywidgets view.

State objects import no ipywidgets, so tests drive them directly; views only bind controls to
state and call the same experiment and plot functions the notebooks use.
"""
